"""``augment.build(cfg.augment)``: presets (in order), then explicit kornia ops."""

from __future__ import annotations

from typing import Any

from invlab.config import ConfigError

from . import presets as _presets  # noqa: F401  (registers the built-in presets)
from .ops import build_op
from .pipeline import Augmenter
from .registry import get_preset


def _check(cfg: Any) -> None:
    if cfg.max_shift_px < 0:
        raise ConfigError(f"'augment.max_shift_px' must be >= 0, got {cfg.max_shift_px}.")
    if cfg.subpixel_max_px < 0:
        raise ConfigError(f"'augment.subpixel_max_px' must be >= 0, got {cfg.subpixel_max_px}.")
    for key in ("scale", "crop_scale"):
        lo_hi = list(cfg[key])
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ConfigError(f"'augment.{key}' must be [lo, hi] with 0 < lo <= hi, got {lo_hi}.")
    for key in ("flip_p", "erasing_p"):
        if not 0 <= cfg[key] <= 1:
            raise ConfigError(f"'augment.{key}' must be a probability in [0, 1], got {cfg[key]}.")
    if not 0 < cfg.magnitude < 30:
        raise ConfigError(f"'augment.magnitude' must be in 1..29, got {cfg.magnitude}.")
    if not 1 <= cfg.num_ops <= 15:
        raise ConfigError(f"'augment.num_ops' must be in 1..15, got {cfg.num_ops}.")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if not cfg[key] > 0:
            raise ConfigError(f"'augment.{key}' must be > 0, got {cfg[key]}.")
    if not 0 <= cfg.mix_switch_p <= 1:
        raise ConfigError(
            f"'augment.mix_switch_p' must be a probability in [0, 1], got {cfg.mix_switch_p}."
        )
    if cfg.jitter < 0:
        raise ConfigError(f"'augment.jitter' must be >= 0, got {cfg.jitter}.")


def build(cfg_augment: Any, num_classes: int | None = None) -> Augmenter:
    """The augmentation module for ``cfg.augment`` (identity when no presets and no ops).

    ``num_classes`` is needed by mixing presets (mixup, cutmix), whose targets are
    probabilities over the classes."""
    _check(cfg_augment)
    modules, names = [], []
    for preset in cfg_augment.presets:
        fn = get_preset(preset)
        try:
            modules += fn(cfg_augment)
        except ValueError as err:
            raise ConfigError(f"Augmentation preset {preset!r}: {err}") from None
        names.append(preset)
    for spec in cfg_augment.ops:
        modules.append(build_op(spec, same_on_batch=cfg_augment.same_on_batch))
        names.append(str(spec["name"]))
    return Augmenter(modules, names, num_classes)
