"""Preset registry: a preset maps the ``augment`` config section to a list of ops.

Names follow the rule of :class:`train.registry.Registry` (sorted listing, duplicates refused
unless ``override=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from invlab.registry import Registry

PresetFn = Callable[[Any], list[nn.Module]]
PRESETS: Registry[PresetFn] = Registry("augmentation preset")


def register_preset(name: str, *, override: bool = False) -> Callable[[PresetFn], PresetFn]:
    """Decorator: ``@register_preset("flip") def flip(cfg) -> list[nn.Module]``."""
    return PRESETS.register(name, override=override)


def list_presets() -> list[str]:
    """Names of the registered presets, sorted."""
    return PRESETS.names()


def get_preset(name: str) -> PresetFn:
    """The preset ``name``; ``ConfigError`` naming the closest on a miss."""
    return PRESETS.get(name, "augment.presets")
