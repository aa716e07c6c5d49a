"""Base class of our own random ops: they draw from an explicit generator, not the global RNG."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SeededOp(nn.Module):
    """A random op whose ``forward(x, generator)`` draws only from ``generator`` (on x's device).

    ``Augmenter`` passes a generator on the batch's device, seeded from its own stream.
    """

    same_on_batch: bool = False

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def uniform(
        self, x: Tensor, shape: tuple[int, ...], generator: torch.Generator | None
    ) -> Tensor:
        """Uniform [0, 1) draws of ``shape`` per sample ([B, *shape]), shared if same_on_batch."""
        n = 1 if self.same_on_batch else x.shape[0]
        u = torch.rand((n, *shape), device=x.device, dtype=x.dtype, generator=generator)
        return u.expand(x.shape[0], *shape)
