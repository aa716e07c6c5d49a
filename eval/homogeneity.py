"""Local homogeneity of images: how nearly constant they are inside small windows.

Mouton, Myburgh & Davel ("Stride and translation invariance in CNNs", 2021) argue that strided
pooling and subsampling are stable under small shifts when neighbouring pixels are similar, a
property of the data they call *local homogeneity*. Their exact formula could not be checked, so
the measure below is **invlab's own definition**, chosen because it bounds what a 1-px shift can do
to pooled and subsampled values (see :func:`local_homogeneity`). Numbers computed here are not
comparable to numbers in that paper.

Definition, for an image ``x`` with ``C`` channels of size ``H x W`` and values in ``[0, 1]``, and a
window size ``k``::

    range_k(x)[c, i, j] = max(x[c, i:i+k, j:j+k]) - min(x[c, i:i+k, j:j+k])
    local_range(x, k)   = mean over c and over the (H-k+1)(W-k+1) valid windows (i, j) of range_k
    local_homogeneity(x, k) = 1 - local_range(x, k)

Windows slide with stride 1 and without padding (only windows wholly inside the image).

Images are ``[N, C, H, W]``: float in ``[0, 1]`` or ``uint8`` (divided by 255). Float values are not
checked against ``[0, 1]`` (that would force a device sync); outside it the homogeneity can leave
``[0, 1]``. All functions are batched, run on the images' device and return per-image values.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from eval.metrics import bootstrap_ci

__all__ = ["feature_homogeneity", "homogeneity_report", "local_homogeneity", "local_range"]


def _as_unit_float(images: Tensor) -> Tensor:
    """``[N, C, H, W]`` images as floats in the unit range (uint8 is divided by 255)."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Expected images [N, C, H, W], got {shape}.")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"Expected float images in [0, 1] or uint8, got dtype {images.dtype}.")
    if images.dtype in (torch.float16, torch.bfloat16):
        return images.float()
    return images


def _check_window(k: object, height: int, width: int) -> int:
    """``k`` as an int in ``[2, min(height, width)]``, else a ``ValueError`` naming both."""
    hi = min(height, width)
    valid = f"valid window sizes are integers from 2 to {hi} (the smaller image side)"
    if isinstance(k, bool):
        raise ValueError(f"Window size {k!r} is not an integer; {valid}.")
    try:
        k_int = operator.index(k)
    except TypeError:
        raise ValueError(f"Window size {k!r} is not an integer; {valid}.") from None
    if not 2 <= k_int <= hi:
        raise ValueError(
            f"Window size {k_int} is out of range for {height}x{width} images; {valid}."
        )
    return k_int


def _range_map(x: Tensor, k: int) -> Tensor:
    """Max minus min over every ``k x k`` window, stride 1, valid windows only.

    ``[N, C, H, W]`` -> ``[N, C, H-k+1, W-k+1]``; min is ``-max_pool2d(-x)``.
    """
    return F.max_pool2d(x, k, stride=1) + F.max_pool2d(-x, k, stride=1)


def local_range(images: Tensor, k: int) -> Tensor:
    """Per image ``[N]``: mean over channels and valid ``k x k`` windows of (max - min).

    Windows slide with stride 1 and no padding. 0 for a constant image; 1 for a 0/1 checkerboard
    at any ``k >= 2``.
    """
    x = _as_unit_float(images)
    k = _check_window(k, x.shape[-2], x.shape[-1])
    return _range_map(x, k).mean(dim=(1, 2, 3))


def local_homogeneity(images: Tensor, k: int) -> Tensor:
    """Per image ``[N]``: ``1 - local_range(images, k)`` (invlab's definition).

    1 for a constant image, 0 for a 0/1 checkerboard at ``k >= 2``. This is invlab's definition;
    the formula of Mouton et al. (2021), who introduced the term, could not be checked, so values
    are not comparable to theirs.

    Why it predicts shift-stability of strided pooling. Let ``U`` be a window that contains two
    sets ``A`` and ``B``; any max, min or mean over ``A`` or over ``B`` lies in
    ``[min_U x, max_U x]``, so two such values differ by at most ``range_U(x)``. Then:

    * max pooling, kernel ``k``, any stride: a 1-px shift (horizontal, vertical or diagonal)
      moves each pooling window by one pixel, and the old and new windows both fit in one
      ``(k+1) x (k+1)`` window, so every pooled value changes by at most that window's range;
    * average pooling: likewise (both means lie in the same interval), bound ``range_{k+1}``;
    * strided subsampling (stride ``s``): after a 1-px shift each output picks a neighbouring
      sample; both lie in one ``2 x 2`` window, so the change is at most ``range_2`` there.

    Averaged over the pooling phase (where the stride grid falls), the mean of these per-window
    bounds is, up to border effects, at most ``local_range(x, k+1)`` (``local_range(x, 2)`` for
    subsampling). So a high homogeneity at window sizes near the kernel size / stride predicts
    small changes of the downsampled features under 1-px shifts. It is a bound on the first
    downsampling only; deeper layers see features, not pixels.
    """
    return 1.0 - local_range(images, k)


def feature_homogeneity(features: Tensor, k: int) -> Tensor:
    """Per image ``[N]``: :func:`local_homogeneity` of a feature map ``[N, C, H, W]`` whose
    channels are first rescaled to ``[0, 1]`` by their own minimum and maximum over the map (a
    constant channel counts as perfectly homogeneous). Feature values have no fixed range, so
    each channel's local range is measured as a fraction of its range over the image."""
    x = features.float()
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    unit = torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), torch.zeros_like(x))
    return local_homogeneity(unit, k)


def homogeneity_report(
    images: Tensor,
    windows: Iterable[int] = (2, 3, 4, 5),
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float]]]:
    """Mean local homogeneity per window size, with a bootstrap interval over images.

    Returns ``{str(k): {"mean": float, "ci": [lo, hi]}}`` (the invariance report's scalar schema).
    Every window is validated before anything is computed: it must be an integer from 2 to the
    smaller image side, else ``ValueError`` naming the value and the valid range.
    """
    x = _as_unit_float(images)
    windows = list(windows)
    if not windows:
        raise ValueError("Expected at least one window size, got none.")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must lie strictly between 0 and 1, got {ci_level}.")
    checked = [_check_window(k, x.shape[-2], x.shape[-1]) for k in windows]
    report: dict[str, dict[str, float | list[float]]] = {}
    for k in checked:
        values = 1.0 - _range_map(x, k).mean(dim=(1, 2, 3))
        mean, lo, hi = bootstrap_ci(values, n_resamples=n_bootstrap, level=ci_level, seed=seed)
        report[str(k)] = {"mean": mean, "ci": [lo, hi]}
    return report
