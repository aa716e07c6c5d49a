"""Streaming splits: images decoded one at a time, in DataLoader workers, never a split in memory.

For ``data.render=false`` (source images taken as they are, e.g. an ImageNet-layout folder) a
split is a map-style :class:`StreamSplit`: item ``i`` is decoded from its file when asked, through
the very function the in-memory path fills its tensors with (``render.resize_split`` over the
source's pool), so every pixel equals the in-memory one. Only the labels and instance indices
(8 bytes each per image) and the pool's file list live in memory.

:class:`StreamImages` presents a split's images to the evaluation as a lazy uint8
``[N, 3, H, W]``: ``len``, ``shape``, small slices decoded on the spot, and ``batches(indices,
size)``, chunks decoded by DataLoader workers, so peak memory is a few chunks whatever N.

The choice between the paths (``data.stream``: ``auto`` | ``true`` | ``false``) is
:func:`use_stream`: ``auto`` streams when the in-memory splits would take more than
:func:`memory_limit` bytes. For ``data.render=true`` streaming means the training split rendered
per batch on the training device (:mod:`train.data.render_batches`); :func:`plan_stream` decides
and words both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from invlab.config import ConfigError
from invlab.imageops import center_crop
from train.data.registry import ArrayPool, ObjectPool, Objects
from train.data.render import resize_split

__all__ = [
    "FALLBACK_LIMIT",
    "RAM_FRACTION",
    "StreamImages",
    "StreamSplit",
    "memory_limit",
    "plan_stream",
    "split_bytes",
    "stream_split",
    "streamable",
    "use_stream",
]

# `data.stream=auto` streams when the in-memory splits would take more than this share of the
# available RAM (psutil), or more than FALLBACK_LIMIT bytes where psutil is not installed.
RAM_FRACTION = 0.25
FALLBACK_LIMIT = 2 << 30


def split_bytes(n: int, size: int) -> int:
    """Bytes of ``n`` uint8 RGB images of ``size`` x ``size`` px held in memory."""
    return int(n) * 3 * int(size) * int(size)


def memory_limit() -> int:
    """Bytes the in-memory path may use: ``RAM_FRACTION`` of the available RAM (psutil), else
    ``FALLBACK_LIMIT``."""
    try:
        import psutil
    except ImportError:
        return FALLBACK_LIMIT
    return int(RAM_FRACTION * psutil.virtual_memory().available)


def use_stream(setting: str, nbytes: int, limit: int | None = None) -> bool:
    """Whether splits of ``nbytes`` in memory are streamed instead (``data.stream``).

    ``true``/``false``: as set; ``auto``: when ``nbytes`` exceeds ``limit`` (default
    :func:`memory_limit`)."""
    setting = str(setting).lower()
    if setting in ("true", "false"):
        return setting == "true"
    if setting != "auto":
        raise ConfigError(f"Invalid data.stream={setting!r}; choose one of auto, true, false.")
    return nbytes > (memory_limit() if limit is None else limit)


def streamable(pool: ObjectPool) -> bool:
    """A pool decoded on demand that knows its labels without decoding (the ``folder`` and
    ``shards`` sources); a pool already held in memory (:class:`ArrayPool`) gains nothing from
    streaming."""
    return isinstance(getattr(pool, "labels", None), Tensor) and not isinstance(pool, ArrayPool)


class _Instances(ObjectPool):
    """``pool`` with the draw-position -> instance map fixed (computed once for the split)."""

    def __init__(self, pool: ObjectPool, instances: np.ndarray) -> None:
        self.pool, self.map = pool, instances

    def __len__(self) -> int:
        return len(self.pool)

    def instances(self, positions: np.ndarray, seed: int) -> np.ndarray:
        return self.map[np.asarray(positions)]

    def take(self, indices: np.ndarray, size: int) -> Objects:
        return self.pool.take(indices, size)


class StreamSplit(Dataset):
    """Map-style split of ``data.render=false``: item ``i`` -> (uint8 [3, s, s], label).

    ``positions`` are the split's draw positions in ``pool`` (as the in-memory path gets them);
    images are ``size`` px (source images fitted, then resized as ``resize_split`` does), and
    centre-cropped to ``window`` px when given (the model-input window of a margin split).
    """

    def __init__(
        self,
        pool: ObjectPool,
        positions: np.ndarray,
        *,
        seed: int,
        size: int,
        window: int | None = None,
        fit: int | None = None,
    ) -> None:
        if not streamable(pool):
            raise ConfigError(
                f"{type(pool).__name__} cannot be streamed: it holds its images in memory or "
                f"does not know its labels without decoding. Set data.stream=false."
            )
        instances = np.asarray(pool.instances(np.asarray(positions), seed), dtype=np.int64)
        self._pool = _Instances(pool, instances)
        self.seed, self.size, self.window, self.fit = int(seed), int(size), window, fit
        self.indices = torch.as_tensor(instances)
        self.labels = pool.labels[self.indices]  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def side(self) -> int:
        """The side of the images this dataset gives."""
        return self.size if self.window is None else int(self.window)

    def decode(self, positions: np.ndarray) -> Tensor:
        """uint8 [k, 3, side, side] of the images at ``positions`` of the split."""
        images, _, _ = resize_split(
            self._pool,
            len(positions),
            seed=self.seed,
            size=self.size,
            positions=positions,
            fit=self.fit,
        )
        return images if self.window is None else center_crop(images, self.window).contiguous()

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.decode(np.array([int(i)]))[0], int(self.labels[i])

    def with_window(self, window: int | None) -> StreamSplit:
        """The same split giving ``window``-px centre crops (None: whole images)."""
        other = object.__new__(StreamSplit)
        other.__dict__.update(self.__dict__)
        other.window = None if window is None or window == self.size else int(window)
        return other


class StreamImages:
    """A :class:`StreamSplit`'s images as a lazy uint8 ``[N, 3, H, W]`` for the evaluation.

    Indexing (an int, a slice, a list or tensor of indices) decodes in this process: for a few
    images. ``batches(indices, size)`` yields ``images[indices]`` in chunks of ``size`` decoded by
    ``num_workers`` DataLoader workers (prefetching two chunks each).
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, dataset: StreamSplit, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.num_workers = int(num_workers)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> torch.Size:
        side = self.dataset.side
        return torch.Size((len(self), 3, side, side))

    @property
    def nbytes(self) -> int:
        """What the split would take in memory (nothing is held)."""
        return split_bytes(len(self), self.dataset.side)

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, (int, np.integer)) or (isinstance(index, Tensor) and index.ndim == 0):
            return self[[int(index)]][0]
        positions = np.arange(len(self))[_as_index(index)]
        if positions.size == 0:
            side = self.dataset.side
            return torch.empty(0, 3, side, side, dtype=torch.uint8)
        return self.dataset.decode(np.atleast_1d(positions))

    def batches(self, indices: Tensor, size: int) -> Iterator[Tensor]:
        """``images[indices]`` in chunks of ``size``, decoded by the workers, in order."""
        subset = Subset(self.dataset, torch.as_tensor(indices).tolist())
        workers = self.num_workers if len(subset) > size else 0
        loader = DataLoader(subset, batch_size=int(size), shuffle=False, num_workers=workers)
        for images, _ in loader:
            yield images

    def __repr__(self) -> str:
        return f"StreamImages({tuple(self.shape)}, {self.num_workers} workers)"


def _as_index(index: Any) -> Any:
    if isinstance(index, Tensor):
        return index.cpu().numpy()
    return index


def stream_split(
    pool: ObjectPool,
    positions: np.ndarray,
    *,
    seed: int,
    size: int,
    num_workers: int,
    fit: int | None = None,
) -> tuple[StreamImages, Tensor, Tensor]:
    """A split's (lazy images, labels, instance indices): what the in-memory path's
    ``resize_split(pool, n, seed=seed, size=size, positions=positions, fit=fit)`` gives,
    decoded later."""
    dataset = StreamSplit(pool, positions, seed=seed, size=size, fit=fit)
    return StreamImages(dataset, num_workers), dataset.labels, dataset.indices


def plan_stream(dm: Any, limit: int | None = None) -> tuple[bool, str]:
    """Whether the splits of datamodule ``dm`` are streamed (``data.stream``), and the sentence
    for the run's notes.

    ``data.render=false``: splits of pools decoded on demand (:func:`streamable`) are decoded by
    workers when a batch needs them. ``data.render=true``: the training split is rendered per
    batch on the training device (:mod:`train.data.render_batches`); the held-out splits stay
    rendered in memory. ``auto`` streams when all splits in memory would exceed ``limit``
    (default :func:`memory_limit`) bytes. ``true`` where nothing can stream is a
    ``ConfigError``.
    """
    d = dm.cfg.data
    setting = str(getattr(d, "stream", "auto")).lower()
    names = list(dm.split_names)
    sizes = {s: int(dm.size(s)) for s in names}
    nbytes = sum(split_bytes(n, int(d.image_size) + 2 * dm.margin(s)) for s, n in sizes.items())
    if d.render:
        able = ["train"]
    else:
        pools = {s: dm.source.train if s == "train" else dm.source_of(s).heldout for s in names}
        able = [s for s in names if streamable(pools[s])]
    if setting == "true" and not able:
        raise ConfigError(
            f"data.stream=true, but data.source={d.source!r} holds its images in memory "
            f"(streaming reads the files of the 'folder' and 'shards' sources); set "
            f"data.stream=auto."
        )
    streaming = bool(able) and use_stream(setting, nbytes, limit)
    size = f"{nbytes / 2**20:.0f} MiB as uint8"
    if not streaming:
        total = sum(sizes.values())
        return False, f"Data: {total} images in memory ({size}; data.stream={setting})."
    n = sum(sizes[s] for s in able)
    kept = [s for s in names if s not in able]
    if d.render:
        rendered = [s for s in kept if sizes[s]]
        rest = f"; {', '.join(rendered)} rendered in memory" if rendered else ""
        where = (
            "on the CPU in the DataLoader (data.on_device=false)"
            if str(getattr(d, "on_device", "auto")) == "false"
            else "on the training device"
        )
        return True, (
            f"Data: rendering the {n} training images per batch {where} (in memory the splits "
            f"would take {size}; data.stream={setting}{rest})."
        )
    also = f"; {', '.join(kept)} in memory" if kept else ""
    workers = int(d.num_workers)
    where = f"in {workers} workers" if workers else "in the main process (data.num_workers=0)"
    return True, (
        f"Data: streaming {n} images from {d.root} {where} "
        f"(in memory they would take {size}; data.stream={setting}{also})."
    )
