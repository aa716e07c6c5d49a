"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 real images, no download).

Upsampled bilinearly to 32 px; the stroke intensity is the alpha mask, the stroke colour is
random. A fixed permutation holds out a third of the images: those are never rendered in train.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from invlab.config import DataConfig
from train.data.colorize import stroke_objects
from train.data.registry import ArrayPool, Source, register_source

NATIVE_PX = 32
HELDOUT_FRACTION = 1 / 3


def digit_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (seed-independent) disjoint train / held-out indices into the 1797 digits."""
    perm = np.random.default_rng(0xD161).permutation(n)
    n_held = round(n * HELDOUT_FRACTION)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


@register_source("digits")
def load_digits(cfg: DataConfig, seed: int) -> Source:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8]
    x = F.interpolate(x, size=(NATIVE_PX, NATIVE_PX), mode="bilinear", align_corners=False)
    intensity = (x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)
    images, masks = stroke_objects(intensity, seed)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    train_idx, held_idx = (torch.as_tensor(i) for i in digit_split(len(labels)))
    pools = [
        ArrayPool(images[i], labels[i], masks[i], source_indices=i) for i in (train_idx, held_idx)
    ]
    return Source("digits", [str(d) for d in range(10)], pools[0], pools[1])
