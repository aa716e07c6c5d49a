"""Built-in presets. Each reads one knob of the ``augment`` section (named in its docstring)."""

from __future__ import annotations

from functools import partial
from typing import Any

import kornia.augmentation as K
from torch import nn

from .colour import RandomColourJiggle
from .mix import RandomMix
from .policy import rand_augment, trivial_augment
from .registry import register_preset
from .shift import RandomIntegerShift
from .sized import PerSize


def _affine_op(
    size: tuple[int, int],
    *,
    degrees: float,
    shift_px: float,
    scale: tuple[float, float] | None,
    same_on_batch: bool,
) -> nn.Module:
    h, w = size
    translate = (shift_px / w, shift_px / h) if shift_px > 0 else None
    return K.RandomAffine(
        degrees=degrees, translate=translate, scale=scale, same_on_batch=same_on_batch, p=1.0
    )


def _affine(
    name: str,
    same_on_batch: bool,
    degrees: float = 0.0,
    shift_px: float = 0.0,
    scale: tuple[float, float] | None = None,
) -> PerSize:
    """kornia RandomAffine (bilinear) with its translation given in pixels, not image fractions."""
    factory = partial(
        _affine_op, degrees=degrees, shift_px=shift_px, scale=scale, same_on_batch=same_on_batch
    )
    return PerSize(factory, name)


def _crop_op(
    size: tuple[int, int], *, scale: tuple[float, float], same_on_batch: bool
) -> nn.Module:
    # "resample" crops the whole batch with one warp (the default "slice" loops per sample).
    return K.RandomResizedCrop(
        size=size, scale=scale, same_on_batch=same_on_batch, cropping_mode="resample"
    )


def _crop(cfg: Any) -> PerSize:
    scale = tuple(cfg.crop_scale)
    factory = partial(_crop_op, scale=scale, same_on_batch=cfg.same_on_batch)
    return PerSize(factory, f"RandomResizedCrop(scale={scale})")


@register_preset("none")
def none(cfg: Any) -> list[nn.Module]:
    """No augmentation."""
    return []


@register_preset("flip")
def flip(cfg: Any) -> list[nn.Module]:
    """Horizontal flip with probability ``flip_p``."""
    return [K.RandomHorizontalFlip(p=cfg.flip_p, same_on_batch=cfg.same_on_batch)]


@register_preset("translate")
def translate(cfg: Any) -> list[nn.Module]:
    """Exact integer shift in [-max_shift_px, max_shift_px] per axis, padded with ``pad_fill``."""
    return [RandomIntegerShift(cfg.max_shift_px, cfg.pad_fill, cfg.same_on_batch)]


@register_preset("subpixel_translate")
def subpixel_translate(cfg: Any) -> list[nn.Module]:
    """Bilinear shift, uniform in [-subpixel_max_px, subpixel_max_px] per axis."""
    px = cfg.subpixel_max_px
    return [_affine(f"translate(max={px}px)", cfg.same_on_batch, shift_px=px)]


@register_preset("scale")
def scale(cfg: Any) -> list[nn.Module]:
    """Isotropic rescaling by a factor uniform in ``scale``."""
    return [
        K.RandomAffine(degrees=0.0, scale=tuple(cfg.scale), same_on_batch=cfg.same_on_batch, p=1.0)
    ]


@register_preset("rotate")
def rotate(cfg: Any) -> list[nn.Module]:
    """Rotation by an angle uniform in [-degrees, degrees]."""
    return [K.RandomAffine(degrees=cfg.degrees, same_on_batch=cfg.same_on_batch, p=1.0)]


@register_preset("affine")
def affine(cfg: Any) -> list[nn.Module]:
    """Bilinear shift (max_shift_px), rescaling (``scale``), rotation (``degrees``): one warp."""
    name = f"affine(shift={cfg.max_shift_px}px, scale={tuple(cfg.scale)}, degrees={cfg.degrees})"
    return [
        _affine(
            name,
            cfg.same_on_batch,
            degrees=cfg.degrees,
            shift_px=cfg.max_shift_px,
            scale=tuple(cfg.scale),
        )
    ]


@register_preset("crop")
def crop(cfg: Any) -> list[nn.Module]:
    """Random-resized crop covering a ``crop_scale`` fraction of the area, resized back."""
    return [_crop(cfg)]


@register_preset("heavy")
def heavy(cfg: Any) -> list[nn.Module]:
    """crop + flip + affine + colour jiggle (``jitter``) + random erasing (``erasing_p``)."""
    j = cfg.jitter
    return [
        _crop(cfg),
        *flip(cfg),
        *affine(cfg),
        RandomColourJiggle(j, hue=min(j / 4, 0.5), p=0.8, same_on_batch=cfg.same_on_batch),
        K.RandomErasing(p=cfg.erasing_p, same_on_batch=cfg.same_on_batch),
    ]


@register_preset("erasing")
def erasing(cfg: Any) -> list[nn.Module]:
    """Random erasing (a rectangle of noise) with probability ``erasing_p`` per image."""
    return [K.RandomErasing(p=cfg.erasing_p, same_on_batch=cfg.same_on_batch)]


@register_preset("randaugment")
def randaugment(cfg: Any) -> list[nn.Module]:
    """RandAugment: ``num_ops`` operations per image at strength ``magnitude`` (0..30)."""
    return [rand_augment(cfg.num_ops, cfg.magnitude, cfg.same_on_batch)]


@register_preset("trivialaugment")
def trivialaugment(cfg: Any) -> list[nn.Module]:
    """TrivialAugment: one operation per image, strength uniform per image (no knob)."""
    return [trivial_augment(cfg.same_on_batch)]


# Mixing presets: our own op rather than kornia's RandomMixUpV2 (uniform lambda, no Beta alpha)
# or timm's Mixup (numpy's global RNG, one lambda per batch): per-image Beta(alpha, alpha) draws
# from the Augmenter's generator, replayable through RandomMix.sample / RandomMix.mix.
@register_preset("mixup")
def mixup(cfg: Any) -> list[nn.Module]:
    """Mixup: each image blended with a partner, weight ~ Beta(``mixup_alpha``, same)."""
    return [RandomMix(mixup_alpha=cfg.mixup_alpha, same_on_batch=cfg.same_on_batch)]


@register_preset("cutmix")
def cutmix(cfg: Any) -> list[nn.Module]:
    """CutMix: a box of a partner pasted in, area ~ 1 - Beta(``cutmix_alpha``, same)."""
    return [RandomMix(cutmix_alpha=cfg.cutmix_alpha, same_on_batch=cfg.same_on_batch)]


@register_preset("mixup_cutmix")
def mixup_cutmix(cfg: Any) -> list[nn.Module]:
    """CutMix with probability ``mix_switch_p`` per image, else Mixup (timm's recipe)."""
    return [
        RandomMix(
            mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha,
            switch_p=cfg.mix_switch_p,
            same_on_batch=cfg.same_on_batch,
        )
    ]
