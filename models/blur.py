"""Binomial blur followed by subsampling: Zhang's BlurPool with a choice of padding.

kornia's ``BlurPool2D`` only zero-pads (a constant map darkens at the border) and timm's
``BlurPool2d`` pads even filter sizes symmetrically (one pixel more output); this module pads like
Zhang's reference: left/top ``(k - 1) // 2``, right/bottom ``ceil((k - 1) / 2)``, so the output is
``ceil(H / stride)`` for every filter size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters.kernels import get_pascal_kernel_2d
from torch import nn

PAD_MODES = ("reflect", "replicate", "circular", "zeros")


def circular_pad_tiled(x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Circular padding by any amount (``F.pad`` refuses padding larger than the map)."""
    left, right, top, bottom = padding
    h, w = x.shape[-2:]
    ny, nx = -(-max(top, bottom) // h), -(-max(left, right) // w)
    tiled = x.repeat(1, 1, 2 * ny + 1, 2 * nx + 1)
    return tiled[..., ny * h - top : (ny + 1) * h + bottom, nx * w - left : (nx + 1) * w + right]


class BlurDownsample(nn.Module):
    """Depthwise normalised binomial filter of size ``filt_size`` (1-7), then stride ``stride``.

    ``filt_size=1`` is plain subsampling; ``stride=1`` is a pure blur (used before polyphase
    sampling). The filter is a non-persistent buffer: it adds no state-dict entries.
    """

    def __init__(self, stride: int = 2, filt_size: int = 4, pad_mode: str = "reflect") -> None:
        super().__init__()
        if not 1 <= filt_size <= 7:
            raise ValueError(f"filt_size must be in 1..7, got {filt_size}.")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}.")
        self.stride = stride
        self.filt_size = filt_size
        self.pad_mode = pad_mode
        lo, hi = (filt_size - 1) // 2, filt_size // 2
        self.padding = (lo, hi, lo, hi)  # F.pad order: left, right, top, bottom
        kernel = get_pascal_kernel_2d(filt_size, norm=True)
        self.register_buffer("filt", kernel[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filt_size == 1:
            return x[..., :: self.stride, :: self.stride]
        mode = "constant" if self.pad_mode == "zeros" else self.pad_mode
        h, w = x.shape[-2:]
        if mode == "reflect" and min(h, w) <= self.padding[1]:
            mode = "replicate"  # maps too small to reflect (e.g. 1x1 at the end of VGG at 32 px)
        if mode == "circular" and min(h, w) <= self.padding[1]:
            x = circular_pad_tiled(x, self.padding)  # F.pad wraps around at most once
        else:
            x = F.pad(x, self.padding, mode=mode)
        channels = x.shape[1]
        weight = self.filt.to(device=x.device, dtype=x.dtype).expand(channels, 1, -1, -1)
        return F.conv2d(x, weight, stride=self.stride, groups=channels)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, filt_size={self.filt_size}, pad_mode={self.pad_mode!r}"
