"""Adaptive polyphase sampling (APS; Chaman & Dokmanic, CVPR 2021).

Subsampling by ``s`` keeps one of the ``s * s`` polyphase components ``x[..., i::s, j::s]``. APS
keeps, per sample, the component with the largest l2 norm (over channels and positions). A
circular shift of the input permutes the components and circularly shifts each, so the choice
follows the shift: with circular padding everywhere and a global-pooling head the network is
exactly invariant to circular shifts. Not in kornia or timm, hence this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PolyphaseDownsample(nn.Module):
    """Keep the max-norm polyphase component per sample.

    Feature maps whose size is not a multiple of ``stride`` (e.g. after an even-kernel conv) are
    first padded circularly to one; the exact invariance then no longer holds for that layer.
    """

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        h, w = x.shape[-2:]
        if h % s or w % s:
            x = F.pad(x, (0, -w % s, 0, -h % s), mode="circular")
            h, w = x.shape[-2:]
        # [B, C, H/s, s, W/s, s] -> [B, s*s, C, H/s, W/s]: component (i, j) = x[..., i::s, j::s]
        b, c = x.shape[:2]
        phases = x.reshape(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)
        phases = phases.reshape(b, s * s, c, h // s, w // s)
        norms = phases.pow(2).flatten(2).sum(-1)  # [B, s*s]
        index = norms.argmax(dim=1)
        return phases[torch.arange(b, device=x.device), index]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"
