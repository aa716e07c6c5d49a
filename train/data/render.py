"""Canvas rendering: paste source objects at drawn offsets and scales onto backgrounds.

Batched: object rasters are brought to one working resolution (antialiased resize), then every
canvas pixel samples its object through one ``grid_sample`` call on premultiplied RGBA, and the
result is composited over the background. Offsets are sub-pixel and measured from the canvas
centre, which is also the centre of the model-input window of any margin-padded rendering.

Rendering a split has two steps: ``render_split`` draws its :class:`Scene` (instances, offsets,
scales, and each object's box) and paints it; ``render_scene`` paints a drawn scene again with
every scale multiplied by a factor (the scale views of the same images). Random draws come in
blocks of :data:`BLOCK` images from generators keyed by (seed, split, block), one stream for
placements and one for backgrounds: image ``i`` of a split is a pure function of
(seed, split, i), whatever the split size or chunking. ``draw_scene_at`` draws any indices in
any order (the blocks they fall in, each once), which is how a training batch is rendered on
its own (:mod:`train.data.render_batches`).

With a :class:`~train.data.placement.FrameRule`, a drawn position that would let the object
leave the model window at an evaluated view is redrawn (from a generator keyed by the block and
the round), so the split's distribution is the configured one restricted to in-frame placements.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from invlab.config import ConfigError, PlacementConfig
from invlab.imageops import center_crop
from train.data.background import draw_background, paint_background
from train.data.placement import MAX_ROUNDS, FrameRule, Placement, sample_offsets, sample_placement
from train.data.registry import ObjectPool, Objects

__all__ = [
    "BLOCK",
    "Scene",
    "composite",
    "draw_params_at",
    "draw_scene_at",
    "draw_split_params",
    "frame_error",
    "object_extents",
    "raster_px",
    "render_scene",
    "render_split",
    "resize_split",
    "split_code",
]

BLOCK = 256
WORK = 1024  # images rendered per tensor batch (bounds memory for large source images)
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def split_code(split: str) -> int:
    """A stable integer for a split name (keys its random streams)."""
    return zlib.crc32(split.encode())


def _rng(seed: int, stream: int, split: str, block: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, split_code(split), block, *more])


def draw_split_params(
    placement: PlacementConfig,
    canvas: int,
    seed: int,
    split: str,
    start: int,
    stop: int,
    cell_px: float = 6.4,
) -> tuple[Placement, dict[str, Tensor]]:
    """Placement and background draws of images ``start..stop-1`` of a split (before any
    frame rule)."""
    return draw_params_at(placement, canvas, seed, split, np.arange(start, stop), cell_px)


def draw_params_at(
    placement: PlacementConfig,
    canvas: int,
    seed: int,
    split: str,
    index: np.ndarray,
    cell_px: float = 6.4,
) -> tuple[Placement, dict[str, Tensor]]:
    """Placement and background draws of images ``index`` (any order) of a split (before any
    frame rule): every block an image falls in is drawn whole, once, from its keyed generators,
    so image ``i`` gets the same draws however the split is chunked or shuffled."""
    index = np.asarray(index, dtype=np.int64)
    n = len(index)
    offset, scale = np.zeros((n, 2)), np.zeros(n)
    bg_params: dict[str, Tensor] = {}
    blocks = index // BLOCK
    for block in np.unique(blocks):
        sel = np.flatnonzero(blocks == block)
        at = index[sel] - int(block) * BLOCK
        p = sample_placement(placement, BLOCK, _rng(seed, 0xCA7, split, int(block)))
        bg = draw_background(
            placement.background, BLOCK, canvas, _rng(seed, 0xB6, split, int(block)), cell_px
        )
        offset[sel], scale[sel] = p.offset[at], p.scale[at]
        rows, take = torch.as_tensor(sel), torch.as_tensor(at)
        for key, value in bg.items():
            if key not in bg_params:
                bg_params[key] = value.new_zeros((n, *value.shape[1:]))
            bg_params[key][rows] = value[take]
    return Placement(offset, scale), bg_params


def draw_scene_at(
    objects: Objects,
    index: np.ndarray,
    *,
    split: str,
    seed: int,
    placement: PlacementConfig,
    canvas: int,
    object_px: float,
    frame: FrameRule | None = None,
    cell_px: float | None = None,
) -> tuple[Placement, dict[str, Tensor], np.ndarray, np.ndarray]:
    """What images ``index`` of a split show, for their ``objects``: (placement after the frame
    rule, background draws, object extents [n, 4], rejected draws per image (-1: none was in
    frame)). Every value of image ``i`` is a pure function of (seed, split, i) and its object."""
    index = np.asarray(index, dtype=np.int64)
    cell = cell_px if cell_px is not None else canvas / 5
    place, bg = draw_params_at(placement, canvas, seed, split, index, cell)
    ext = object_extents(objects, place.scale * object_px, raster_px(object_px, placement))
    redrawn = np.zeros(len(index), dtype=np.int64)
    if frame is not None:
        redrawn = _keep_in_frame(place, ext, frame, placement, seed, split, index)
    return place, bg, ext, redrawn


def raster_px(object_px: float, placement: PlacementConfig, scale_factor: float = 1.0) -> int:
    """The side objects are rastered at: their largest extent in the split (at least 2 px), so
    that an image does not depend on the batch it is rendered in."""
    return max(math.ceil(object_px * float(placement.scale[1]) * scale_factor), 2)


def object_extents(objects: Objects, extent: np.ndarray, raster: int | None = None) -> np.ndarray:
    """[n, 4] px from each object's centre to the edges of its covered box (left, right, up,
    down) when it is rendered ``extent`` px wide: from the alpha mask's nonzero rows and columns
    (objects without a mask cover their whole square), plus one texel of the raster actually
    sampled (``composite`` shrinks larger images to ``raster`` px): half a texel that bilinear
    sampling spreads coverage by, and half for the edge of a mask drawn again at another
    resolution (a rescaled view re-renders the object larger)."""
    n = len(objects)
    if objects.masks is None:
        frac = np.full((n, 4), 0.5 + _bleed(objects.images.shape[-1], raster))
    else:
        alpha = objects.masks[:, 0] > 0  # [n, h, w]
        h, w = alpha.shape[-2:]
        cols, rows = alpha.any(1), alpha.any(2)  # [n, w], [n, h]
        frac = np.zeros((n, 4))
        for k, (mask, size) in enumerate(((cols, w), (rows, h))):
            bleed = _bleed(size, raster)
            idx = torch.arange(size)
            has = mask.any(1)
            first = torch.where(mask, idx, size).amin(1).float()
            last = torch.where(mask, idx, -1).amax(1).float()
            lo = (0.5 - first / size).numpy() + bleed
            hi = ((last + 1) / size - 0.5).numpy() + bleed
            frac[:, 2 * k] = np.where(has.numpy(), lo, 0.0)
            frac[:, 2 * k + 1] = np.where(has.numpy(), hi, 0.0)
    return frac * np.asarray(extent, dtype=np.float64)[:, None]


def _bleed(size: int, raster: int | None) -> float:
    """Coverage spread beyond an object's last texel, as a fraction of its width."""
    return 1.0 / max(size if raster is None else min(size, raster), 1)


@dataclass
class Scene:
    """What a split's images show, drawn once: per image its pool ``positions`` (-> instances),
    ``offset`` [n, 2] (x, y) and ``scale`` [n] (after the frame rule), object ``extents``
    [n, 4] at the drawn scale (px left, right, up, down of the centre), and ``redrawn`` [n], how
    many draws the frame rule rejected (-1: none was in frame)."""

    positions: np.ndarray
    offset: np.ndarray
    scale: np.ndarray
    extents: np.ndarray
    redrawn: np.ndarray

    def head(self, n: int) -> Scene:
        """The scene of the first ``n`` images."""
        return Scene(
            *(a[:n] for a in (self.positions, self.offset, self.scale, self.extents, self.redrawn))
        )

    def boxes(self) -> np.ndarray:
        """[n, 4] object boxes (x0, x1, y0, y1) in px from the model window's centre."""
        e, o = self.extents, self.offset
        return np.stack(
            [o[:, 0] - e[:, 0], o[:, 0] + e[:, 1], o[:, 1] - e[:, 2], o[:, 1] + e[:, 3]], 1
        )


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
    classic: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Render objects onto ``canvas``-px backgrounds -> uint8 [n, 3, canvas, canvas].

    An object of scale ``s`` covers a square of ``object_px * s`` pixels centred at
    ``canvas / 2 + offset``. Larger object rasters are first shrunk to ``raster`` px (default:
    the largest extent in the batch; give the distribution's bound to make an image independent
    of its batch). ``classic``: white objects (their alpha) on black. With ``return_alpha`` also
    returns the float coverage [n, 1, C, C].
    """
    rgba = _rgba(objects)
    if classic:
        rgba = torch.cat([rgba[:, 3:].expand(-1, 3, -1, -1), rgba[:, 3:]], 1)
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
    bg = paint_background(bg_params, luma[:, 0] / coverage[:, 0], canvas, classic=classic)
    out = bg * (1 - alpha) + rgb
    images = (out * 255).round_().clamp_(0, 255).to(torch.uint8)
    return (images, alpha) if return_alpha else images


def _keep_in_frame(
    place: Placement,
    extents: np.ndarray,
    frame: FrameRule,
    placement: PlacementConfig,
    seed: int,
    split: str,
    index: np.ndarray,
) -> np.ndarray:
    """Redraw the placements of images ``index`` of the split whose object would leave the
    frame (in place: ``place`` and ``extents``); returns the number of rejected draws per image
    (-1: could not be placed). Positions are redrawn first; an object that fits at no position at
    its scale (a rare wide instance) then redraws position and scale together, both still from
    the split's distribution. Round ``r`` of block ``b`` draws a whole block from its own
    generator, so an image's result does not depend on the chunk or batch it is rendered in."""
    redrawn = np.zeros(len(place.offset), dtype=np.int64)
    bad = ~frame.inside(place.offset, extents)
    for rnd in range(1, 2 * MAX_ROUNDS + 1):
        if not bad.any():
            break
        redrawn += bad
        idx = np.flatnonzero(bad)
        blocks = index[idx] // BLOCK
        for block in np.unique(blocks):
            sel = idx[blocks == block]
            at = index[sel] % BLOCK
            if rnd <= MAX_ROUNDS:
                draws = sample_offsets(placement, BLOCK, _rng(seed, 0xF4A, split, int(block), rnd))
                place.offset[sel] = draws[at]
            else:
                both = sample_placement(placement, BLOCK, _rng(seed, 0xF4B, split, int(block), rnd))
                extents[sel] *= (both.scale[at] / place.scale[sel])[:, None]  # proportional
                place.offset[sel], place.scale[sel] = both.offset[at], both.scale[at]
        bad[idx] = ~frame.inside(place.offset[idx], extents[idx])
    redrawn[bad] = -1  # could not be placed
    return redrawn


def _take(pool: ObjectPool, positions: np.ndarray, seed: int, raster: int) -> Objects:
    return pool.take(pool.instances(positions, seed), raster)


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
    frame: FrameRule | None = None,
    cell_px: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Scene]:
    """Render ``n`` images of a split -> (uint8 images [n, 3, C, C], labels, source indices,
    scene).

    ``positions`` are the draw positions in the pool (default ``0..n-1``); the pool maps them to
    instances. ``frame``: keep every object inside the model window at every evaluated view
    (redraw positions that do not); a position that cannot be found raises ``ConfigError``.
    """
    positions = np.arange(n) if positions is None else np.asarray(positions)
    raster = raster_px(object_px, placement)
    classic = placement.appearance == "classic"
    offsets, scales, extents, redrawn = [], [], [], []

    def render(objects: Objects, start: int, stop: int) -> Tensor:
        place, bg, ext, count = draw_scene_at(
            objects,
            np.arange(start, stop),
            split=split,
            seed=seed,
            placement=placement,
            canvas=canvas,
            object_px=object_px,
            frame=frame,
            cell_px=cell_px,
        )
        offsets.append(place.offset)
        scales.append(place.scale)
        extents.append(ext)
        redrawn.append(count)
        return composite(objects, place, bg, canvas, object_px, raster, classic=classic)

    images, labels, indices = _in_chunks(pool, positions, seed, raster, canvas, render)
    if not offsets:  # no images
        offsets, scales = [np.zeros((0, 2))], [np.zeros(0)]
        extents, redrawn = [np.zeros((0, 4))], [np.zeros(0, dtype=np.int64)]
    scene = Scene(
        positions,
        np.concatenate(offsets),
        np.concatenate(scales),
        np.concatenate(extents),
        np.concatenate(redrawn),
    )
    failed = int((scene.redrawn < 0).sum())
    if failed:
        assert frame is not None
        raise frame_error(split, failed, n, placement, frame, object_px, scene)
    return images, labels, indices, scene


def frame_error(
    split: str,
    failed: int,
    n: int,
    placement: PlacementConfig,
    frame: FrameRule,
    object_px: float,
    scene: Scene,
) -> ConfigError:
    """The error for ``failed`` of ``n`` objects of a split that no drawn position keeps in
    frame (``scene.redrawn`` -1), naming the keys that would make room."""
    where = {
        "gaussian": f"gaussian sigma_px={placement.sigma_px:g} up to {placement.max_offset_px:g}",
        "uniform": f"uniform max_offset_px={placement.max_offset_px:g}",
        "ring": f"ring radius_px={list(placement.radius_px)}",
        "center": "centre",
    }[placement.position]
    bad = scene.redrawn < 0
    widest = float(scene.extents[bad].max()) if bad.any() else 0.0
    return ConfigError(
        f"Split '{split}': {failed} of {n} objects cannot be placed wholly inside the "
        f"{frame.window}-px model window at every evaluated view ({where}; objects reach "
        f"{widest:.1f} px from their centre; shifts up to {frame.shift:g} px "
        f"(data.eval_margin_px); scales up to {frame.scale:g} (data.frame_scale)). Lower the "
        f"split's radius_px / max_offset_px or scale, data.object_size, data.eval_margin_px or "
        f"data.frame_scale, or allow cut objects with data.keep_in_frame=false."
    )


def render_scene(
    pool: ObjectPool,
    scene: Scene,
    *,
    split: str,
    seed: int,
    placement: PlacementConfig,
    canvas: int,
    object_px: float,
    scale_factor: float,
    cell_px: float | None = None,
) -> Tensor:
    """The images of a drawn scene with every scale multiplied by ``scale_factor`` (same
    instances, offsets and backgrounds) -> uint8 [n, 3, C, C]."""
    cell = cell_px if cell_px is not None else canvas / 5
    raster = raster_px(object_px, placement, scale_factor)
    classic = placement.appearance == "classic"

    def render(objects: Objects, start: int, stop: int) -> Tensor:
        _, bg = draw_split_params(placement, canvas, seed, split, start, stop, cell)
        place = Placement(scene.offset[start:stop], scene.scale[start:stop] * scale_factor)
        return composite(objects, place, bg, canvas, object_px, raster, classic=classic)

    return _in_chunks(pool, scene.positions, seed, raster, canvas, render)[0]


def resize_split(
    pool: ObjectPool,
    n: int,
    *,
    seed: int,
    size: int,
    positions: np.ndarray | None = None,
    fit: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``data.render=false``: source images as they are (masked ones over black), resized to
    ``size`` px, or (``fit``) resized to ``fit`` px and centre-cropped to ``size``."""
    side = size if fit is None else int(fit)

    def resize(objects: Objects, start: int, stop: int) -> Tensor:
        rgb = _rgba(objects)[:, :3]
        if rgb.shape[-1] != side or rgb.shape[-2] != side:
            rgb = F.interpolate(rgb, size=(side, side), mode="bilinear", antialias=True)
        if side != size:
            rgb = center_crop(rgb, size)
        return (rgb * 255).round_().clamp_(0, 255).to(torch.uint8)

    positions = np.arange(n) if positions is None else np.asarray(positions)
    return _in_chunks(pool, positions, seed, size, size, resize)


def _in_chunks(
    pool: ObjectPool,
    positions: np.ndarray,
    seed: int,
    raster: int,
    size: int,
    make: Callable[[Objects, int, int], Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Fill one uint8 image of ``size`` px per draw position, ``WORK`` at a time (bounded
    memory): ``make`` turns the pool's objects (rastered at ``raster`` px) of images
    [start, stop) into images. Returns (images, labels, source indices)."""
    n = len(positions)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)
    indices = torch.empty(n, dtype=torch.long)
    for start in range(0, n, WORK):
        stop = min(start + WORK, n)
        objects = _take(pool, positions[start:stop], seed, raster)
        images[start:stop] = make(objects, start, stop)
        labels[start:stop] = objects.labels
        indices[start:stop] = objects.indices
    return images, labels, indices
