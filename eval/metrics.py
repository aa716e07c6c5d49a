"""Invariance metrics as pure functions of logits and features.

Shapes: logits ``z`` are ``[N, T, C]`` (image ``n``, view ``t`` along a trajectory, class ``c``),
labels ``y`` are ``[N]``, features ``f`` are ``[N, T, D]``. Per-image functions return ``[N]`` so
that a bootstrap over images (:func:`bootstrap_ci`) gives every scalar a confidence interval.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_views(z: Tensor, min_views: int = 2) -> None:
    if z.ndim != 3 or z.shape[1] < min_views:
        raise ValueError(
            f"Expected logits [N, T, C] with T >= {min_views} views, got {tuple(z.shape)}."
        )


def p_change(z: Tensor) -> Tensor:
    """Per image: fraction of consecutive view pairs whose top-1 class differs."""
    _check_views(z)
    top1 = z.argmax(-1)
    return (top1[:, 1:] != top1[:, :-1]).float().mean(1)


def mac(z: Tensor) -> Tensor:
    """Per image: mean absolute change of the earlier view's top-1 probability.

    For each consecutive pair (t, t+1): ``|p[t, k*] - p[t+1, k*]|`` with ``k* = argmax p[t]``.
    """
    _check_views(z)
    p = z.float().softmax(-1)
    k = p[:, :-1].argmax(-1, keepdim=True)  # [N, T-1, 1]: top-1 of the earlier view
    before = p[:, :-1].gather(-1, k).squeeze(-1)
    after = p[:, 1:].gather(-1, k).squeeze(-1)
    return (before - after).abs().mean(1)


def consistency(z_a: Tensor, z_b: Tensor) -> Tensor:
    """Per image: 1.0 where the two views' top-1 classes agree (Zhang 2019). ``z_*``: [N, C]."""
    if z_a.shape != z_b.shape:
        raise ValueError(f"Logit shapes differ: {tuple(z_a.shape)} vs {tuple(z_b.shape)}.")
    return (z_a.argmax(-1) == z_b.argmax(-1)).float()


def correct_by_view(z: Tensor, y: Tensor) -> Tensor:
    """``[N, T]``: 1.0 where view t of image n is classified as ``y[n]``."""
    _check_views(z, min_views=1)
    return (z.argmax(-1) == y[:, None]).float()


def worst_case_correct(z: Tensor, y: Tensor) -> Tensor:
    """Per image: 1.0 when every view is classified correctly."""
    return correct_by_view(z, y).amin(1)


def accuracy_by_view(z: Tensor, y: Tensor) -> Tensor:
    """``[T]``: accuracy of each view over the images."""
    return correct_by_view(z, y).mean(0)


def feature_cosine(f: Tensor, anchor: Tensor) -> Tensor:
    """``[N, T]``: cosine similarity of each view's features ``f [N, T, D]`` to ``anchor``
    ``[N, D]``."""
    if f.ndim != 3 or anchor.shape != (f.shape[0], f.shape[2]):
        raise ValueError(
            f"Expected features [N, T, D] and anchor [N, D], got {tuple(f.shape)} and "
            f"{tuple(anchor.shape)}."
        )
    return F.cosine_similarity(f.float(), anchor.float()[:, None, :], dim=-1)


def _clusters(values: Tensor, groups: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-cluster (sum, count) of ``values``; every image is its own cluster without groups."""
    values = values.detach().flatten().double().cpu()
    if groups is None:
        return values, torch.ones_like(values)
    groups = groups.detach().flatten().cpu()
    if groups.shape != values.shape:
        raise ValueError(f"groups {tuple(groups.shape)} do not match values {tuple(values.shape)}")
    _, inverse = torch.unique(groups, return_inverse=True)
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, inverse, values)
    counts = torch.zeros(k, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(values))
    return sums, counts


def bootstrap_means(
    values: Tensor, n_resamples: int = 1000, seed: int = 0, groups: Tensor | None = None
) -> Tensor:
    """``[n_resamples]`` means of bootstrap resamples of per-image ``values``.

    With ``groups`` (e.g. the instance each image shows) whole groups are resampled with
    replacement and each resample's mean is over all images of the drawn groups: images that
    reuse an instance are not counted as independent. Seeded; drawn in blocks to bound memory.
    """
    sums, counts = _clusters(values, groups)
    k = sums.numel()
    gen = torch.Generator().manual_seed(seed)
    block = max(1, (1 << 22) // max(k, 1))
    means = []
    for start in range(0, n_resamples, block):
        rows = min(block, n_resamples - start)
        idx = torch.randint(0, k, (rows, k), generator=gen)
        means.append(sums[idx].sum(1) / counts[idx].sum(1))
    return torch.cat(means) if means else torch.empty(0, dtype=torch.float64)


def _interval(means: Tensor, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    q = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])


def bootstrap_ci(
    values: Tensor,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    groups: Tensor | None = None,
) -> tuple[float, float, float]:
    """Mean of per-image ``values`` and its percentile-bootstrap interval ``(mean, lo, hi)``.

    Images (or, with ``groups``, whole groups of images) are resampled with replacement
    ``n_resamples`` times from a seeded generator, so the interval is reproducible.
    """
    values = values.detach().flatten().double().cpu()
    n = values.numel()
    if n == 0:
        nan = float("nan")
        return nan, nan, nan
    mean = float(values.mean())
    distinct = n if groups is None else int(torch.unique(groups.flatten().cpu()).numel())
    if n_resamples <= 0 or distinct == 1:
        return mean, mean, mean
    lo, hi = _interval(bootstrap_means(values, n_resamples, seed, groups), level)
    return mean, lo, hi


def bootstrap_diff_ci(
    a: Tensor,
    b: Tensor,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    groups_a: Tensor | None = None,
    groups_b: Tensor | None = None,
) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` for two independent samples and its percentile-bootstrap interval:
    each sample is resampled on its own (by groups when given), from independent streams."""
    a = a.detach().flatten().double().cpu()
    b = b.detach().flatten().double().cpu()
    if a.numel() == 0 or b.numel() == 0:
        nan = float("nan")
        return nan, nan, nan
    diff = float(a.mean() - b.mean())
    if n_resamples <= 0:
        return diff, diff, diff
    ma = bootstrap_means(a, n_resamples, seed, groups_a)
    mb = bootstrap_means(b, n_resamples, seed + 1_000_003, groups_b)
    lo, hi = _interval(ma - mb, level)
    return diff, lo, hi
