"""``shapes``: procedural objects of 10 classes that differ in shape, not in colour.

Every class is a polygon family with its own parameters (star depth, arm width, crescent
offset, ...); every instance adds aspect ratio, size, rotation jitter, fill or outline with a
random stroke width, and a class-independent colour and texture (flat, stripes, gradient).
Rasterised from the polygon's signed distance with a one-pixel antialiasing ramp (exact
coverage at the edge without supersampling). Instance ``i`` of a role (train / held-out) is a
pure function of (seed, role, i).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from invlab.config import DataConfig
from train.data.colorize import hsv_to_rgb
from train.data.registry import ObjectPool, Objects, Source, register_source

CHUNK = 1024  # instance parameters are drawn per chunk of indices
_ROLE = {"train": 0, "heldout": 1}


def _arc(theta: np.ndarray, radius: float | np.ndarray = 1.0, cx: float | np.ndarray = 0.0):
    return np.stack([cx + radius * np.cos(theta), radius * np.sin(theta)], axis=-1)


def _circle(u: np.ndarray) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    return np.broadcast_to(_arc(t), (len(u), 32, 2)).copy()


def _square(u: np.ndarray) -> np.ndarray:
    v = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    return np.broadcast_to(v, (len(u), 4, 2)).copy()


def _triangle(u: np.ndarray) -> np.ndarray:
    t = np.deg2rad(np.array([90.0, 210.0, 330.0]))[None] + 0.25 * (u[:, :3] - 0.5)
    return _arc(t)


def _star(u: np.ndarray) -> np.ndarray:
    t = np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.0)[None] + (np.arange(10) % 2 == 1) * (
        0.36 + 0.2 * u[:, :1]
    )
    return _arc(np.broadcast_to(t, r.shape), r)


def _cross(u: np.ndarray) -> np.ndarray:
    w = 0.2 + 0.16 * u[:, 0]
    o = np.ones_like(w)
    xs = [w, w, o, o, w, w, -w, -w, -o, -o, -w, -w]
    ys = [o, w, w, -w, -w, -o, -o, -w, -w, w, w, o]
    return np.stack([np.stack(xs, 1), np.stack(ys, 1)], -1)[:, ::-1].copy()


def _hexagon(u: np.ndarray) -> np.ndarray:
    t = np.arange(6) * np.pi / 3
    return np.broadcast_to(_arc(t), (len(u), 6, 2)).copy()


def _crescent(u: np.ndarray) -> np.ndarray:
    d = 0.35 + 0.25 * u[:, :1]  # inner circle centre (d, 0), radius r, cuts the unit circle
    r = 0.85
    xi = (1 - r * r + d * d) / (2 * d)
    ti = np.arctan2(np.sqrt(1 - xi * xi), xi)
    s = np.linspace(0, 1, 16)[None]
    outer = _arc(ti + s * (2 * np.pi - 2 * ti))
    ui = np.arctan2(np.sqrt(1 - xi * xi), xi - d)  # intersection angle seen from the centre
    inner = _arc((2 * np.pi - ui) - s * (2 * np.pi - 2 * ui), r, d)[:, 1:-1]
    return np.concatenate([outer, inner], 1)


def _arrow(u: np.ndarray) -> np.ndarray:
    w = 0.14 + 0.12 * u[:, 0]
    hx = -0.05 + 0.35 * u[:, 1]
    hh = 0.55 + 0.35 * u[:, 2]
    o = np.ones_like(w)
    xs = [-o, hx, hx, o, hx, hx, -o]
    ys = [-w, -w, -hh, 0 * o, hh, w, w]
    return np.stack([np.stack(xs, 1), np.stack(ys, 1)], -1)


def _heart(u: np.ndarray) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 28, endpoint=False)[None]
    k = 0.8 + 0.4 * u[:, :1]  # lobe width
    x = k * 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    y = np.broadcast_to(y, x.shape)
    return np.stack([x, y], -1)[:, ::-1] / 16.0


def _lshape(u: np.ndarray) -> np.ndarray:
    t = 0.55 + 0.45 * u[:, 0]  # arm thickness
    o = np.ones_like(t)
    xs = [-o, o, o, -o + t, -o + t, -o]
    ys = [-o, -o, -o + t, -o + t, o, o]
    return np.stack([np.stack(xs, 1), np.stack(ys, 1)], -1)


SHAPES = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "hexagon": _hexagon,
    "crescent": _crescent,
    "arrow": _arrow,
    "heart": _heart,
    "lshape": _lshape,
}
CLASS_NAMES = list(SHAPES)


def polygon_sdf(points: Tensor, verts: Tensor) -> Tensor:
    """Signed distance (negative inside) from ``points`` [M, 2] to closed polygons [n, K, 2]
    -> [n, M]. Exact for simple polygons (distance to the nearest edge, crossing-number sign)."""
    px, py = points[:, 0], points[:, 1]  # [M]
    ax, ay = verts[..., 0, None], verts[..., 1, None]  # [n, K, 1]
    nxt = verts.roll(-1, dims=1)
    ex, ey = nxt[..., 0, None] - ax, nxt[..., 1, None] - ay
    wx, wy = px - ax, py - ay  # [n, K, M]
    h = ((wx * ex + wy * ey) / (ex * ex + ey * ey).clamp_min(1e-12)).clamp_(0, 1)
    dx, dy = wx - ex * h, wy - ey * h
    dist = (dx * dx + dy * dy).amin(1).sqrt_()
    crosses = (ay <= py) != (ay + ey <= py)
    flips = crosses & ((ex * wy > ey * wx) == (ey > 0))
    inside = flips.sum(1) % 2 == 1
    return torch.where(inside, -dist, dist)


class ShapePool(ObjectPool):
    """An unbounded pool of procedural instances of one role (train or held-out)."""

    def __init__(self, seed: int, role: str) -> None:
        self.seed, self.role = seed, _ROLE[role]

    def __len__(self) -> int:
        return 2**62

    def instances(self, positions: np.ndarray, seed: int) -> np.ndarray:
        return np.asarray(positions, dtype=np.int64)  # instances are random already

    def labels_of(self, indices: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(indices, dtype=np.int64) % len(CLASS_NAMES))

    def _params(self, chunk: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0x5A9E5, self.role, chunk])
        n = CHUNK
        hue = rng.random(n)
        return {
            "u": rng.random((n, 4)),
            "aspect": np.exp(rng.uniform(-0.3, 0.3, n)),
            "size": rng.uniform(0.72, 1.0, n),
            "angle": np.deg2rad(rng.uniform(-25, 25, n)),
            "stroke": rng.random(n) < 0.3,
            "width": rng.uniform(0.07, 0.15, n),
            "rgb1": hsv_to_rgb(hue, rng.uniform(0.2, 1.0, n), rng.uniform(0.25, 1.0, n)),
            "rgb2": hsv_to_rgb((hue + rng.uniform(0.2, 0.8, n)) % 1, rng.random(n), rng.random(n)),
            "texture": rng.choice(3, size=n, p=[0.5, 0.3, 0.2]),  # flat, stripes, gradient
            "freq": rng.uniform(2.0, 5.0, n),
            "tex_angle": rng.uniform(0, np.pi, n),
            "phase": rng.uniform(0, 2 * np.pi, n),
        }

    def take(self, indices: np.ndarray, size: int) -> Objects:
        indices = np.asarray(indices, dtype=np.int64)
        labels = indices % len(CLASS_NAMES)
        chunks = indices // CHUNK
        par: dict[str, np.ndarray] = {}
        for c in np.unique(chunks):
            sel = chunks == c
            p = self._params(int(c))
            for key, value in p.items():
                if key not in par:
                    par[key] = np.zeros((len(indices), *value.shape[1:]), value.dtype)
                par[key][sel] = value[indices[sel] % CHUNK]
        return self._raster(labels, par, size, indices)

    def _raster(
        self, labels: np.ndarray, par: dict[str, np.ndarray], size: int, indices: np.ndarray
    ) -> Objects:
        """Polygons -> antialiased coverage masks and textured colour rasters of ``size`` px."""
        n = len(labels)
        lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres
        yy, xx = torch.meshgrid(-lin, lin, indexing="ij")  # y up
        points = torch.stack([xx.flatten(), yy.flatten()], -1)
        sdf = torch.empty(n, size * size)
        for k, name in enumerate(CLASS_NAMES):
            sel = np.flatnonzero(labels == k)
            if len(sel) == 0:
                continue
            verts = SHAPES[name](par["u"][sel])
            verts = _jitter(verts, par["aspect"][sel], par["angle"][sel], par["size"][sel])
            sdf[torch.as_tensor(sel)] = polygon_sdf(
                points, torch.as_tensor(verts, dtype=torch.float32)
            )
        stroke = torch.as_tensor(par["stroke"])[:, None]
        width = torch.as_tensor(par["width"], dtype=torch.float32)[:, None]
        sdf = torch.where(stroke, sdf.abs() - width, sdf)
        alpha = (0.5 - sdf * (size / 2)).clamp(0, 1)  # one-pixel ramp across the edge

        c1 = torch.as_tensor(par["rgb1"], dtype=torch.float32)[..., None]  # [n, 3, 1]
        c2 = torch.as_tensor(par["rgb2"], dtype=torch.float32)[..., None]
        ta = torch.as_tensor(par["tex_angle"], dtype=torch.float32)[:, None]
        proj = points[None, :, 0] * ta.cos() + points[None, :, 1] * ta.sin()  # [n, M]
        freq = torch.as_tensor(par["freq"], dtype=torch.float32)[:, None]
        phase = torch.as_tensor(par["phase"], dtype=torch.float32)[:, None]
        tex = torch.as_tensor(par["texture"])[:, None]
        mix = torch.where(
            tex == 1,
            0.5 + 0.5 * torch.sin(freq * math.pi * proj + phase),
            torch.where(tex == 2, 0.5 + 0.5 * proj.clamp(-1, 1), torch.zeros_like(proj)),
        )[:, None]
        rgb = c1 + (c2 - c1) * mix  # [n, 3, M]
        images = (rgb * 255).round().to(torch.uint8).view(n, 3, size, size)
        masks = (alpha * 255).round().to(torch.uint8).view(n, 1, size, size)
        return Objects(images, masks, torch.as_tensor(labels), torch.as_tensor(indices))


def _jitter(
    verts: np.ndarray, aspect: np.ndarray, angle: np.ndarray, size: np.ndarray
) -> np.ndarray:
    """Aspect ratio, rotation, centring and size normalisation of polygons [n, K, 2]."""
    v = verts * np.stack([np.sqrt(aspect), 1 / np.sqrt(aspect)], -1)[:, None]
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    v = np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)
    v = v - (v.max(1, keepdims=True) + v.min(1, keepdims=True)) / 2
    extent = np.abs(v).max(axis=(1, 2))
    return v * (0.92 * size / extent)[:, None, None]


@register_source("shapes")
def load_shapes(cfg: DataConfig, seed: int) -> Source:
    return Source("shapes", CLASS_NAMES, ShapePool(seed, "train"), ShapePool(seed, "heldout"))
