"""Preset registry: a preset maps the ``augment`` config section to a list of ops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

PresetFn = Callable[[Any], list[nn.Module]]
_PRESETS: dict[str, PresetFn] = {}


def register_preset(name: str) -> Callable[[PresetFn], PresetFn]:
    """Decorator: ``@register_preset("flip") def flip(cfg) -> list[nn.Module]``."""

    def wrap(fn: PresetFn) -> PresetFn:
        if name in _PRESETS:
            raise ValueError(f"Augmentation preset {name!r} is already registered.")
        _PRESETS[name] = fn
        return fn

    return wrap


def list_presets() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str) -> PresetFn:
    return _PRESETS[name]
