"""Placement distributions: per-image object offset (pixels from the window centre) and scale,
and the frame rule that keeps an object wholly inside the model window at every evaluated view."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invlab.config import PlacementConfig

__all__ = ["FrameRule", "Placement", "sample_offsets", "sample_placement"]

MAX_ROUNDS = 200  # rejection rounds of a truncated distribution before it is declared impossible


@dataclass
class Placement:
    """Per-image draws: ``offset`` float [n, 2] (dx right, dy down, in pixels) and ``scale`` [n]."""

    offset: np.ndarray
    scale: np.ndarray


def sample_offsets(p: PlacementConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` offsets [n, 2] from ``p.position``. The gaussian is truncated to a distance of at
    most ``max_offset_px`` from the centre (redrawn from ``rng`` until inside)."""
    if p.position == "gaussian":
        offset = rng.normal(0.0, p.sigma_px, (n, 2))
        limit = float(p.max_offset_px)
        for _ in range(MAX_ROUNDS):
            out = np.hypot(offset[:, 0], offset[:, 1]) > limit
            if not out.any():
                break
            offset[out] = rng.normal(0.0, p.sigma_px, (int(out.sum()), 2))
        else:  # sigma far above the limit: fall back to the limit's disc
            out = np.hypot(offset[:, 0], offset[:, 1]) > limit
            offset[out] *= limit / np.hypot(offset[out, 0], offset[out, 1])[:, None]
        return offset
    if p.position == "uniform":
        return rng.uniform(-p.max_offset_px, p.max_offset_px, (n, 2))
    if p.position == "ring":
        radius = rng.uniform(p.radius_px[0], p.radius_px[1], n)
        angle = rng.uniform(0.0, 2 * np.pi, n)
        return np.stack([radius * np.cos(angle), radius * np.sin(angle)], -1)
    if p.position == "center":
        return np.zeros((n, 2))
    raise ValueError(f"unknown placement position {p.position!r}")  # validated by the config


def sample_placement(p: PlacementConfig, n: int, rng: np.random.Generator) -> Placement:
    """Draw ``n`` placements: offsets from ``p.position``, scales log-uniform in ``p.scale``."""
    lo, hi = float(p.scale[0]), float(p.scale[1])
    scale = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    return Placement(offset=sample_offsets(p, n, rng), scale=scale)


@dataclass(frozen=True)
class FrameRule:
    """Where an object may sit so that it stays inside the ``window``-px model window when the
    content is shifted by up to ``shift`` px per axis or rescaled about the object's centre by up
    to ``scale``.

    An object whose box reaches ``lo`` px left of (above) its centre and ``hi`` px right of
    (below) it, at scale 1, may be centred at any offset in ``bounds(lo, hi)`` on that axis:
    ``[-W/2 + max(lo + shift, scale * lo), W/2 - max(hi + shift, scale * hi)]``.
    """

    window: int
    shift: float
    scale: float

    def bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half = self.window / 2
        low = -half + np.maximum(lo + self.shift, self.scale * lo)
        high = half - np.maximum(hi + self.shift, self.scale * hi)
        return low, high

    def inside(self, offset: np.ndarray, extents: np.ndarray) -> np.ndarray:
        """[n] bool: offsets [n, 2] (x, y) of objects with ``extents`` [n, 4] (left, right, up,
        down; px from the centre) keep them in frame."""
        ok = np.ones(len(offset), dtype=bool)
        for axis, (lo, hi) in enumerate(((0, 1), (2, 3))):
            low, high = self.bounds(extents[:, lo], extents[:, hi])
            ok &= (offset[:, axis] >= low - 1e-9) & (offset[:, axis] <= high + 1e-9)
        return ok
