"""RandAugment / TrivialAugment with the operations chosen per sample."""

from __future__ import annotations

from typing import cast

import torch
from kornia.augmentation.auto import RandAugment, TrivialAugment
from kornia.augmentation.auto.base import PolicyAugmentBase
from kornia.augmentation.auto.operations import OperationBase
from torch import Tensor, nn


class PerSamplePolicy(nn.Module):
    """Apply ``num_ops`` operations of a kornia auto policy, chosen independently per image.

    kornia's ``RandAugment``/``TrivialAugment`` choose the operations once per batch (only
    magnitudes vary per sample); torchvision and the papers choose per image. Here each image
    draws its own ``num_ops`` distinct operations; each operation then runs once per stage on the
    images that chose it, so a batch costs at most ``num_ops * len(policy)`` kornia calls.

    ``magnitude`` (0..30, RandAugment's ``m``) fixes every operation's strength; ``None`` draws
    it uniformly per image over the operation's range (TrivialAugment).
    """

    def __init__(
        self,
        policy: PolicyAugmentBase,
        num_ops: int,
        magnitude: float | None,
        same_on_batch: bool = False,
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleList(cast(OperationBase, seq[0]) for seq in policy.children())
        if not 1 <= num_ops <= len(self.ops):
            raise ValueError(f"num_ops must be in [1, {len(self.ops)}], got {num_ops}.")
        if magnitude is not None and not 0 < magnitude < 30:
            raise ValueError(f"magnitude must be in (0, 30), got {magnitude}.")
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.same_on_batch = same_on_batch
        for op in self.ops:
            op.op.same_on_batch = same_on_batch

    def _magnitude(self, op: OperationBase, shape: torch.Size) -> Tensor | None:
        """kornia's RandAugment mapping of ``m`` onto ``op``'s range (see RandAugment)."""
        if self.magnitude is None or op.magnitude_range is None:
            return None
        lo, hi = (float(v) for v in op.magnitude_range)
        m = torch.full((shape[0],), self.magnitude / 30, device=op.op.device, dtype=op.op.dtype)
        mag = (1 - m) * (hi - lo) + lo if op._factor_name == "bits_factor" else m * (hi - lo) + lo
        if op._factor_name == "translate_x":
            mag = mag * shape[-1]
        elif op._factor_name == "translate_y":
            mag = mag * shape[-2]
        return mag

    def _apply_op(self, op: OperationBase, x: Tensor) -> Tensor:
        params = op.forward_parameters(x.shape, mag=self._magnitude(op, x.shape))
        return op(x, params=params)

    def forward(self, x: Tensor) -> Tensor:
        b, k = x.shape[0], len(self.ops)
        n = 1 if self.same_on_batch else b
        # num_ops distinct operations per image: the first columns of a random permutation.
        choice = torch.rand(n, k, device=x.device).argsort(dim=1)[:, : self.num_ops].expand(b, -1)
        for stage in range(self.num_ops):
            out = x.clone()
            for i, op in enumerate(self.ops):
                idx = (choice[:, stage] == i).nonzero().squeeze(1)
                if idx.numel():
                    out[idx] = self._apply_op(cast(OperationBase, op), x[idx])
            x = out
        return x

    def extra_repr(self) -> str:
        return (
            f"num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"same_on_batch={self.same_on_batch}"
        )


def rand_augment(num_ops: int, magnitude: float, same_on_batch: bool = False) -> PerSamplePolicy:
    """RandAugment (Cubuk et al. 2020): ``num_ops`` ops per image at fixed ``magnitude``."""
    return PerSamplePolicy(RandAugment(n=1, m=int(magnitude)), num_ops, magnitude, same_on_batch)


def trivial_augment(same_on_batch: bool = False) -> PerSamplePolicy:
    """TrivialAugment (Müller & Hutter 2021): one op per image, magnitude uniform per image."""
    return PerSamplePolicy(TrivialAugment(), 1, None, same_on_batch)
