"""The one reader of checkpoint and weights files: our Lightning ``.ckpt``, plain torch state
dicts (``.pt``/``.pth``) and ``.safetensors``.

Files are read with ``torch.load(weights_only=True)`` (tensors and plain containers, never
pickled code). Every failure is a :class:`CheckpointError` whose message names the file, the
problem (not found, truncated or corrupt, not a checkpoint, pickled code refused, missing keys)
and the fix in one paragraph.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from invlab.config import ConfigError

_ZIP_MAGIC = b"PK"  # torch.save writes zip archives since torch 1.6
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
_EXPECTED = (
    "Give a .ckpt written by `invlab fit` (runs/<name>/checkpoints/last.ckpt), or a .pt/.pth/"
    ".safetensors weights file with model.name=..."
)


class CheckpointError(ConfigError):
    """A checkpoint or weights file that cannot be used (the CLI exits with code 2)."""


def require_file(path: str | Path) -> Path:
    """``path`` as a Path when it is an existing file; ``CheckpointError`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"Checkpoint '{p}' is a directory, not a file. {_EXPECTED}")
    if not p.is_file():
        raise CheckpointError(f"Checkpoint '{p}' not found. {_EXPECTED}")
    return p


def _header(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(8)


def _translate(path: Path, err: BaseException) -> CheckpointError:
    """One sentence for whatever ``torch.load`` raised."""
    text = str(err)
    refused = re.search(r"GLOBAL ([\w.]+)", text)  # torch names the class it would import
    if refused:
        what = f" ({refused.group(1)})"
        return CheckpointError(
            f"Checkpoint '{path}' holds pickled Python objects{what}; invlab refuses to load "
            "them because unpickling can run arbitrary code. Load it once in a trusted "
            "environment and re-save only its tensors (torch.save(model.state_dict(), ...) or "
            "`invlab export`)."
        )
    header = _header(path)
    if not header:
        return CheckpointError(f"Checkpoint '{path}' is empty (0 bytes). {_EXPECTED}")
    if header.startswith(_ZIP_MAGIC) or header[:1] == b"\x80":
        return CheckpointError(
            f"Checkpoint '{path}' is truncated or corrupt (it starts like a torch file but cannot "
            "be read to the end), e.g. a copy or a save that was interrupted. Copy it again, or "
            "use another checkpoint of the run (checkpoints/best-*.ckpt)."
        )
    return CheckpointError(
        f"'{path}' is not a checkpoint (neither a torch file nor safetensors). {_EXPECTED}"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a checkpoint or weights file as a dict (tensors and plain containers).

    A ``.safetensors`` file gives its tensors; anything else is read with
    ``torch.load(map_location="cpu", weights_only=True)``.
    """
    path = require_file(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"'{path}' is not a readable safetensors file ({err}): it is truncated, corrupt "
                f"or of another format. Export it again with `invlab export`."
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, KeyError, EOFError...
        raise _translate(path, err) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"'{path}' holds a {type(obj).__name__}, not a checkpoint (a mapping of names to "
            f"tensors, or a Lightning checkpoint). {_EXPECTED}"
        )
    return obj


def read_config(path: str | Path) -> dict[str, Any] | None:
    """The plain config stored in one of our checkpoints, or None for a bare weights file."""
    ckpt = load_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    return hparams.get("config") if isinstance(hparams, dict) else None


def lightning_state(path: str | Path) -> tuple[dict[str, torch.Tensor], int | None] | None:
    """``(state_dict, num_classes)`` if ``path`` is a checkpoint of ``train.module.Classifier``
    (``state_dict`` keys ``net.*``), else None."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state or not all(k.startswith("net.") for k in state):
        if "hyper_parameters" in ckpt and "config" in (ckpt["hyper_parameters"] or {}):
            raise CheckpointError(
                f"Checkpoint '{path}' has invlab's config but no model weights (missing key "
                "'state_dict' with 'net.*' tensors). Use another checkpoint of the run."
            )
        return None
    hparams = ckpt.get("hyper_parameters") or {}
    num_classes = hparams.get("num_classes") if isinstance(hparams, dict) else None
    return state, num_classes


def strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key.removeprefix(prefix), True
    return key


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file with wrapper prefixes removed (``net.`` of our Lightning
    checkpoints, ``module.`` of DDP, ``_orig_mod.`` of torch.compile)."""
    state: Any = load_checkpoint(path)
    for key in _NESTED_KEYS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(list(map(str, state))[:5]) or "nothing"
        raise CheckpointError(
            f"'{path}' does not hold model weights: no 'state_dict' (or 'model') mapping of names "
            f"to tensors was found (top-level keys: {keys}). {_EXPECTED}"
        )
    if any(k.startswith("net.") for k in state):  # a checkpoint of train.module.Classifier
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    return {strip_prefixes(k): v for k, v in state.items()}
