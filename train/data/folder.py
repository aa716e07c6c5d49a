"""``folder``: an ImageFolder tree at ``data.root`` (ImageNet's layout works as is).

``root/train/<class>/*`` (+ optional ``root/val/<class>/*`` held out), or ``root/<class>/*``
split per class by a fixed permutation (a fifth held out); a held-out split may instead be a
folder of its own (``data.heldout.<split>.root``: ``root/<class>/*``, every image held out,
classes named like the training ones, :func:`heldout_folder`). Images are decoded on demand,
resized to fill a square (shorter side) and centre-cropped, then pasted as opaque rectangles,
or through their alpha channel where they have one. Every mode PIL reads becomes 8-bit RGB:
16-bit and 32-bit integer images are scaled from 16 bits (65535 -> 255), palette, grey and
CMYK images are converted. A file that cannot be decoded is a ``ConfigError`` naming it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from invlab.config import ConfigError, DataConfig
from train.data.registry import ObjectPool, Objects, Source, index_tensor, register_source

HELDOUT_FRACTION = 0.2


class FolderPool(ObjectPool):
    def __init__(self, samples: list[tuple[str, int]], size: int) -> None:
        self.paths = [s[0] for s in samples]
        self.labels = torch.as_tensor([s[1] for s in samples], dtype=torch.long)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def labels_of(self, indices: np.ndarray) -> Tensor:
        return self.labels[index_tensor(indices)]

    def take(self, indices: np.ndarray, size: int) -> Objects:
        """The images at ``indices``; alpha masks for the whole batch when any image has one
        (the opaque ones fully opaque), else None."""
        idx = index_tensor(indices)
        side = (self.size, self.size)
        decoded = [self.decode(i, side) for i in idx.tolist()]
        rgb = np.stack([d[0] for d in decoded]) if decoded else np.zeros((0, *side, 3), np.uint8)
        images = torch.as_tensor(rgb).permute(0, 3, 1, 2).contiguous()
        masks = None
        if any(alpha is not None for _, alpha in decoded):
            opaque = np.full(side, 255, np.uint8)
            alphas = np.stack([opaque if a is None else a for _, a in decoded])
            masks = torch.as_tensor(alphas)[:, None].contiguous()
        return Objects(images, masks, self.labels[idx], idx)

    def decode(self, i: int, side: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Instance ``i`` fitted to ``side`` (:func:`decode_image` of its file)."""
        return decode_image(self.paths[i], side)


_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def _rgba(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB, or RGBA when it has an alpha channel or a transparent colour."""
    if im.mode in _INTEGER_MODES:  # 16-bit PNG/TIFF grey: scale, never clip to white
        values = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
    has_alpha = "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info
    return im.convert("RGBA" if has_alpha else "RGB")


def decode_image(
    path: str | bytes | IO[bytes], side: tuple[int, int], name: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """An image fitted to ``side`` (shorter side resized, centre-cropped): uint8 RGB [h, w, 3]
    and its alpha [h, w] (None when it has none or is wholly opaque).

    ``path``: a file's path, or an image file's bytes or a binary file object (a tar member,
    ``name`` saying where it came from). Raises ``ConfigError`` with the name and the reason
    when the image cannot be decoded."""
    source: Any = io.BytesIO(path) if isinstance(path, (bytes, bytearray, memoryview)) else path
    name = name if name is not None else str(path) if isinstance(path, str) else "<bytes>"
    try:
        with Image.open(source) as im:
            im.load()
            fitted = ImageOps.fit(_rgba(im), side, Image.BILINEAR)  # premultiplied resize
    except (OSError, EOFError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise ConfigError(
            f"Cannot decode the image file {name}: {reason} ({type(err).__name__}). The file is "
            f"damaged, not an image or unreadable: replace it with a good copy, or remove it "
            f"from data.root."
        ) from None
    array = np.asarray(fitted)
    if array.shape[-1] == 3:
        return array, None
    alpha = np.ascontiguousarray(array[..., 3])
    return np.ascontiguousarray(array[..., :3]), None if alpha.min() == 255 else alpha


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


def decode_side(cfg: DataConfig) -> int:
    """The side images are fitted to when decoded: the model window plus the held-out margin,
    or (``data.render=false`` with ``data.crop_pct`` < 1) the side the centre crop is taken from."""
    side = int(cfg.image_size) + 2 * int(cfg.eval_margin_px)
    if not cfg.render and float(cfg.crop_pct) < 1:
        side = max(side, int(round(int(cfg.image_size) / float(cfg.crop_pct))))
    return side


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
    size = decode_side(cfg)
    return Source("folder", classes, FolderPool(train, size), FolderPool(held, size))


def heldout_folder(root: str, split: str, classes: list[str], size: int) -> FolderPool:
    """Every image of ``root/<class>/*`` as a held-out pool labelled by the training classes'
    indices (``classes``: the training source's class names); a class folder the training data
    does not have is refused, classes it lacks are simply not shown."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    where = f"data.heldout.{split}.root={root!r}"
    try:
        found, _ = find_classes(root)
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(
            f"No image folder at {where} ({err}). Expected {root}/<class>/*.png|jpg with the "
            f"training classes' names."
        ) from None
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise ConfigError(
            f"{where} has class folder(s) {', '.join(map(repr, unknown[:5]))} that the training "
            f"data does not have (its classes: {', '.join(classes[:10])}"
            f"{', ...' if len(classes) > 10 else ''}). Rename or remove them."
        )
    index = {c: classes.index(c) for c in found}
    samples = make_dataset(root, index, IMG_EXTENSIONS)
    if not samples:
        raise ConfigError(f"{where} holds no images (png, jpg, ...) in its class folders.")
    return FolderPool(samples, size)
