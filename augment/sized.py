"""Kornia ops whose arguments depend on the image size, built lazily for each input size."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class PerSize(nn.Module):
    """Build ``factory((H, W))`` on the first batch of each size and reuse it.

    kornia takes crop sizes and translations as absolute sizes or fractions of the image at
    construction time; the config speaks in pixels and does not know the image size. The built
    modules are cached outside ``_modules`` so they never enter the state dict.
    """

    def __init__(self, factory: Callable[[tuple[int, int]], nn.Module], name: str) -> None:
        super().__init__()
        self.factory = factory
        self.name = name
        self._built: dict[tuple[tuple[int, int], torch.device], nn.Module] = {}

    def op_for(self, x: Tensor) -> nn.Module:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        key = (size, x.device)
        op = self._built.get(key)
        if op is None:  # .to() also moves kornia's parameter sampling to the batch's device
            op = self._built[key] = self.factory(size).to(x.device)
        return op

    def forward(self, x: Tensor) -> Tensor:
        return self.op_for(x)(x)

    def extra_repr(self) -> str:
        return self.name
