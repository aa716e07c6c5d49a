"""Rendered training data made per batch, on the training device: never a split in memory.

With ``data.render=true`` and ``data.stream`` taken (:func:`train.data.stream.plan_stream`), the
training split is a :class:`SplitRenderer`. Item ``index`` (a batch of split indices, in any
order) is the batch's *recipe*: the objects taken from the pool at the split's raster size, and
their placements and background draws from the renderer's keyed generators
(:func:`~train.data.render.draw_scene_at`), in the loader's workers. :class:`RenderBatches`
moves each recipe to the training device and pastes the objects there in one batched warp
(:func:`~train.data.render.composite`): the DataLoader carries object rasters and a few numbers
per image, memory holds a batch, and an image equals the one rendered ahead of time for the
same (seed, split, index), bit for bit on CPU (tested).

:class:`RenderedImages` presents the split to whatever reads training images (the typicality
reference, the augmentation grid) as a lazy uint8 ``[N, 3, S, S]`` rendered on the spot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from invlab.config import PlacementConfig
from train.data.device_loader import EpochBatches
from train.data.placement import FrameRule, Placement
from train.data.registry import ObjectPool, Objects
from train.data.render import Scene, composite, draw_scene_at, frame_error, raster_px

__all__ = ["RenderBatches", "RenderedImages", "SplitRenderer"]


class SplitRenderer(Dataset):
    """A rendered split of ``n`` images made on demand (what ``render_split`` with the same
    arguments renders ahead of time).

    ``self[index]`` is the recipe of images ``index`` (CPU tensors: ``images``, ``masks`` (or
    None), ``labels``, ``indices`` of the objects; ``offset``, ``scale``, ``background``);
    :meth:`paint` turns a recipe into uint8 images on a device; :meth:`render` does both.
    """

    def __init__(
        self,
        pool: ObjectPool,
        n: int,
        *,
        split: str,
        seed: int,
        placement: PlacementConfig,
        canvas: int,
        object_px: float,
        positions: np.ndarray | None = None,
        frame: FrameRule | None = None,
        cell_px: float | None = None,
    ) -> None:
        positions = np.arange(n) if positions is None else np.asarray(positions)
        if isinstance(placement, DictConfig):  # plain values: read for every block of a batch
            placement = OmegaConf.to_object(placement)
        self.pool, self.split, self.seed = pool, split, int(seed)
        self.placement, self.canvas, self.object_px = placement, int(canvas), float(object_px)
        self.frame, self.cell_px = frame, cell_px
        self.raster = raster_px(self.object_px, placement)
        self.classic = placement.appearance == "classic"
        self.positions = positions
        self.instances = np.asarray(pool.instances(positions, self.seed), dtype=np.int64)
        self.labels = pool.labels_of(self.instances)

    def __len__(self) -> int:
        return len(self.instances)

    def _scene_of(
        self, index: np.ndarray
    ) -> tuple[Objects, Placement, dict[str, Tensor], np.ndarray, np.ndarray]:
        objects = self.pool.take(self.instances[index], self.raster)
        place, bg, extents, redrawn = draw_scene_at(
            objects,
            index,
            split=self.split,
            seed=self.seed,
            placement=self.placement,
            canvas=self.canvas,
            object_px=self.object_px,
            frame=self.frame,
            cell_px=self.cell_px,
        )
        failed = int((redrawn < 0).sum())
        if failed:  # the in-memory path raises this when it renders the split
            assert self.frame is not None
            scene = Scene(self.positions[index], place.offset, place.scale, extents, redrawn)
            raise frame_error(
                self.split, failed, len(index), self.placement, self.frame, self.object_px, scene
            )
        return objects, place, bg, extents, redrawn

    def __getitem__(self, index: Sequence[int] | np.ndarray | Tensor) -> dict[str, Any]:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        objects, place, bg, _, _ = self._scene_of(index)
        return {
            "images": objects.images,
            "masks": objects.masks,
            "labels": objects.labels,
            "indices": objects.indices,
            "offset": torch.as_tensor(place.offset),
            "scale": torch.as_tensor(place.scale),
            "background": bg,
        }

    def paint(self, recipe: dict[str, Any], device: torch.device | str = "cpu") -> Tensor:
        """uint8 images [k, 3, S, S] of a recipe, pasted on ``device``."""

        def move(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device, non_blocking=True)

        objects = Objects(
            move(recipe["images"]), move(recipe["masks"]), recipe["labels"], recipe["indices"]
        )
        place = Placement(move(recipe["offset"]), move(recipe["scale"]))  # type: ignore[arg-type]
        bg = {k: move(v) for k, v in recipe["background"].items()}
        images = composite(
            objects, place, bg, self.canvas, self.object_px, self.raster, classic=self.classic
        )
        assert isinstance(images, Tensor)
        return images

    def render(self, index: Sequence[int] | np.ndarray | Tensor) -> Tensor:
        """uint8 images [k, 3, S, S] at split indices ``index``, on the CPU."""
        return self.paint(self[index])

    def scene(self, index: np.ndarray) -> Scene:
        """The :class:`Scene` of images ``index`` (instances, placements, extents)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        _, place, _, extents, redrawn = self._scene_of(index)
        return Scene(self.positions[index], place.offset, place.scale, extents, redrawn)


class RenderedImages:
    """A :class:`SplitRenderer`'s images as a lazy uint8 ``[N, 3, S, S]``: indexing (an int, a
    slice, a list or tensor of indices) renders them on the spot, on the CPU;
    ``batches(indices, size)`` yields ``images[indices]`` in chunks of ``size``."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, renderer: SplitRenderer) -> None:
        self.renderer = renderer

    def __len__(self) -> int:
        return len(self.renderer)

    @property
    def shape(self) -> torch.Size:
        side = self.renderer.canvas
        return torch.Size((len(self), 3, side, side))

    @property
    def nbytes(self) -> int:
        """What the split would take in memory (nothing is held)."""
        return len(self) * 3 * self.renderer.canvas**2

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, (int, np.integer)) or (isinstance(index, Tensor) and index.ndim == 0):
            return self[[int(index)]][0]
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        positions = np.atleast_1d(np.arange(len(self))[index])
        if positions.size == 0:
            return torch.empty(0, *self.shape[1:], dtype=torch.uint8)
        return self.renderer.render(positions)

    def batches(self, indices: Tensor, size: int) -> Iterator[Tensor]:
        """``images[indices]`` in chunks of ``size``, in order."""
        indices = torch.as_tensor(indices)
        for start in range(0, len(indices), int(size)):
            yield self[indices[start : start + int(size)]]

    def __repr__(self) -> str:
        return f"RenderedImages({tuple(self.shape)})"


class _IndexBatches(Sampler[list[int]]):
    """The index batches of an :class:`EpochBatches` (its current epoch), for a DataLoader."""

    def __init__(self, order: EpochBatches) -> None:
        self.order = order

    def __iter__(self) -> Iterator[list[int]]:
        idx, size = self.order.order(), self.order.batch_size
        for start in range(0, len(idx), size):
            yield idx[start : start + size].tolist()

    def __len__(self) -> int:
        return len(self.order)


class _Painted(Dataset):
    """Batches painted in the loader (its workers), on the CPU: ``(uint8 images, labels)``."""

    def __init__(self, renderer: SplitRenderer) -> None:
        self.renderer = renderer

    def __len__(self) -> int:
        return len(self.renderer)

    def __getitem__(self, index: Sequence[int]) -> tuple[Tensor, Tensor]:
        recipe = self.renderer[index]
        return self.renderer.paint(recipe), recipe["labels"]


class RenderBatches(EpochBatches):
    """Shuffled ``(uint8 images, labels)`` training batches rendered per batch, in the order of
    :class:`~train.data.device_loader.EpochBatches` (the batches of the in-memory paths).

    A DataLoader (``num_workers`` workers) prepares each batch's recipe; the objects are pasted
    on ``device`` (``paint_on_device``), or in the loader on the CPU and transferred as uint8.
    """

    def __init__(
        self,
        renderer: SplitRenderer,
        batch_size: int,
        seed: int,
        device: torch.device | str,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        paint_on_device: bool = True,
    ) -> None:
        super().__init__(len(renderer), batch_size, seed, rank, world_size)
        self.renderer = renderer
        self.device = torch.device(device)
        self.paint_on_device = paint_on_device
        self.loader = DataLoader(
            renderer if paint_on_device else _Painted(renderer),
            sampler=_IndexBatches(self),
            batch_size=None,  # the sampler gives whole batches; the dataset makes them at once
            num_workers=int(num_workers),
            persistent_workers=int(num_workers) > 0,
            pin_memory=self.device.type == "cuda",
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for item in self.loader:
            if not self.paint_on_device:
                yield item
                continue
            images = self.renderer.paint(item, self.device)
            yield images, item["labels"].to(self.device, non_blocking=True)
