"""Atomic file writes: a crash or a full disk never leaves a half-written result behind.

The temporary file is created like a plain ``open(path, "w")`` would create ``path``: with mode
0666 less the user's umask (and a shared folder's default ACL), or, when ``path`` exists, with its
mode, so that colleagues can read what invlab writes wherever they can read the user's files.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

_TRIES = 100


def temp_file_beside(path: str | Path) -> tuple[int, Path]:
    """A new, empty temporary file in ``path``'s folder, open for writing: (descriptor, path).

    Unlike ``tempfile.mkstemp`` (mode 0600) it gets the mode ``open()`` would give ``path``."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TRIES):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        try:
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # replacing: keep its mode
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return fd, tmp
    raise FileExistsError(f"No free temporary name beside {path} after {_TRIES} tries.")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, then rename it over ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
