"""Views of images along translation and scale trajectories, produced in batches on the device.

Convention: an offset ``(dy, dx)`` moves the image *content* by ``dy`` rows and ``dx`` columns
(positive = down/right) relative to the model's normal input, the central ``S x S`` crop.

Translation protocols (``translate_views``):

- ``crop``: an ``S x S`` window slides inside the larger held-out rendering (margin
  ``m = (H - S) // 2``), so every view holds only real pixels. Images without margin (``H == S``)
  are padded by ``max_shift`` with ``pad_mode`` first (recorded in the report).
- ``embed`` (Azulay & Weiss): an image is pasted into an ``S x S`` canvas at the shifted
  position; the canvas is ``black`` (0), the image's ``mean`` colour, or ``inpaint`` = edge
  replication (every canvas pixel copies the nearest image pixel: a seamless, deterministic fill
  with no smoothing parameters). With ``embed_size=None`` (default) the pasted image is the
  central ``S - 2 * ceil(max_shift)`` pixels at their own scale (objects kept in frame lie wholly
  inside it); a fraction resizes the central crop to ``round(embed_size * S)`` as Azulay & Weiss
  do, which also rescales the object.
- ``circular``: ``torch.roll`` of the central crop (exact invariance target of APS).
- ``subpixel``: bilinear resampling of the (margin or padded) rendering at fractional offsets.

Trajectories (``trajectory``): ``diagonal``/``horizontal``/``vertical`` consecutive steps (1 px,
or ``eval.subpixel_step`` for ``subpixel``) from ``-max_shift`` to ``+max_shift``, or the
exhaustive 2-D ``grid`` (Lee et al.'s cosine maps). Consistency uses random pairs: two
independent offsets per image (``random_pair_offsets``, seeded).

Scale protocols:

- ``render`` (``rendered_scale_views``): the datamodule re-renders the same instances, offsets and
  backgrounds with the drawn object scale multiplied by each ``s`` (``render_scales``); the views
  are the central crops, so ``s = 1`` is exactly the held-out image.
- ``embed`` (``scale_views``): the central crop resized to ``round(s * embed_size * S)`` for each
  ``s`` and pasted at the canvas centre with the same fill as the ``embed`` translation protocol
  (for data that cannot be re-rendered; even ``s = 1`` differs from the test image).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from invlab.config import ConfigError
from invlab.imageops import center_crop, windows

PROTOCOLS = ("crop", "embed", "circular", "subpixel")
TRAJECTORIES = ("diagonal", "horizontal", "vertical", "grid")
FILLS = ("black", "mean", "inpaint")
SCALE_PROTOCOLS = ("render", "embed")
PAD_MODES = {"reflect": "reflect", "replicate": "replicate", "zeros": "constant"}


def trajectory(kind: str, max_shift: float, step: float = 1.0) -> Tensor:
    """Offsets ``[T, 2]`` (dy, dx) from ``-max_shift`` to ``+max_shift`` in steps of ``step``.

    ``grid`` is the exhaustive 2-D set in raster order (dy outer, dx inner): ``T = G * G``.
    """
    n = round(max_shift / step)
    if n < 0 or abs(n * step - max_shift) > 1e-6:
        raise ValueError(
            f"max_shift {max_shift} must be a non-negative multiple of the step {step}."
        )
    line = torch.arange(-n, n + 1, dtype=torch.float64) * step
    zero = torch.zeros_like(line)
    if kind == "diagonal":
        return torch.stack([line, line], 1)
    if kind == "horizontal":
        return torch.stack([zero, line], 1)
    if kind == "vertical":
        return torch.stack([line, zero], 1)
    if kind == "grid":
        return torch.tensor(list(itertools.product(line.tolist(), repeat=2)), dtype=torch.float64)
    raise ValueError(f"Unknown trajectory {kind!r}; choose one of {', '.join(TRAJECTORIES)}.")


def distinct_pairs(n: int, k: int, generator: torch.Generator) -> Tensor:
    """``[n, 2]`` int64: per image two *different* indices in ``0..k-1``, uniform over the
    ordered pairs of distinct indices (a view is never compared with itself)."""
    if k < 2:
        raise ValueError(f"Distinct pairs need at least two views, got {k}.")
    first = torch.randint(0, k, (n,), generator=generator)
    second = (first + torch.randint(1, k, (n,), generator=generator)) % k
    return torch.stack([first, second], 1)


def random_pair_offsets(
    n: int, max_shift: float, step: float, generator: torch.Generator
) -> Tensor:
    """``[n, 2, 2]``: two different offsets per image, uniform over the ordered pairs of
    distinct points of the ``step`` lattice of the square (dy, dx in ±max_shift)."""
    k = round(max_shift / step)
    side = 2 * k + 1
    pairs = distinct_pairs(n, side * side, generator)
    dy, dx = pairs // side - k, pairs % side - k
    return torch.stack([dy, dx], -1).double() * step


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input is returned as float32."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def margin_of(images: Tensor, size: int) -> int:
    return (images.shape[-1] - size) // 2


def translation_source(
    images: Tensor, size: int, max_shift: float, pad_mode: str = "reflect"
) -> tuple[Tensor, int, int]:
    """The rendering a window slides in: ``(source, margin, padding)``.

    Uses the image's own margin when it is at least ``ceil(max_shift)``; pads images without
    margin by that much with ``pad_mode``. A margin that exists but is too small is an error.
    """
    margin = margin_of(images, size)
    need = int(torch.tensor(max_shift).ceil())
    if margin >= need:
        return images, margin, 0
    if margin > 0:
        raise ConfigError(
            f"eval.max_shift_px={max_shift} exceeds the held-out rendering's margin of "
            f"{margin} px: "
            f"raise data.eval_margin_px to at least {need} or lower eval.max_shift_px."
        )
    if pad_mode not in PAD_MODES:
        raise ValueError(f"Unknown pad_mode {pad_mode!r}; choose one of {', '.join(PAD_MODES)}.")
    padded = F.pad(to_float(images), (need,) * 4, mode=PAD_MODES[pad_mode])
    if images.dtype == torch.uint8:  # padding copies values, so uint8 survives exactly
        padded = (padded * 255.0).round().to(torch.uint8)
    return padded, need, need


def _fill_canvas(small: Tensor, pad: tuple[int, int, int, int], fill: str) -> Tensor:
    """Paste ``small [N, C, e, e]`` into a canvas grown by ``pad`` (left, right, top, bottom)."""
    if fill == "inpaint":
        return F.pad(small, pad, mode="replicate")
    canvas = F.pad(small, pad, value=0.0)
    if fill == "black":
        return canvas
    if fill == "mean":
        inside = F.pad(torch.ones_like(small[:, :1]), pad, value=0.0)
        return canvas + (1.0 - inside) * small.mean((2, 3), keepdim=True)
    raise ValueError(f"Unknown fill {fill!r}; choose one of {', '.join(FILLS)}.")


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)


def embed_size_px(size: int, embed_size: float, scale: float = 1.0) -> int:
    return max(1, round(scale * embed_size * size))


def _embedded(images: Tensor, size: int, embed_size: float | None, max_shift: float) -> Tensor:
    """The image the embed protocol pastes: the central ``size - 2 * ceil(max_shift)`` px at
    their own scale (``embed_size=None``), or the central crop resized by ``embed_size``."""
    crop = to_float(center_crop(images, size))
    if embed_size is None:
        return center_crop(crop, size - 2 * int(torch.tensor(max_shift).ceil()))
    return _resize(crop, embed_size_px(size, embed_size))


def translate_views(
    images: Tensor,
    offsets: Tensor,
    *,
    protocol: str,
    size: int,
    pad_mode: str = "reflect",
    fill: str = "black",
    embed_size: float | None = None,
    max_shift: float | None = None,
) -> Tensor:
    """Float ``[N, T, C, size, size]`` views of ``images [N, C, H, W]`` at ``offsets``.

    ``offsets`` is ``[T, 2]`` (shared by all images) or ``[N, T, 2]`` (per image), as (dy, dx)
    content shifts. ``max_shift`` sizes the padding (default: the largest offset).
    """
    n = images.shape[0]
    if offsets.ndim == 2:
        offsets = offsets.expand(n, *offsets.shape)
    offsets = offsets.to(images.device)
    dy, dx = offsets[..., 0], offsets[..., 1]
    if max_shift is None:
        max_shift = float(offsets.abs().max()) if offsets.numel() else 0.0
    if protocol != "subpixel" and not torch.equal(offsets, offsets.round()):
        raise ValueError(f"Protocol {protocol!r} needs integer offsets; use 'subpixel'.")

    if protocol == "crop":
        src, m, _ = translation_source(images, size, max_shift, pad_mode)
        out = windows(src, m - dy.long(), m - dx.long(), size)
        return to_float(out)
    if protocol == "circular":
        src = center_crop(images, size)
        return to_float(windows(src, -dy.long(), -dx.long(), size, wrap=True))
    if protocol == "embed":
        small = _embedded(images, size, embed_size, max_shift)
        e = small.shape[-1]
        border = (size - e) // 2
        if max_shift > border or e < 1:
            raise ConfigError(
                f"eval.max_shift_px={max_shift} moves the embedded image ({e} px) out of the "
                f"{size} px canvas (free border {border} px): lower eval.embed_size or "
                f"eval.max_shift_px."
            )
        m = int(max_shift)
        lo, hi = border + m, size - e - border + m
        canvas = _fill_canvas(small, (lo, hi, lo, hi), fill)  # [N, C, size + 2m, size + 2m]
        return windows(canvas, m - dy.long(), m - dx.long(), size)
    if protocol == "subpixel":
        src, m, _ = translation_source(to_float(images), size, max_shift, pad_mode)
        return _subpixel_windows(src, m - dy, m - dx, size)
    raise ValueError(f"Unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")


def _subpixel_windows(src: Tensor, top: Tensor, left: Tensor, size: int) -> Tensor:
    """Bilinear windows at fractional positions.

    ``F.grid_sample`` samples only the ``size x size`` window per view (a full-image warp such
    as ``kornia.geometry.translate`` followed by a crop would resample the whole margin).
    """
    n, c, h, w = src.shape
    t = top.shape[1]
    ar = torch.arange(size, device=src.device, dtype=src.dtype)
    ys = top.to(src)[..., None] + ar  # [N, T, S] pixel rows
    xs = left.to(src)[..., None] + ar
    gy = (2.0 * ys / (h - 1) - 1.0)[..., :, None].expand(n, t, size, size)
    gx = (2.0 * xs / (w - 1) - 1.0)[..., None, :].expand(n, t, size, size)
    grid = torch.stack([gx, gy], -1).reshape(n * t, size, size, 2)
    inp = src[:, None].expand(n, t, c, h, w).reshape(n * t, c, h, w)
    out = F.grid_sample(inp, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(n, t, c, size, size)


def scale_embed_size(embed_size: float | None, scales: list[float]) -> float:
    """The embed fraction the scale protocol uses: ``embed_size``, or (None) the largest that
    keeps the largest scale inside the canvas, ``1 / max(scales)``."""
    return float(embed_size) if embed_size is not None else 1.0 / max(max(scales), 1.0)


def scale_views(
    images: Tensor,
    scales: list[float],
    *,
    size: int,
    embed_size: float | None,
    fill: str = "black",
) -> Tensor:
    """Float ``[N, T, C, size, size]``: the central crop rescaled by each ``s`` (embed protocol)."""
    base = to_float(center_crop(images, size))
    fraction = scale_embed_size(embed_size, scales)
    views = []
    for s in scales:
        e = embed_size_px(size, fraction, s)
        if e > size:
            raise ConfigError(
                f"Scale {s} x eval.embed_size={embed_size} gives {e} px, larger than the {size} px "
                f"input: lower eval.embed_size or the largest entry of eval.scales."
            )
        lo = (size - e) // 2
        hi = size - e - lo
        views.append(_fill_canvas(_resize(base, e), (lo, hi, lo, hi), fill))
    return torch.stack(views, 1)


def rendered_scale_views(renders: Tensor, size: int) -> Tensor:
    """Float ``[N, T, C, size, size]``: central crops of re-rendered scale views
    ``[N, T, C, H, W]``."""
    return to_float(center_crop(renders, size))


def in_frame(
    offset: Tensor,
    extents: Tensor,
    size: int,
    *,
    shifts: Tensor | None = None,
    factors: Tensor | None = None,
    window: float | None = None,
) -> Tensor:
    """``[N, T]`` bool: the object lies wholly inside the model window at each view.

    ``offset [N, 2]`` (x, y) is each object's centre and ``extents [N, 4]`` its reach (left,
    right, up, down) in px from the window centre. Views are content ``shifts`` ``[T, 2]`` or
    ``[N, T, 2]`` (dy, dx), or rescalings by ``factors [T]`` about the object's centre.
    ``window`` is the half-width of the region the object must stay in (default ``size / 2``;
    the embed protocol pastes only its central part).
    """
    half = size / 2 if window is None else window
    o, e = offset.double(), extents.double()
    if factors is not None:
        f = factors.double()[None, :, None]  # [1, T, 1]
        x0 = o[:, None, 0:1] - f * e[:, None, 0:1]
        x1 = o[:, None, 0:1] + f * e[:, None, 1:2]
        y0 = o[:, None, 1:2] - f * e[:, None, 2:3]
        y1 = o[:, None, 1:2] + f * e[:, None, 3:4]
        box = torch.cat([x0, x1, y0, y1], -1)  # [N, T, 4]
    else:
        s = torch.zeros(1, 1, 2, dtype=torch.float64) if shifts is None else shifts.double()
        s = s if s.ndim == 3 else s[None]
        box0 = torch.stack(
            [o[:, 0] - e[:, 0], o[:, 0] + e[:, 1], o[:, 1] - e[:, 2], o[:, 1] + e[:, 3]], -1
        )
        dx, dy = s[..., 1], s[..., 0]
        box = box0[:, None, :] + torch.stack([dx, dx, dy, dy], -1)
    tol = 1e-6
    return (
        (box[..., 0] >= -half - tol)
        & (box[..., 1] <= half + tol)
        & (box[..., 2] >= -half - tol)
        & (box[..., 3] <= half + tol)
    )
