"""Run directories that guard themselves: a checked name, one writer at a time, and
``--overwrite`` that removes the run directory itself and nothing else.

- ``run_directory(cfg)``: ``<out_dir>/<name>`` where ``name`` is one path component (not empty,
  ``.``, ``..``, nor containing a separator), so the run directory is never ``out_dir`` itself,
  its parent or a folder outside it.
- ``DirLock``: an exclusive lock held for the life of the process that writes a directory (a
  run: fit, finetune, eval into a run, a sweep point; a sweep: its ``out_dir``). The lock file
  lies *beside* the directory (``.<name>.lock``), so that removing the directory never removes a
  lock another process holds. File locking is ``filelock``'s (the library torch itself uses for
  its caches). A second writer is refused with the holder's pid and command.
- ``refuse_existing(path, overwrite)``: every command that writes a named file refuses an
  existing one unless told ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from invlab.config import ConfigError
from invlab.files import atomic_write_text


class DirectoryInUse(ConfigError):
    """Another live process holds the directory's lock (the CLI exits with code 2)."""


def check_name(name: Any) -> str:
    """A run name is one path component: it names a folder inside ``out_dir``."""
    text = str(name)
    bad = (
        text.strip() in ("", ".", "..")
        or any(sep in text for sep in ("/", "\\", "\0"))
        or (os.altsep is not None and os.altsep in text)
        or text != text.strip()
    )
    if bad:
        raise ConfigError(
            f"Invalid run name {text!r}: 'name' must be a single folder name inside out_dir (no "
            f"empty name, '.', '..', slash or surrounding spaces), e.g. name=baseline-seed0. Put "
            f"runs elsewhere with out_dir=..."
        )
    return text


def run_directory(cfg: Any) -> Path:
    """``<out_dir>/<name>``, after checking that it is a folder inside ``out_dir``."""
    out_dir = Path(str(cfg.out_dir))
    run_dir = out_dir / check_name(cfg.name)
    if out_dir.exists() and out_dir.resolve() not in run_dir.resolve().parents:
        raise ConfigError(
            f"Run directory {run_dir} resolves to {run_dir.resolve()}, outside out_dir "
            f"{out_dir.resolve()} (a symbolic link?). Choose another name."
        )
    return run_dir


def _command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class DirLock:
    """Exclusive, non-blocking lock of ``directory`` (``what`` names it in messages).

    Re-entrant within one object (``with`` nests); a second object or process is refused."""

    def __init__(self, directory: str | Path, what: str = "Run directory") -> None:
        self.directory = Path(directory)
        self.what = what
        name = self.directory.name or "root"
        self.path = self.directory.parent / f".{name}.lock"
        self.info = self.directory.parent / f".{name}.lock.json"
        self._lock = FileLock(self.path, timeout=0)

    def holder(self) -> dict[str, Any] | None:
        """pid, command and start time of the process holding the lock (None if unknown)."""
        try:
            info = json.loads(self.info.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def acquire(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            info = self.holder() or {}
            pid = info.get("pid")
            who = (
                f"process {pid} ({info.get('command', '?')}, since {info.get('started', '?')})"
                if pid is not None and _alive(int(pid))
                else "another process"
            )
            raise DirectoryInUse(
                f"{self.what} {self.directory} is being written by {who}. Wait for it to finish "
                f"(or stop it), or choose another name / out_dir."
            ) from None
        if self._lock.lock_counter == 1:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            record = {"pid": os.getpid(), "command": _command(), "started": started}
            atomic_write_text(self.info, json.dumps(record) + "\n")
        return self

    def release(self) -> None:
        if self._lock.lock_counter == 1:
            self.info.unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def refuse_existing(path: str | Path, overwrite: bool, what: str = "Output file") -> Path:
    """``path``, unless it exists and ``overwrite`` is false: then a ConfigError with the fix."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(
            f"{what} {path} already exists. Choose another path, or replace it with --overwrite."
        )
    return path


def inside(path: str | Path, directory: str | Path) -> bool:
    """True when ``path`` lies in ``directory`` (both resolved)."""
    p, d = Path(path).resolve(), Path(directory).resolve()
    return p == d or d in p.parents
