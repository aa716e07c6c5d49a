"""``folder``: an ImageFolder tree at ``data.root`` (ImageNet's layout works as is).

``root/train/<class>/*`` (+ optional ``root/val/<class>/*`` held out), or ``root/<class>/*``
split per class by a fixed permutation (a fifth held out). Images are decoded on demand,
resized to fill a square (shorter side) and centre-cropped, then pasted as opaque rectangles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from invlab.config import ConfigError, DataConfig
from train.data.registry import ObjectPool, Objects, Source, register_source

HELDOUT_FRACTION = 0.2


class FolderPool(ObjectPool):
    def __init__(self, samples: list[tuple[str, int]], size: int) -> None:
        self.paths = [s[0] for s in samples]
        self.labels = torch.as_tensor([s[1] for s in samples], dtype=torch.long)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, indices: np.ndarray, size: int) -> Objects:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        side = (self.size, self.size)
        arrays = []
        for i in idx.tolist():
            with Image.open(self.paths[i]) as im:
                arrays.append(np.asarray(ImageOps.fit(im.convert("RGB"), side, Image.BILINEAR)))
        images = torch.as_tensor(np.stack(arrays) if arrays else np.zeros((0, *side, 3), np.uint8))
        return Objects(images.permute(0, 3, 1, 2).contiguous(), None, self.labels[idx], idx)


def _held_out_split(samples: list[tuple[str, int]]) -> tuple[list, list]:
    """Per class, a fixed fifth of the files (at least one when a class has two) is held out."""
    train, held = [], []
    labels = np.array([s[1] for s in samples])
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        perm = np.random.default_rng([0xF01D, int(k)]).permutation(members)
        n_held = int(round(len(perm) * HELDOUT_FRACTION)) or int(len(perm) > 1)
        held += [samples[i] for i in sorted(perm[:n_held])]
        train += [samples[i] for i in sorted(perm[n_held:])]
    return train, held


@register_source("folder")
def load_folder(cfg: DataConfig, seed: int) -> Source:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(cfg.root)
    layout = (
        f"Expected an ImageFolder tree: {root}/train/<class>/*.png|jpg (and optionally "
        f"{root}/val/<class>/...), or {root}/<class>/*.png|jpg. Set data.root to it."
    )
    train_dir = root / "train" if (root / "train").is_dir() else root
    try:
        classes, class_to_idx = find_classes(str(train_dir))
        train = make_dataset(str(train_dir), class_to_idx, IMG_EXTENSIONS)
        if train_dir != root and (root / "val").is_dir():
            held = make_dataset(str(root / "val"), class_to_idx, IMG_EXTENSIONS)
        else:
            train, held = _held_out_split(train)
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(f"No image folder at data.root={cfg.root!r} ({err}). {layout}") from None
    if not train or not held:
        raise ConfigError(
            f"The image folder at data.root={cfg.root!r} needs training and held-out images "
            f"(found {len(train)} and {len(held)}). {layout}"
        )
    size = cfg.image_size + 2 * cfg.eval_margin_px
    return Source("folder", classes, FolderPool(train, size), FolderPool(held, size))
