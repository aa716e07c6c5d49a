"""Sample grids of augmented images: originals in the first row, augmented draws below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from invlab.figures import new_figure, save_figure


def grid_image(
    images_uint8: Tensor, augmenter: nn.Module, n: int = 8, rows_aug: int = 3
) -> np.ndarray:
    """HWC uint8 grid: the first ``n`` images, then ``rows_aug`` rows of augmented draws of them.

    The augmenter's seed stream is restored afterwards, so showing a grid does not change the
    augmentations a training run then draws.
    """
    originals = images_uint8[:n]
    x = originals.float() / 255
    state = augmenter.get_rng_state() if hasattr(augmenter, "get_rng_state") else None
    with torch.no_grad():
        rows = [augmenter(x) for _ in range(rows_aug)]
    if state is not None:
        augmenter.set_rng_state(state)
    augmented = [(r.clamp(0, 1) * 255).round().to(torch.uint8) for r in rows]
    grid = make_grid(torch.cat([originals, *augmented]).cpu(), nrow=len(originals), pad_value=255)
    return grid.permute(1, 2, 0).numpy().copy()


def save_grid(images_uint8: Tensor, augmenter: nn.Module, path: str | Path, n: int = 8) -> Path:
    """Write ``grid_image`` as a PNG titled with the augmenter's presets/ops."""
    grid = grid_image(images_uint8, augmenter, n=n)
    names = " + ".join(getattr(augmenter, "names", [])) or "none"
    height, width = grid.shape[:2]
    fig = new_figure(max(width / 40, 4), height / 40 + 0.6)
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_title(f"augment: {names} (top row: originals)", fontsize=9)
    ax.axis("off")
    return save_figure(fig, path, vector=None)  # a grid of images: no vector copy
