"""Registry of built-in model entrypoints (timm style): ``@register_model`` on a factory function.

An entrypoint is called as ``fn(num_classes=..., in_chans=..., **arch)`` where ``arch`` holds the
architecture knobs of ``cfg.model`` (widths, depth, downsample, ...) and ``cfg.model.kwargs``.
Names follow the rule of :class:`train.registry.Registry` (sorted listing, duplicates refused
unless ``override=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

from torch import nn

from invlab.registry import Registry

EXTERNAL_PREFIXES = ("timm:", "tv:")

ModelFn = Callable[..., nn.Module]
MODELS: Registry[ModelFn] = Registry(
    "model",
    hint=" Any timm or torchvision model works with a prefix: 'timm:resnet18', 'tv:resnet18'.",
)


@overload
def register_model(fn: ModelFn, *, name: str | None = None, override: bool = False) -> ModelFn: ...
@overload
def register_model(
    fn: None = None, *, name: str | None = None, override: bool = False
) -> Callable[[ModelFn], ModelFn]: ...
def register_model(
    fn: ModelFn | None = None, *, name: str | None = None, override: bool = False
) -> ModelFn | Callable[[ModelFn], ModelFn]:
    """Register a model factory under ``name`` (default: its function name).

    Use bare (``@register_model``) or with arguments (``@register_model(name="x")``).
    """
    deco = MODELS.register(name, override=override)
    return deco(fn) if fn is not None else deco


def list_models() -> list[str]:
    """Names of the registered built-in models, sorted."""
    return MODELS.names()


def is_model(name: str) -> bool:
    return name in MODELS


def is_external(name: str) -> bool:
    """A ``timm:<name>`` or ``tv:<name>`` model (validated when built, not registered)."""
    return name.startswith(EXTERNAL_PREFIXES)


def model_entrypoint(name: str) -> ModelFn:
    """The factory function of a built-in model; ``ConfigError`` naming the closest on a miss."""
    return MODELS.get(name, "model.name")
