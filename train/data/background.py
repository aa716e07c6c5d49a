"""Canvas backgrounds: ``flat`` (one grey level, slight tint), ``noise`` (i.i.d. pixel noise
around a level) and ``texture`` (smooth random colour field).

The level is drawn relative to the object's mean luminance (at least a quarter of the range
away, wrapping around), so an object is never invisible on its background while the level itself
stays uniformly spread and uninformative about the class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BACKGROUNDS", "draw_background", "paint_background"]

BACKGROUNDS = ("flat", "noise", "texture")
NOISE_STD = 0.12
TEXTURE_STD = 0.15
TEXTURE_CELLS = 5


def draw_background(kind: str, n: int, size: int, rng: np.random.Generator) -> dict[str, Tensor]:
    """Random parameters of ``n`` backgrounds of ``size`` px (a fixed number of draws per call)."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; choose one of {BACKGROUNDS}")
    params = {
        "shift": torch.as_tensor(rng.uniform(0.25, 0.75, n), dtype=torch.float32),
        "tint": torch.as_tensor(rng.normal(0.0, 0.04, (n, 3)), dtype=torch.float32),
    }
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    if kind == "noise":
        params["field"] = NOISE_STD * torch.randn(n, 3, size, size, generator=gen)
    elif kind == "texture":
        params["field"] = TEXTURE_STD * torch.randn(
            n, 3, TEXTURE_CELLS, TEXTURE_CELLS, generator=gen
        )
    return params


def paint_background(params: dict[str, Tensor], object_luma: Tensor, size: int) -> Tensor:
    """Float backgrounds [n, 3, size, size] in [0, 1] behind objects of mean luminance [n]."""
    level = (object_luma.to(params["shift"]) + params["shift"]) % 1.0
    bg = (level[:, None] + params["tint"])[..., None, None].expand(-1, 3, size, size)
    field = params.get("field")
    if field is not None:
        if field.shape[-1] != size:  # texture: a smooth field from a coarse grid
            field = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False)
        bg = bg + field
    return bg.clamp(0, 1)
