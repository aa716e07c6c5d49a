"""Canvas backgrounds: ``flat`` (one grey level, slight tint), ``noise`` (i.i.d. pixel noise
around a level), ``texture`` (smooth random colour field) and ``mixed`` (each image ``flat`` or
``noise`` with probability 1/2: a training distribution that holds both).

The level is drawn relative to the object's mean luminance (at least a quarter of the range
away, wrapping around), so an object is never invisible on its background while the level itself
stays uniformly spread and uninformative about the class. The ``classic`` appearance puts white
objects on black (level 0, no tint).

Statistics do not depend on the canvas size: noise is i.i.d. per pixel, and a texture is a grid of
random values at a fixed cell size in pixels, anchored at the canvas centre, so the model window
of a margin-padded held-out rendering sees the same texture scale as a training rendering.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BACKGROUNDS", "draw_background", "paint_background"]

BACKGROUNDS = ("flat", "noise", "texture", "mixed")
NOISE_STD = 0.12
TEXTURE_STD = 0.15
TEXTURE_CELLS = 5  # texture cells across the model window (cell = image_size / 5 px)


def draw_background(
    kind: str, n: int, size: int, rng: np.random.Generator, cell_px: float
) -> dict[str, Tensor]:
    """Random parameters of ``n`` backgrounds of ``size`` px (a fixed number of draws per call).

    ``cell_px``: the texture's cell size in pixels (the same for every canvas size)."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; choose one of {BACKGROUNDS}")
    params = {
        "shift": torch.as_tensor(rng.uniform(0.25, 0.75, n), dtype=torch.float32),
        "tint": torch.as_tensor(rng.normal(0.0, 0.04, (n, 3)), dtype=torch.float32),
    }
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    if kind in ("noise", "mixed"):
        params["field"] = NOISE_STD * torch.randn(n, 3, size, size, generator=gen)
    if kind == "mixed":  # the same level and noise statistics as the pure kinds
        noisy = torch.rand(n, generator=gen) < 0.5
        params["field"] = params["field"] * noisy[:, None, None, None]
    elif kind == "texture":
        cells = 2 * math.ceil(size / (2 * cell_px)) + 4  # even, with room for bicubic support
        params["field"] = TEXTURE_STD * torch.randn(n, 3, cells, cells, generator=gen)
        params["cell_px"] = torch.full((n,), float(cell_px))
    return params


def _texture(grid: Tensor, cell_px: float, size: int) -> Tensor:
    """Sample the cell grid [n, 3, g, g] at the pixel centres of a ``size``-px canvas whose
    centre is the grid's centre (bicubic)."""
    g = grid.shape[-1]
    centres = torch.arange(size, dtype=torch.float32, device=grid.device) + 0.5 - size / 2
    coords = centres / cell_px / (g / 2)  # grid units, [-1, 1] spans the grid's outer edges
    n = grid.shape[0]
    xy = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), -1)
    return F.grid_sample(
        grid,
        xy.expand(n, size, size, 2),
        mode="bicubic",
        padding_mode="border",
        align_corners=False,
    )


def paint_background(
    params: dict[str, Tensor], object_luma: Tensor, size: int, classic: bool = False
) -> Tensor:
    """Float backgrounds [n, 3, size, size] in [0, 1] behind objects of mean luminance [n]."""
    if classic:
        level = torch.zeros_like(params["shift"])
        tint = torch.zeros_like(params["tint"])
    else:
        level = (object_luma.to(params["shift"]) + params["shift"]) % 1.0
        tint = params["tint"]
    bg = (level[:, None] + tint)[..., None, None].expand(-1, 3, size, size)
    field = params.get("field")
    if field is not None:
        if "cell_px" in params:
            field = _texture(field, float(params["cell_px"][0]), size)
        bg = bg + field
    return bg.clamp(0, 1)
