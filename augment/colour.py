"""Colour jiggle as one per-image 3x3 colour matrix (brightness, contrast, saturation, hue)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import SeededOp

# RGB -> YIQ (NTSC). Y is the luma torchvision/kornia use for grayscale.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def luma(x: Tensor) -> Tensor:
    """Rec. 601 luma of RGB images [B, 3, H, W] -> [B, 1, H, W]."""
    w = _RGB_TO_YIQ[0].to(x)
    return (x * w[:, None, None]).sum(dim=-3, keepdim=True)


def saturation_hue_matrix(saturation: Tensor, hue: Tensor) -> Tensor:
    """[B, 3, 3] RGB matrices scaling chroma by ``saturation`` and rotating it by ``hue`` turns.

    In YIQ, luma Y stays and the chroma plane (I, Q) is scaled and rotated; saturation 0 gives
    the grayscale image, ``hue`` = 0.5 the opposite hue.
    """
    yiq = _RGB_TO_YIQ.to(saturation)
    angle = 2 * math.pi * hue
    cos, sin = torch.cos(angle) * saturation, torch.sin(angle) * saturation
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    chroma = torch.stack(
        [
            torch.stack([one, zero, zero], -1),
            torch.stack([zero, cos, -sin], -1),
            torch.stack([zero, sin, cos], -1),
        ],
        dim=-2,
    )
    return torch.linalg.inv(yiq) @ chroma @ yiq


class RandomColourJiggle(SeededOp):
    """Per image: brightness, contrast, saturation factors uniform in [1 - s, 1 + s] and a hue
    rotation uniform in [-hue, hue] turns, each image jiggled with probability ``p``. Applied in
    that order as one affine colour map (clamped to [0, 1] once, not after every step).

    Hand-written because kornia's ColorJiggle shifts hue through an RGB<->HSV round trip (12x
    the cost of this op on a CPU, more than half of the ``heavy`` preset); a rotation of the YIQ
    chroma plane is one batched 3x3 matrix per image (an approximation of the HSV hue shift).
    """

    def __init__(
        self, strength: float, hue: float = 0.0, p: float = 1.0, same_on_batch: bool = False
    ) -> None:
        super().__init__()
        if strength < 0 or not 0 <= hue <= 0.5 or not 0 <= p <= 1:
            raise ValueError(
                f"colour jiggle needs strength >= 0, hue in [0, 0.5], p in [0, 1]; "
                f"got {strength}, {hue}, {p}."
            )
        self.strength, self.hue, self.p = float(strength), float(hue), float(p)
        self.same_on_batch = same_on_batch

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        u = self.uniform(x, (5,), generator)  # brightness, contrast, saturation, hue, gate
        on = (u[:, 4] < self.p).to(x.dtype)
        factors = (1 + self.strength * (2 * u[:, :3] - 1)).clamp_min(0)
        brightness, contrast, saturation = (1 + on[:, None] * (factors - 1)).unbind(1)
        hue = on * self.hue * (2 * u[:, 3] - 1)
        # Brightness, contrast (towards the mean luma), then saturation/hue, composed into one
        # affine colour map per image (M maps gray to itself), clamped once at the end.
        matrix = (brightness * contrast)[:, None, None] * saturation_hue_matrix(saturation, hue)
        offset = (1 - contrast) * brightness * luma(x).mean(dim=(-3, -2, -1))
        out = torch.einsum("bij,bjhw->bihw", matrix, x) + offset.view(-1, 1, 1, 1)
        return out.clamp(0, 1)

    def extra_repr(self) -> str:
        return (
            f"strength={self.strength}, hue={self.hue}, p={self.p}, "
            f"same_on_batch={self.same_on_batch}"
        )
