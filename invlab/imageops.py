"""Integer pixel windows of image batches: the one gather that augmentation (exact shifts) and
evaluation (sliding windows, crops) share, so that their shift conventions cannot drift apart.

Convention: a window whose top-left corner is ``(top, left)`` in the source shows the source
pixel ``(top + i, left + j)`` at ``(i, j)``. Shifting content by ``(dy, dx)`` (positive =
down/right) inside a source padded by ``m`` is the window at ``(m - dy, m - dx)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def windows(
    src: Tensor, top: Tensor, left: Tensor, size: int | tuple[int, int], wrap: bool = False
) -> Tensor:
    """Windows of ``src [N, C, H, W]`` at integer corners ``top/left [N, T]``.

    Returns ``[N, T, C, h, w]`` for ``size = (h, w)`` (an int is a square). One batched gather:
    kornia's per-sample crop is a Python loop over the batch (as airbench's ``batch_crop``).
    ``wrap`` takes indices modulo the image size (circular shifts); otherwise every window must
    lie inside ``src``.
    """
    h_out, w_out = (size, size) if isinstance(size, int) else size
    n, _, h, w = src.shape
    rows = top.to(src.device, torch.long)[..., None] + torch.arange(h_out, device=src.device)
    cols = left.to(src.device, torch.long)[..., None] + torch.arange(w_out, device=src.device)
    if wrap:
        rows, cols = rows % h, cols % w
    batch = torch.arange(n, device=src.device)[:, None, None, None]
    # Advanced indices around the channel slice: the result is [N, T, h, w, C].
    out = src.permute(0, 2, 3, 1)[batch, rows[..., :, None], cols[..., None, :]]
    return out.permute(0, 1, 4, 2, 3)


def center_crop(images: Tensor, size: int) -> Tensor:
    """Central ``size x size`` crop of ``[..., H, W]`` (a view, no copy)."""
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"Images of {h}x{w} px are smaller than the input size {size}.")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]
