"""Registry of built-in model entrypoints (timm style): ``@register_model`` on a factory function.

An entrypoint is called as ``fn(num_classes=..., in_chans=..., **arch)`` where ``arch`` holds the
architecture knobs of ``cfg.model`` (widths, depth, downsample, ...) and ``cfg.model.kwargs``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from train.config import ConfigError

EXTERNAL_PREFIXES = ("timm:", "tv:")

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name."""
    name = fn.__name__
    if name in _ENTRYPOINTS and _ENTRYPOINTS[name] is not fn:
        raise ValueError(f"Model '{name}' is already registered.")
    _ENTRYPOINTS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered built-in models, sorted."""
    return sorted(_ENTRYPOINTS)


def is_model(name: str) -> bool:
    return name in _ENTRYPOINTS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The factory function of a built-in model; ``ConfigError`` naming the closest on a miss."""
    if name in _ENTRYPOINTS:
        return _ENTRYPOINTS[name]
    close = difflib.get_close_matches(name, list(_ENTRYPOINTS), n=1, cutoff=0.4)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"Unknown model 'model.name={name}'.{hint} Registered built-ins: "
        f"{', '.join(list_models())}. Any timm or torchvision model works with a prefix: "
        "'timm:resnet18', 'tv:resnet18'."
    )
