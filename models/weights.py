"""Load weights from our Lightning checkpoints, plain torch state dicts or safetensors; export
plain safetensors (no key prefix, loadable by timm's ``load_checkpoint``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from train.config import ConfigError

log = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
_SHOWN = 5


@dataclass
class LoadResult:
    """What :func:`load_weights` did not load (all empty for a strict load)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # present in both, shapes differ (head)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file with wrapper prefixes removed (``net.`` of our Lightning
    checkpoints, ``module.`` of DDP, ``_orig_mod.`` of torch.compile)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Weights file '{path}' not found. Give a local .ckpt, .pt/.pth or .safetensors "
            "file (weights are never downloaded)."
        )
    if path.suffix == ".safetensors":
        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types
            raise ConfigError(f"Could not read weights file '{path}': {err}") from None
        for key in _NESTED_KEYS:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"'{path}' does not hold a state dict (a mapping of names to tensors).")
    if any(k.startswith("net.") for k in state):  # a checkpoint of train.module.Classifier
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    return {_strip(k): v for k, v in state.items()}


def _strip(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key.removeprefix(prefix), True
    return key


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def head_prefix(model: nn.Module) -> str:
    """Module path of the classifier: the model's last ``nn.Linear``."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier head.")
    return linears[-1]


def load_weights(
    model: nn.Module, path: str | Path, strict: bool = True, allow_head_mismatch: bool = False
) -> LoadResult:
    """Load ``path`` into ``model``.

    ``strict``: the file and the model have the same keys (``False``: missing and unexpected
    keys are allowed and reported). Shapes must always match, except with
    ``allow_head_mismatch``: classifier-head tensors (the last ``nn.Linear``) of another shape
    (another number of classes) are skipped and reported. Raises ``ConfigError`` naming a few
    offending keys.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    head = head_prefix(model) + "." if allow_head_mismatch else None
    skipped = [k for k in mismatched if head and k.startswith(head)]
    bad_shapes = [k for k in mismatched if k not in skipped]
    problems = []
    if bad_shapes:
        shown = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shapes]
        problems.append(f"shape mismatches (file vs model): {_listing(shown)}")
    if strict and missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        raise ConfigError(
            f"Weights in '{path}' do not fit {type(model).__name__}: {'; '.join(problems)}. "
            "Check model.name and its architecture options (widths, small_input, ...)."
        )
    for k in skipped:
        del state[k]
    model.load_state_dict(state, strict=False)
    result = LoadResult(missing=missing, unexpected=unexpected, skipped=skipped)
    if skipped:
        log.info("Loaded %s without the classifier head (%s): shapes differ.", path, skipped)
    return result


def export_weights(model: nn.Module, path: str | Path) -> Path:
    """Write the model's state dict as plain safetensors (keys without any prefix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        _strip(k): v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
    }
    save_file(state, str(path))
    return path
