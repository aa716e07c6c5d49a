"""Exact random integer translation: pad, then crop a shifted window (no interpolation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from invlab.imageops import windows

from .base import SeededOp

PAD_FILLS = ("zeros", "reflect", "background")


def border_median(x: Tensor) -> Tensor:
    """Per-image, per-channel median of the one-pixel border of ``x`` [B, C, H, W] -> [B, C]."""
    border = torch.cat(
        [x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1
    )  # [B, C, 2W + 2H - 4]
    return border.median(dim=-1).values


def pad_image(x: Tensor, m: int, fill: str = "zeros") -> Tensor:
    """Pad ``x`` [B, C, H, W] by ``m`` pixels on every side with ``fill`` (see ``PAD_FILLS``)."""
    if m == 0:
        return x
    if fill == "zeros":
        return F.pad(x, (m, m, m, m))
    if fill == "reflect":
        if m >= min(x.shape[-2:]):
            raise ValueError(f"reflect padding needs max_shift_px < image size, got {m}.")
        return F.pad(x, (m, m, m, m), mode="reflect")
    if fill == "background":
        b, c, h, w = x.shape
        out = border_median(x)[:, :, None, None].expand(b, c, h + 2 * m, w + 2 * m).clone()
        out[..., m : m + h, m : m + w] = x
        return out
    raise ValueError(f"Unknown pad fill {fill!r}; choose one of {', '.join(PAD_FILLS)}.")


def shift_batch(x: Tensor, shifts: Tensor, m: int, fill: str = "zeros") -> Tensor:
    """Shift each image of ``x`` [B, C, H, W] by its own integer ``shifts[b] = (dy, dx)``.

    ``out[b, :, i, j] = padded[b, :, i - dy, j - dx]``: content moves down/right for positive
    shifts; ``|dy|, |dx| <= m``. The gather is :func:`train.imageops.windows`, the one that
    evaluation's sliding windows use.
    """
    start = m - shifts.to(device=x.device, dtype=torch.long)  # [B, 2] top-left of the window
    return windows(pad_image(x, m, fill), start[:, :1], start[:, 1:], tuple(x.shape[-2:]))[:, 0]


class RandomIntegerShift(SeededOp):
    """Shift every image by integers drawn uniformly from [-max_shift_px, max_shift_px] per axis.

    The shift is exact (pad with ``pad_fill``, crop the window back to the input size).
    ``generator`` (optional, on the batch's device) makes the draw reproducible.
    """

    def __init__(
        self, max_shift_px: int, pad_fill: str = "zeros", same_on_batch: bool = False
    ) -> None:
        super().__init__()
        if max_shift_px < 0:
            raise ValueError(f"max_shift_px must be >= 0, got {max_shift_px}.")
        if pad_fill not in PAD_FILLS:
            raise ValueError(
                f"Unknown pad fill {pad_fill!r}; choose one of {', '.join(PAD_FILLS)}."
            )
        self.max_shift_px = int(max_shift_px)
        self.pad_fill = pad_fill
        self.same_on_batch = same_on_batch

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        m = self.max_shift_px
        if m == 0:
            return x
        n = 1 if self.same_on_batch else x.shape[0]
        shifts = torch.randint(-m, m + 1, (n, 2), device=x.device, generator=generator)
        return shift_batch(x, shifts.expand(x.shape[0], 2), m, self.pad_fill)

    def extra_repr(self) -> str:
        return (
            f"max_shift_px={self.max_shift_px}, pad_fill={self.pad_fill!r}, "
            f"same_on_batch={self.same_on_batch}"
        )
