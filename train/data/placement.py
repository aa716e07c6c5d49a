"""Placement distributions: per-image object offset (pixels from the window centre) and scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.config import PlacementConfig

__all__ = ["Placement", "sample_placement"]


@dataclass
class Placement:
    """Per-image draws: ``offset`` float [n, 2] (dx right, dy down, in pixels) and ``scale`` [n]."""

    offset: np.ndarray
    scale: np.ndarray


def sample_placement(p: PlacementConfig, n: int, rng: np.random.Generator) -> Placement:
    """Draw ``n`` placements: offsets from ``p.position``, scales log-uniform in ``p.scale``."""
    lo, hi = float(p.scale[0]), float(p.scale[1])
    scale = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    if p.position == "gaussian":
        offset = rng.normal(0.0, p.sigma_px, (n, 2))
    elif p.position == "uniform":
        offset = rng.uniform(-p.max_offset_px, p.max_offset_px, (n, 2))
    elif p.position == "ring":
        radius = rng.uniform(p.radius_px[0], p.radius_px[1], n)
        angle = rng.uniform(0.0, 2 * np.pi, n)
        offset = np.stack([radius * np.cos(angle), radius * np.sin(angle)], -1)
    elif p.position == "center":
        offset = np.zeros((n, 2))
    else:  # validated by the config's CHOICES
        raise ValueError(f"unknown placement position {p.position!r}")
    return Placement(offset=offset, scale=scale)
