"""Canvas rendering: paste source objects at drawn offsets and scales onto backgrounds.

Batched: object rasters are brought to one working resolution (antialiased resize), then every
canvas pixel samples its object through one ``grid_sample`` call on premultiplied RGBA, and the
result is composited over the background. Offsets are sub-pixel and measured from the canvas
centre, which is also the centre of the model-input window of any margin-padded rendering.

Random draws come in blocks of :data:`BLOCK` images from a generator keyed by (seed, split,
block): image ``i`` of a split is a pure function of (seed, split, i), whatever the split size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from train.config import PlacementConfig
from train.data.background import draw_background, paint_background
from train.data.placement import Placement, sample_placement
from train.data.registry import ObjectPool, Objects

__all__ = [
    "BLOCK",
    "SPLIT_CODES",
    "composite",
    "draw_split_params",
    "render_split",
    "resize_split",
]

BLOCK = 256
WORK = 1024  # images rendered per tensor batch (bounds memory for large source images)
SPLIT_CODES = {"train": 0, "val": 1, "typical": 2, "atypical": 3}
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def block_rng(seed: int, split: str, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0xCA7, SPLIT_CODES[split], block])


def draw_split_params(
    placement: PlacementConfig, canvas: int, seed: int, split: str, start: int, stop: int
) -> tuple[Placement, dict[str, Tensor]]:
    """Placement and background draws of images ``start..stop-1`` of a split."""
    offsets, scales, bgs = [], [], []
    for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        rng = block_rng(seed, split, block)
        p = sample_placement(placement, BLOCK, rng)
        bg = draw_background(placement.background, BLOCK, canvas, rng)
        lo, hi = max(start - block * BLOCK, 0), min(stop - block * BLOCK, BLOCK)
        offsets.append(p.offset[lo:hi])
        scales.append(p.scale[lo:hi])
        bgs.append({k: v[lo:hi] for k, v in bg.items()})
    bg_params = {k: torch.cat([b[k] for b in bgs]) for k in bgs[0]}
    return Placement(np.concatenate(offsets), np.concatenate(scales)), bg_params


def _rgba(objects: Objects) -> Tensor:
    """Premultiplied float RGBA [n, 4, h, w] in [0, 1]."""
    rgb = objects.images.float() / 255
    masks = objects.masks
    alpha = torch.ones_like(rgb[:, :1]) if masks is None else masks.float() / 255
    return torch.cat([rgb * alpha, alpha], 1)


def composite(
    objects: Objects,
    placement: Placement,
    bg_params: dict[str, Tensor],
    canvas: int,
    object_px: float,
    raster: int | None = None,
    return_alpha: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Render objects onto ``canvas``-px backgrounds -> uint8 [n, 3, canvas, canvas].

    An object of scale ``s`` covers a square of ``object_px * s`` pixels centred at
    ``canvas / 2 + offset``. Larger object rasters are first shrunk to ``raster`` px (default:
    the largest extent in the batch; give the distribution's bound to make an image independent
    of its batch). With ``return_alpha`` also returns the float coverage [n, 1, C, C].
    """
    rgba = _rgba(objects)
    device = rgba.device
    extent = torch.as_tensor(placement.scale, dtype=torch.float32, device=device) * object_px
    work = raster or max(math.ceil(float(extent.max())), 2)
    if rgba.shape[-1] > work:  # shrink once with antialiasing; grid_sample then only interpolates
        rgba = F.interpolate(rgba, size=(work, work), mode="bilinear", antialias=True)
    offset = torch.as_tensor(placement.offset, dtype=torch.float32, device=device)
    centre = canvas / 2 + offset  # [n, 2] (x, y) in pixels
    pix = torch.arange(canvas, dtype=torch.float32, device=device) + 0.5
    half = extent[:, None] / 2
    gx = (pix[None] - centre[:, :1]) / half  # [n, C], object coords in [-1, 1] inside
    gy = (pix[None] - centre[:, 1:]) / half
    n = gx.shape[0]
    grid = torch.stack(
        [gx[:, None, :].expand(n, canvas, canvas), gy[:, :, None].expand(n, canvas, canvas)], -1
    )
    obj = F.grid_sample(rgba, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rgb, alpha = obj[:, :3], obj[:, 3:]
    coverage = rgba[:, 3:].sum((2, 3)).clamp_min(1e-6)
    luma = (rgba[:, :3] * _LUMA.to(rgba)[:, None, None]).sum(1, keepdim=True).sum((2, 3))
    bg_params = {k: v.to(device) for k, v in bg_params.items()}
    bg = paint_background(bg_params, luma[:, 0] / coverage[:, 0], canvas)
    out = bg * (1 - alpha) + rgb
    images = (out * 255).round_().clamp_(0, 255).to(torch.uint8)
    return (images, alpha) if return_alpha else images


def render_split(
    pool: ObjectPool,
    n: int,
    *,
    split: str,
    seed: int,
    placement: PlacementConfig,
    canvas: int,
    object_px: float,
    positions: np.ndarray | None = None,
    scale_factor: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render ``n`` images of a split -> (uint8 images [n, 3, C, C], labels, pool indices).

    ``positions`` are the draw positions in the pool (default ``0..n-1``); the pool maps them to
    instances. ``scale_factor`` multiplies every drawn scale (same instances, offsets and
    backgrounds otherwise: views of one image at nearby scales).
    """
    raster = max(math.ceil(object_px * float(placement.scale[1]) * scale_factor), 2)

    def render(objects: Objects, start: int, stop: int) -> Tensor:
        place, bg = draw_split_params(placement, canvas, seed, split, start, stop)
        place.scale = place.scale * scale_factor
        return composite(objects, place, bg, canvas, object_px, raster)

    return _in_chunks(pool, n, seed, positions, raster, canvas, render)


def resize_split(
    pool: ObjectPool, n: int, *, seed: int, size: int, positions: np.ndarray | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``data.render=false``: source images as they are (masked ones over black), resized."""

    def resize(objects: Objects, start: int, stop: int) -> Tensor:
        rgb = _rgba(objects)[:, :3]
        if rgb.shape[-1] != size or rgb.shape[-2] != size:
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", antialias=True)
        return (rgb * 255).round_().clamp_(0, 255).to(torch.uint8)

    return _in_chunks(pool, n, seed, positions, size, size, resize)


def _in_chunks(
    pool: ObjectPool,
    n: int,
    seed: int,
    positions: np.ndarray | None,
    raster: int,
    size: int,
    make: Callable[[Objects, int, int], Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Fill ``n`` uint8 images of ``size`` px, ``WORK`` at a time (bounded memory): ``make``
    turns the pool's objects (rastered at ``raster`` px) at positions [start, stop) into images.
    Returns (images, labels, pool indices)."""
    positions = np.arange(n) if positions is None else np.asarray(positions)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)
    indices = torch.empty(n, dtype=torch.long)
    for start in range(0, n, WORK):
        stop = min(start + WORK, n)
        objects = pool.take(pool.instances(positions[start:stop], seed), raster)
        images[start:stop] = make(objects, start, stop)
        labels[start:stop] = objects.labels
        indices[start:stop] = objects.indices
    return images, labels, indices
