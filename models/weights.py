"""Load weights (read by :mod:`models.checkpoint`) into a model; export plain safetensors (no key
prefix, loadable by timm's ``load_checkpoint``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from invlab.config import ConfigError

from .checkpoint import read_state_dict, strip_prefixes

log = logging.getLogger(__name__)

_SHOWN = 5


@dataclass
class LoadResult:
    """What :func:`load_weights` did not load (all empty for a strict load), and what it did."""

    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    skipped: list[str] = field(default_factory=list)  # present in both, shapes differ
    matched: list[str] = field(default_factory=list, compare=False)  # loaded
    head: str | None = field(default=None, compare=False)  # classifier module path

    @property
    def head_reinitialised(self) -> bool:
        """True when the classifier head kept its fresh initialisation (shapes differed)."""
        return bool(self.head) and any(k.startswith(f"{self.head}.") for k in self.skipped)

    def as_dict(self) -> dict[str, Any]:
        """The loading report (``load_report.json``)."""
        return {
            "matched": len(self.matched),
            "matched_keys": list(self.matched),
            "missing": self.missing,
            "unexpected": self.unexpected,
            "shape_mismatch": self.skipped,
            "head": self.head,
            "head_reinitialised": self.head_reinitialised,
        }

    def summary(self) -> str:
        """One line: counts, and whether the head was re-initialised."""
        head = "head re-initialised" if self.head_reinitialised else "head loaded"
        return (
            f"{len(self.matched)} tensors loaded, {head}, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.skipped)} shape mismatches"
        )


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

    ``strict``: the file and the model have the same keys and shapes (``False``: missing and
    unexpected keys and tensors of another shape are skipped and reported). With
    ``allow_head_mismatch`` classifier-head tensors (the last ``nn.Linear``) of another shape
    (another number of classes) are skipped even when strict. Raises ``ConfigError`` naming a few
    offending keys.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    head = _head_or_none(model)
    skippable = head + "." if allow_head_mismatch and head else None
    bad_shapes = [k for k in mismatched if not (skippable and k.startswith(skippable))]
    problems = []
    if strict and bad_shapes:
        shown = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shapes]
        problems.append(f"shape mismatches (file vs model): {_listing(shown)}")
    if strict and missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        raise ConfigError(
            f"Weights in '{path}' do not fit {type(model).__name__}: {'; '.join(problems)}. "
            "Check model.name and its architecture options (widths, small_input, ...); to "
            "initialise from what fits and keep the rest fresh, set model.init_strict=false."
        )
    for k in mismatched:
        del state[k]
    for k in unexpected:
        del state[k]
    model.load_state_dict(state, strict=False)
    matched = sorted(state)
    result = LoadResult(missing, unexpected, mismatched, matched, head)
    if mismatched:
        log.info("Loaded %s without %s: shapes differ.", path, mismatched)
    return result


def _head_or_none(model: nn.Module) -> str | None:
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def export_weights(model: nn.Module, path: str | Path) -> Path:
    """Write the model's state dict as plain safetensors (keys without any prefix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    own = model.state_dict()
    state = {strip_prefixes(k): v.detach().cpu().contiguous().clone() for k, v in own.items()}
    save_file(state, str(path))
    return path
