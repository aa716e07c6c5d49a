"""torchvision datasets as object sources: the train set for training, the test set held out.

Files are read from ``data.root`` in torchvision's own on-disk layout and downloaded there only
when ``data.download`` is true. MNIST-style datasets paste their strokes (intensity = alpha);
the others paste their whole image as an opaque rectangle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invlab.config import ConfigError, DataConfig
from train.data.colorize import stroke_objects
from train.data.registry import ArrayPool, Source, register_source

__all__ = ["TORCHVISION_SOURCES"]


def _layout(name: str, root: Path) -> str:
    return {
        "mnist": f"{root / 'MNIST' / 'raw'} (train/t10k-images-idx3-ubyte, -labels-idx1-ubyte)",
        "fashion_mnist": f"{root / 'FashionMNIST' / 'raw'} (train/t10k-*-ubyte files)",
        "cifar10": f"{root / 'cifar-10-batches-py'} (data_batch_1..5, test_batch, batches.meta)",
        "cifar100": f"{root / 'cifar-100-python'} (train, test, meta)",
        "svhn": f"{root} (train_32x32.mat, test_32x32.mat)",
        "stl10": f"{root / 'stl10_binary'} (train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
        "class_names.txt)",
    }[name]


def _open(name: str, cfg: DataConfig, make: Callable[[bool], Any]) -> tuple[Any, Any]:
    """(train set, test set) or a ConfigError that says where the files must be."""
    try:
        return make(True), make(False)
    except Exception as err:  # torchvision raises RuntimeError, urllib URLError/OSError, ...
        root = Path(cfg.root).resolve()
        tried = (
            f"Downloading failed ({type(err).__name__}: {err})."
            if cfg.download
            else "data.download is false."
        )
        raise ConfigError(
            f"Dataset '{name}' not found in data.root={cfg.root!r}. {tried} The files must be in "
            f"{_layout(name, root)}. Either set data.download=true on a machine with network "
            f"access, or copy the dataset into {root} in torchvision's layout."
        ) from None


def _hwc(data: Any) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(np.asarray(data).transpose(0, 3, 1, 2)))


def _chw(data: Any) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(np.asarray(data)))


def _strokes(ds: Any, seed: int, stream: int) -> ArrayPool:
    images, masks = stroke_objects(torch.as_tensor(ds.data), seed, stream)
    return ArrayPool(images, torch.as_tensor(ds.targets), masks)


def _mnist_like(name: str, cls_name: str) -> Callable[[DataConfig, int], Source]:
    def load(cfg: DataConfig, seed: int) -> Source:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        train, test = _open(name, cfg, lambda t: cls(cfg.root, train=t, download=cfg.download))
        names = [str(c).split(" - ")[-1] if name == "mnist" else str(c) for c in train.classes]
        return Source(name, names, _strokes(train, seed, 0), _strokes(test, seed, 1))

    return load


def _cifar(name: str, cls_name: str) -> Callable[[DataConfig, int], Source]:
    def load(cfg: DataConfig, seed: int) -> Source:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        train, test = _open(name, cfg, lambda t: cls(cfg.root, train=t, download=cfg.download))
        pools = [ArrayPool(_hwc(d.data), torch.as_tensor(d.targets)) for d in (train, test)]
        return Source(name, list(train.classes), pools[0], pools[1])

    return load


def _split_dataset(
    name: str, cls_name: str, classes: list[str] | None
) -> Callable[[DataConfig, int], Source]:
    def load(cfg: DataConfig, seed: int) -> Source:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)

        def make(is_train: bool) -> Any:
            split = "train" if is_train else "test"
            return cls(cfg.root, split=split, download=cfg.download)

        train, test = _open(name, cfg, make)
        pools = [ArrayPool(_chw(d.data), torch.as_tensor(d.labels)) for d in (train, test)]
        names = list(getattr(train, "classes", None) or classes or [])
        return Source(name, names, pools[0], pools[1])

    return load


TORCHVISION_SOURCES = {
    "mnist": _mnist_like("mnist", "MNIST"),
    "fashion_mnist": _mnist_like("fashion_mnist", "FashionMNIST"),
    "cifar10": _cifar("cifar10", "CIFAR10"),
    "cifar100": _cifar("cifar100", "CIFAR100"),
    "svhn": _split_dataset("svhn", "SVHN", [str(d) for d in range(10)]),
    "stl10": _split_dataset("stl10", "STL10", None),
}
for _name, _loader in TORCHVISION_SOURCES.items():
    register_source(_name)(_loader)
