"""A shuffling sampler whose order is a pure function of (seed, epoch).

torch's ``RandomSampler`` advances one generator across epochs, so a run resumed from an epoch
checkpoint would replay epoch 0's order. Lightning calls ``set_epoch`` on any sampler that has
it, so this one makes a resumed run see exactly the batches of an uninterrupted one. (Under DDP,
Lightning swaps in a ``DistributedSampler``, which is also seeded by epoch.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> Tensor:
        """This epoch's indices as an int64 CPU tensor (what iterating yields)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.num_samples
