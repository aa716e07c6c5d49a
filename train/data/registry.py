"""Object sources: a registry of loaders, each giving a train pool and a held-out pool.

A source is one function ``loader(cfg: DataConfig, seed: int) -> Source`` registered with
:func:`register_source`. Pools hand out :class:`Objects` (images, optional alpha masks, labels)
by instance index; the train and held-out pools of a source never share an instance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from invlab.config import DataConfig
from invlab.registry import Registry

__all__ = [
    "ArrayPool",
    "ObjectPool",
    "Objects",
    "Source",
    "build_source",
    "index_tensor",
    "list_sources",
    "register_source",
]


@dataclass
class Objects:
    """A batch of source objects.

    images: uint8 [N, 3, h, w]; masks: uint8 [N, 1, h, w] alpha (255 = opaque) or None for an
    opaque rectangle; labels: int64 [N]; indices: int64 [N], the instances' indices in their pool.
    """

    images: Tensor
    masks: Tensor | None
    labels: Tensor
    indices: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class ObjectPool:
    """Instances addressable by index. Subclasses implement ``__len__`` and ``take``."""

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, indices: np.ndarray, size: int) -> Objects:
        """The instances at ``indices``; ``size`` is the raster size the renderer will use
        (procedural pools draw at it, stored ones may ignore it)."""
        raise NotImplementedError

    def instances(self, positions: np.ndarray, seed: int) -> np.ndarray:
        """Instance indices for draw positions: a seeded permutation of the pool, cycled."""
        perm = np.random.default_rng([seed, 0x1A5]).permutation(len(self))
        return perm[np.asarray(positions) % len(self)]

    def labels_of(self, indices: np.ndarray) -> Tensor:
        """int64 labels of the instances at ``indices`` without their images where the pool can
        (this default takes the instances at 2 px, a chunk at a time)."""
        indices = np.asarray(indices, dtype=np.int64)
        chunks = [self.take(indices[i : i + 1024], 2).labels for i in range(0, len(indices), 1024)]
        return torch.cat(chunks).long() if chunks else torch.zeros(0, dtype=torch.long)


def index_tensor(indices: np.ndarray | Sequence[int]) -> Tensor:
    """int64 tensor of pool indices; a copy, so any numpy view works (torch cannot wrap one with
    negative strides, e.g. a reversed index)."""
    return torch.as_tensor(np.array(indices, dtype=np.int64))


class ArrayPool(ObjectPool):
    """A pool held in memory as uint8 arrays (every stored dataset).

    ``source_indices`` [N]: each instance's index in the whole source (reported in
    ``Objects.indices``); default: its index in the pool.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        masks: Tensor | None = None,
        source_indices: Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be uint8 [N, 1|3, h, w], got {images.dtype} {tuple(images.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.masks = masks
        self.source_indices = source_indices

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray, size: int) -> Objects:
        idx = index_tensor(indices)
        images = self.images[idx]
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        masks = None if self.masks is None else self.masks[idx]
        provenance = idx if self.source_indices is None else self.source_indices[idx]
        return Objects(images.contiguous(), masks, self.labels[idx], provenance)

    def labels_of(self, indices: np.ndarray) -> Tensor:
        return self.labels[index_tensor(indices)]


@dataclass
class Source:
    name: str
    class_names: list[str]
    train: ObjectPool
    heldout: ObjectPool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


SourceLoader = Callable[[DataConfig, int], Source]
SOURCES: Registry[SourceLoader] = Registry("data source")


def register_source(name: str, *, override: bool = False) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator: ``@register_source("mydata") def load(cfg: DataConfig, seed: int) -> Source``.

    Names follow :class:`train.registry.Registry` (duplicates refused unless ``override=True``).
    """
    return SOURCES.register(name, override=override)


def list_sources() -> list[str]:
    """Names of the registered sources, sorted."""
    return SOURCES.names()


def build_source(name: str, cfg: DataConfig, seed: int) -> Source:
    """Load a registered source by name (``data.source`` / ``data.heldout.<split>.source``)."""
    return SOURCES.get(name, "data.source")(cfg, seed)
