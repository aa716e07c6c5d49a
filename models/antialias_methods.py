"""Registry of antialiasing methods: what follows a downsampling layer once it runs at stride 1.

A method is a factory ``fn(stride, filt_size, pad_mode) -> nn.Module`` registered with
:func:`register_antialias`; ``convs=False`` makes it rewrite pooling layers only. ``none`` (no
rewrite) is not an entry. Names follow :class:`train.registry.Registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from invlab.registry import Registry

from .blur import BlurDownsample
from .polyphase import PolyphaseDownsample

DownsamplerFn = Callable[[int, int, str], nn.Module]


@dataclass(frozen=True)
class AntialiasMethod:
    """``downsampler(stride, filt_size, pad_mode)``; ``describe`` the same arguments as text for
    ``antialias(dry_run=True)``; ``convs``: strided convs are rewritten too (else pools only)."""

    downsampler: DownsamplerFn
    describe: Callable[[int, int, str], str]
    convs: bool = True


ANTIALIAS_METHODS: Registry[AntialiasMethod] = Registry(
    "antialias method", hint=" Or 'none' (no antialiasing)."
)


def register_antialias(
    name: str,
    *,
    convs: bool = True,
    describe: Callable[[int, int, str], str] | None = None,
    override: bool = False,
) -> Callable[[DownsamplerFn], DownsamplerFn]:
    """Decorator: ``@register_antialias("mine") def mine(stride, filt_size, pad_mode)``."""

    def deco(fn: DownsamplerFn) -> DownsamplerFn:
        text = describe or (lambda s, k, pad: f"{name}(k{k}, s{s}, {pad})")
        ANTIALIAS_METHODS.add(name, AntialiasMethod(fn, text, convs), override=override)
        return fn

    return deco


def get_antialias(name: str) -> AntialiasMethod:
    """The method ``name``; ``ConfigError`` naming the closest on a miss."""
    return ANTIALIAS_METHODS.get(name, "model.antialias.method")


def _blur_text(stride: int, filt_size: int, pad_mode: str) -> str:
    return f"Blur(k{filt_size}, s{stride}, {pad_mode})"


def _aps_text(stride: int, filt_size: int, pad_mode: str) -> str:
    blur = f"Blur(k{filt_size}, s1, circular) + " if filt_size > 1 else ""
    return f"{blur}APS(s{stride})"


@register_antialias("blur", describe=_blur_text)
def blur(stride: int, filt_size: int, pad_mode: str) -> nn.Module:
    """Zhang's BlurPool: binomial blur, then subsample."""
    return BlurDownsample(stride, filt_size, pad_mode)


@register_antialias("maxblur", convs=False, describe=_blur_text)
def maxblur(stride: int, filt_size: int, pad_mode: str) -> nn.Module:
    """The pooling rules only: max-pools become MaxPool(k, 1) + blur, average pools the blur."""
    return BlurDownsample(stride, filt_size, pad_mode)


@register_antialias("aps", describe=_aps_text)
def aps(stride: int, filt_size: int, pad_mode: str) -> nn.Module:
    """Adaptive polyphase sampling after a stride-1 circular blur (none when ``filt_size=1``)."""
    if filt_size == 1:
        return PolyphaseDownsample(stride)
    return nn.Sequential(BlurDownsample(1, filt_size, "circular"), PolyphaseDownsample(stride))
