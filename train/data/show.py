"""A picture of the data: sample rows of every split, held-out splits with their eval margin."""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torchvision.utils import make_grid

from invlab.figures import new_figure, save_figure
from train.data.datamodule import InvDataModule


def save_split_grid(dm: InvDataModule, path: str | Path, n: int = 10) -> Path:
    """One row per split (first ``n`` images, full rendering incl. margin), labelled, as a PNG.

    The model-input window of held-out images is outlined, so the margin that shift evaluation
    crops from is visible.
    """
    dm.setup()
    splits = [s for s in dm.split_names if len(dm.split(s).labels) > 0]
    size = max(dm.split(s).images.shape[-1] for s in splits)
    fig = new_figure(1.0 * n + 1.2, 1.15 * len(splits) + 0.4)
    axes = fig.subplots(len(splits), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, splits, strict=True):
        data = dm.split(name)
        images = data.images[:n]
        pad = (size - images.shape[-1]) // 2  # train renders without margin: centre it
        images = F.pad(images, (pad, pad, pad, pad), value=255)
        grid = make_grid(images, nrow=n, padding=2, pad_value=255)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        window = size - 2 * (pad + data.margin)
        for i, label in enumerate(data.labels[:n].tolist()):
            x0 = 2 + i * (size + 2)
            if data.margin:
                edge = x0 + pad + data.margin - 0.5
                ax.add_patch(
                    _rect(edge, 2 + pad + data.margin - 0.5, window, color="#ff7f0e", lw=0.8)
                )
            ax.text(x0 + size / 2, size + 3, dm.class_names[label], ha="center", va="top", size=7)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", size=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(
        "splits (orange box: model input; outside it, the margin used by shift evaluation)",
        size=9,
    )
    return save_figure(fig, path, vector=None)  # a grid of images: no vector copy


def _rect(x: float, y: float, side: float, color: str, lw: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), side, side, fill=False, edgecolor=color, linewidth=lw)
