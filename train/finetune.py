"""Fine-tuning controls: frozen parameters (``model.freeze``) and per-parameter learning-rate
multipliers (``optim.lr_mult``), both selected by glob patterns over parameter names."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from invlab.config import ConfigError

_SHOWN = 6


def _names_hint(model: nn.Module) -> str:
    names = [n for n, _ in model.named_parameters()]
    more = f", ... ({len(names)} in all)" if len(names) > _SHOWN else ""
    return f"Parameter names look like: {', '.join(names[:_SHOWN])}{more}."


def _unmatched(model: nn.Module, patterns: list[str], key: str) -> None:
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ConfigError(
                f"'{key}' pattern {pattern!r} matches no parameter of the model. Patterns are "
                f"globs over parameter names (e.g. 'features.*', '*.bn.*'). {_names_hint(model)}"
            )


def freeze(model: nn.Module, patterns: list[str]) -> list[nn.Module]:
    """Set ``requires_grad=False`` on parameters matching any pattern; return the normalisation
    layers (BatchNorm and the like, with running statistics) whose parameters are all frozen:
    the caller keeps them in eval mode so their running statistics do not change."""
    if not patterns:
        return []
    _unmatched(model, patterns, "model.freeze")
    for name, p in model.named_parameters():
        if any(fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
    norms = []
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        has_stats = getattr(m, "track_running_stats", False)
        if has_stats and params and not any(p.requires_grad for p in params):
            norms.append(m)
    return norms


def lr_multipliers(model: nn.Module, lr_mult: dict[str, float]) -> dict[str, float]:
    """``{parameter name: multiplier}`` of the parameters matching a pattern (first one wins)."""
    if not lr_mult:
        return {}
    _unmatched(model, list(lr_mult), "optim.lr_mult")
    chosen = {}
    for name, _ in model.named_parameters():
        for pattern, mult in lr_mult.items():
            if fnmatchcase(name, pattern):
                chosen[name] = float(mult)
                break
    return chosen
