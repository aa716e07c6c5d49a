"""Training batches sliced on the device from the whole uint8 split: no DataLoader.

For the small datasets of invariance studies (thousands to ~100k images of 32 px) a DataLoader's
per-sample indexing and collation, not the accelerator, limit the step rate. Here the split is
moved to the training device once and each batch is one ``index_select`` of the epoch's
permutation: the permutation :class:`EpochSeededSampler` gives the DataLoader path, so both paths
yield identical batches for a (seed, epoch), also after a resume (Lightning calls ``set_epoch``
on ``.sampler`` of any training iterable). torch's DataLoader has no such mode, hence this class.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from train.data.sampler import EpochSeededSampler

__all__ = ["MEMORY_FRACTION", "DeviceBatches", "EpochBatches", "free_memory", "use_on_device"]

# `data.on_device=auto` keeps the split on an accelerator when it takes less than this share of
# the device's free memory (the rest is for the model, activations and evaluation).
MEMORY_FRACTION = 0.25


def free_memory(device: torch.device) -> int | None:
    """Free bytes on an accelerator as torch reports them (None where it cannot)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return None


def use_on_device(setting: str, nbytes: int, device: torch.device) -> bool:
    """Whether training batches come from the device-resident split (``data.on_device``).

    ``true``/``false``: as set. ``auto``: on CPU always (the split already lives in host memory,
    so this costs no memory and only skips per-sample collation); on an accelerator when the
    split's ``nbytes`` are below ``MEMORY_FRACTION`` of its free memory, else (and where torch
    cannot report free memory) the DataLoader path with pinned memory. ``data.num_workers``
    applies to the DataLoader path only.
    """
    if setting in ("true", "false"):
        return setting == "true"
    if device.type == "cpu":
        return True
    free = free_memory(device)
    return free is not None and nbytes < MEMORY_FRACTION * free


class EpochBatches:
    """The shuffled index batches of a split of ``n`` images for one rank, by (seed, epoch).

    Batch ``k`` of epoch ``e`` holds positions ``[k * batch_size, (k + 1) * batch_size)`` of
    ``EpochSeededSampler(n, seed).order()`` at epoch ``e`` (the last batch may be short), as the
    DataLoader path. With ``world_size > 1`` each rank takes every ``world_size``-th index from
    ``rank`` of the order padded to a multiple of ``world_size`` (``DistributedSampler``'s
    sharding), so ranks see disjoint, equally many images. Lightning calls ``set_epoch`` on
    ``.sampler``.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}.")
        self.batch_size = int(batch_size)
        self.sampler = EpochSeededSampler(int(n), int(seed), shuffle=True)
        self.rank, self.world_size = rank, world_size

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch."""
        return math.ceil(self.sampler.num_samples / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def order(self) -> Tensor:
        """This rank's indices for the current epoch (int64, CPU)."""
        order = self.sampler.order()
        if self.world_size > 1:
            total = self.num_samples * self.world_size
            order = torch.cat([order, order[: total - len(order)]])[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)


class DeviceBatches(EpochBatches):
    """Shuffled ``(uint8 images, labels)`` batches of a split held on ``device``, in the order of
    :class:`EpochBatches`."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int,
        device: torch.device | str,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(len(labels), batch_size, seed, rank, world_size)
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)

    def indices(self) -> Tensor:
        """This rank's indices for the current epoch, on the device."""
        return self.order().to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self.indices()
        for start in range(0, len(idx), self.batch_size):
            i = idx[start : start + self.batch_size]
            yield self.images.index_select(0, i), self.labels.index_select(0, i)
