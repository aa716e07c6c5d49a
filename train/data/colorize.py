"""Stroke colours for intensity-only sources (digits, MNIST): the class never sets the colour."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV -> RGB in [0, 1], vectorised: three [n] arrays -> [n, 3]."""
    k = (np.array([5.0, 3.0, 1.0])[None] + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def stroke_objects(intensity: Tensor, seed: int, stream: int = 0) -> tuple[Tensor, Tensor]:
    """uint8 intensities [N, h, w] -> (flat-colour images [N, 3, h, w], alpha masks [N, 1, h, w]).

    Colour ``i`` is a fixed function of (seed, stream, i): random hue, saturation and value.
    """
    n = intensity.shape[0]
    rng = np.random.default_rng([seed, 0xC010, stream])
    rgb = hsv_to_rgb(rng.random(n), rng.uniform(0.0, 1.0, n), rng.uniform(0.3, 1.0, n))
    colour = torch.as_tensor(rgb * 255, dtype=torch.float32).round().to(torch.uint8)
    h, w = intensity.shape[-2:]
    images = colour[:, :, None, None].expand(n, 3, h, w)
    return images, intensity[:, None]
