"""Registry of the layers the built-in CNN places between stages (``model.downsample``).

A kind is a factory ``fn(channels, kernel, stride, padding_mode, norm) -> nn.Module | None``
(None: no layer) registered with :func:`register_downsample`; the built-ins (``conv``,
``maxpool``, ``avgpool``, ``none``) live in :mod:`models.cnn`. Names follow
:class:`train.registry.Registry`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from invlab.registry import Registry

DownsampleFn = Callable[[int, int, int, str, str], nn.Module | None]
DOWNSAMPLERS: Registry[DownsampleFn] = Registry("downsampling layer")


def register_downsample(
    name: str, *, override: bool = False
) -> Callable[[DownsampleFn], DownsampleFn]:
    """Decorator: ``@register_downsample("mine") def mine(ch, kernel, stride, pad, norm)``."""
    return DOWNSAMPLERS.register(name, override=override)


def get_downsample(name: str) -> DownsampleFn:
    """The factory ``name``; ``ConfigError`` naming the closest on a miss."""
    return DOWNSAMPLERS.get(name, "model.downsample")
