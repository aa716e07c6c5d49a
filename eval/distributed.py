"""Sharding images across ranks and gathering per-image values back in the original order.

Rank ``r`` of ``world`` evaluates images ``r::world``. A *gather* is a callable that takes a
rank's per-image tensor ``[n_r, ...]`` and returns every rank's tensors concatenated in rank
order; it exposes ``rank`` and ``world_size`` (plain callables fall back to ``torch.distributed``).
Per-image values are gathered before any averaging or bootstrap, so the numbers equal a
single-process run: :func:`gather_values` packs all of a rank's values with their original image
indices into one tensor (one collective per split) and puts every row back at its index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

GatherFn = Callable[[Tensor], Tensor]


def rank_and_world(gather: GatherFn | None) -> tuple[int, int]:
    if gather is None:
        return 0, 1
    if hasattr(gather, "rank") and hasattr(gather, "world_size"):
        return int(gather.rank), int(gather.world_size)  # type: ignore[attr-defined]
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world: int) -> Tensor:
    return torch.arange(rank, n, world)


def gather_values(values: dict[str, Tensor], index: Tensor, gather: GatherFn, n: int) -> dict:
    """All-gather per-image ``values`` (each ``[n_r, ...]``) of the images ``index`` ``[n_r]``.

    Returns every key as ``[n, ...]`` in original image order, whatever order the gather
    concatenates ranks in. Values travel as float64, exact for float32 and integer values.
    """
    keys = list(values)
    flat = [values[k].reshape(len(index), -1) for k in keys]
    packed = torch.cat(
        [index.to(flat[0].device, torch.float64)[:, None]] + [f.double() for f in flat], 1
    )
    gathered = gather(packed).cpu()
    order = gathered[:, 0].long()
    if gathered.shape[0] != n or not torch.equal(order.sort().values, torch.arange(n)):
        raise RuntimeError(
            f"gather returned rows for images {order.tolist()}, expected each of 0..{n - 1} once."
        )
    rows = torch.empty_like(gathered[:, 1:])
    rows[order] = gathered[:, 1:]
    out, start = {}, 0
    for key, f in zip(keys, flat, strict=True):
        width = f.shape[1]
        block = rows[:, start : start + width].to(values[key].dtype)
        out[key] = block.reshape(n, *values[key].shape[1:])
        start += width
    return out


class LightningGather:
    """Gather through a LightningModule's strategy (``all_gather``), padding uneven shards."""

    def __init__(self, pl_module: Any) -> None:
        self.module = pl_module
        self.rank = int(pl_module.trainer.global_rank)
        self.world_size = int(pl_module.trainer.world_size)

    def __call__(self, values: Tensor) -> Tensor:
        if self.world_size == 1:
            return values
        device = self.module.device
        size = torch.tensor([values.shape[0]], device=device)
        sizes = self.module.all_gather(size).flatten().tolist()
        padded = values.new_zeros((max(sizes), *values.shape[1:])).to(device)
        padded[: values.shape[0]] = values.to(device)
        everything = self.module.all_gather(padded)  # [world, max_n, ...]
        return torch.cat([everything[r, : sizes[r]] for r in range(self.world_size)])
