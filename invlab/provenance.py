"""What produced a result: package versions, device, source commit, host, time, checkpoint.

``collect_provenance`` returns a plain JSON-ready dict, stored under ``"provenance"`` in
``metrics.json`` and in every invariance report. It never raises for missing information
(no git, not a checkout, unreadable checkpoint): the field is ``None`` instead.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "kornia",
    "timm",
    "wandb",
    "omegaconf",
    "invlab",
)

# The project source tree: train/ sits at its top level.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str | None]:
    """Python's version and the installed version of each of ``PACKAGES`` (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(root: str | Path = SOURCE_ROOT) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout whose top level is ``root``, else None.

    ``dirty`` is True when ``git status --porcelain`` lists anything. A ``root`` inside some
    other repository (e.g. an install in a virtualenv that lives in a checkout) gives None.
    """
    root = Path(root).resolve()
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root:
        return None
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain")
    if commit is None or status is None:
        return None
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def relative_path(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` (POSIX separators) when it lies inside it, else as given."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def checkpoint_position(path: str | Path) -> tuple[int | None, int | None]:
    """``(global_step, epoch)`` stored in a Lightning checkpoint; ``(None, None)`` otherwise."""
    path = Path(path)
    if not path.is_file() or path.suffix == ".safetensors":
        return None, None
    ckpt: Any = None
    for mmap in (True, False):  # mmap: the tensors are not read; older formats cannot mmap
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception:
            continue
    if not isinstance(ckpt, dict):
        return None, None

    def as_int(value: Any) -> int | None:
        return int(value) if isinstance(value, int | torch.Tensor) else None

    return as_int(ckpt.get("global_step")), as_int(ckpt.get("epoch"))


def describe_device(device: torch.device | str | None) -> tuple[str | None, str | None]:
    """``(device, name)``: e.g. ``("cuda:0", <the GPU's name>)`` or ``("cpu", None)``."""
    if device is None:
        return None, None
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return str(device), None
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        name = torch.cuda.get_device_name(index)
    except Exception:
        name = None
    return f"cuda:{index}", name


def collect_provenance(
    *,
    device: torch.device | str | None = None,
    checkpoint: str | Path | None = None,
    global_step: int | None = None,
    epoch: int | None = None,
    relative_to: str | Path | None = None,
    source_root: str | Path = SOURCE_ROOT,
) -> dict[str, Any]:
    """Everything needed to tell how a result was produced, as a JSON-ready dict.

    ``device``: where the model ran. ``checkpoint``: the weights the numbers come from, recorded
    relative to ``relative_to`` (e.g. the run directory) when it lies inside it.
    ``global_step``/``epoch`` default to the values stored in ``checkpoint`` when it is a
    readable Lightning checkpoint. Keys: ``versions``, ``device``, ``device_name``,
    ``torch_threads``, ``git`` (``commit``, ``dirty``; None outside a checkout), ``hostname``,
    ``timestamp`` (UTC, ISO 8601) and ``checkpoint`` (``path``, ``global_step``, ``epoch``).
    """
    path = None
    if checkpoint is not None:
        if global_step is None or epoch is None:
            step_read, epoch_read = checkpoint_position(checkpoint)
            global_step = step_read if global_step is None else global_step
            epoch = epoch_read if epoch is None else epoch
        path = str(checkpoint) if relative_to is None else relative_path(checkpoint, relative_to)
    device_str, device_name = describe_device(device)
    return {
        "versions": package_versions(),
        "device": device_str,
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "git": git_state(source_root),
        "hostname": socket.gethostname(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": {
            "path": path,
            "global_step": None if global_step is None else int(global_step),
            "epoch": None if epoch is None else int(epoch),
        },
    }
