"""Metric functions on hand-written logits with answers worked out in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from eval import metrics


def one_hot_logits(top1: list[list[int]], num_classes: int = 3) -> torch.Tensor:
    """Logits [N, T, C] whose argmax follows ``top1[n][t]``."""
    z = torch.zeros(len(top1), len(top1[0]), num_classes)
    for n, row in enumerate(top1):
        for t, k in enumerate(row):
            z[n, t, k] = 5.0
    return z


def test_p_change_counts_consecutive_top1_flips() -> None:
    # image 0: 0,0,1,0 -> pairs (0,0) (0,1) (1,0): 2 flips of 3 -> 2/3
    # image 1: 2,2,2,2 -> no flips -> 0
    # image 2: 0,1,0,1 -> 3 of 3 -> 1
    z = one_hot_logits([[0, 0, 1, 0], [2, 2, 2, 2], [0, 1, 0, 1]])
    torch.testing.assert_close(metrics.p_change(z), torch.tensor([2 / 3, 0.0, 1.0]))


def test_p_change_needs_two_views() -> None:
    with pytest.raises(ValueError, match="T >= 2"):
        metrics.p_change(torch.zeros(2, 1, 3))


def test_mac_uses_the_earlier_views_top1_class() -> None:
    # probabilities per view (logits = log p, so softmax gives p back):
    #   t0 = [0.5, 0.3, 0.2]   t1 = [0.1, 0.6, 0.3]   t2 = [0.1, 0.6, 0.3]
    # pair (t0, t1): k* = argmax t0 = 0 -> |0.5 - 0.1| = 0.4
    #   (with the later view's class 1 it would be |0.3 - 0.6| = 0.3)
    # pair (t1, t2): k* = 1 -> |0.6 - 0.6| = 0
    # mac = (0.4 + 0) / 2 = 0.2   (the later-class variant would give 0.15)
    p = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.1, 0.6, 0.3]]])
    out = metrics.mac(p.log())
    torch.testing.assert_close(out, torch.tensor([0.2]))
    assert abs(float(out) - 0.15) > 0.01


def test_mac_is_zero_for_identical_views_and_ignores_logit_offsets() -> None:
    z = torch.randn(4, 1, 5).repeat(1, 3, 1)
    z[:, 1] += 7.0  # adding a constant to all logits leaves softmax unchanged
    torch.testing.assert_close(metrics.mac(z), torch.zeros(4), atol=1e-6, rtol=0)


def test_consistency_marks_agreeing_top1() -> None:
    # top-1 of view a: 0, 1, 2; of view b: 0, 2, 2 -> agree, disagree, agree
    za = one_hot_logits([[0], [1], [2]])[:, 0]
    zb = one_hot_logits([[0], [2], [2]])[:, 0]
    torch.testing.assert_close(metrics.consistency(za, zb), torch.tensor([1.0, 0.0, 1.0]))


def test_worst_case_and_accuracy_by_view() -> None:
    # labels 0 and 1; image 0 predicted 0,0,1 (wrong at t=2); image 1 predicted 1,1,1
    z = one_hot_logits([[0, 0, 1], [1, 1, 1]])
    y = torch.tensor([0, 1])
    torch.testing.assert_close(metrics.worst_case_correct(z, y), torch.tensor([0.0, 1.0]))
    # per view: t0 both right (1.0), t1 both right (1.0), t2 one of two (0.5)
    torch.testing.assert_close(metrics.accuracy_by_view(z, y), torch.tensor([1.0, 1.0, 0.5]))


def test_feature_cosine_against_anchor() -> None:
    # views [1,0], [0,1], [1,1] against anchor [1,0]: cos = 1, 0, 1/sqrt(2)
    # image 1: [-2,0] against [1,0]: cos = -1 (scale does not matter)
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[-2.0, 0.0]] * 3])
    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, 1 / math.sqrt(2)], [-1.0, -1.0, -1.0]])
    torch.testing.assert_close(metrics.feature_cosine(f, anchor), expected)
    with pytest.raises(ValueError, match="anchor"):
        metrics.feature_cosine(f, anchor[:1])


def test_bootstrap_ci_contains_mean_and_narrows_with_more_images() -> None:
    gen = torch.Generator().manual_seed(1)
    small = torch.bernoulli(torch.full((100,), 0.3), generator=gen)
    large = torch.bernoulli(torch.full((10000,), 0.3), generator=gen)
    m_s, lo_s, hi_s = metrics.bootstrap_ci(small, n_resamples=500)
    m_l, lo_l, hi_l = metrics.bootstrap_ci(large, n_resamples=500)
    assert lo_s <= m_s <= hi_s and lo_l <= m_l <= hi_l
    assert m_s == pytest.approx(float(small.mean()))
    # the standard error shrinks like 1/sqrt(n): 100x more images -> ~10x narrower
    assert 5 < (hi_s - lo_s) / (hi_l - lo_l) < 20
    # 95% interval of a Bernoulli(0.3) mean over 10000 images: about +-1.96*sqrt(.21/1e4) = 0.009
    assert (hi_l - lo_l) == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 10000), rel=0.2)


def test_bootstrap_ci_is_reproducible_for_a_seed() -> None:
    values = torch.rand(200, generator=torch.Generator().manual_seed(0))
    assert metrics.bootstrap_ci(values, seed=3) == metrics.bootstrap_ci(values, seed=3)
    assert metrics.bootstrap_ci(values, seed=3) != metrics.bootstrap_ci(values, seed=4)


def test_bootstrap_ci_of_constant_values_is_a_point() -> None:
    assert metrics.bootstrap_ci(torch.ones(50)) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------ bootstrap over instances
def test_instance_bootstrap_resamples_whole_instances() -> None:
    # two instances shown twice each: instance 0 always right, instance 1 always wrong. A
    # resample draws 2 instances with replacement: means can only be 0, 0.5 or 1 (an image-level
    # bootstrap would also give 0.25 and 0.75).
    values = torch.tensor([1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([7, 7, 3, 3])
    means = metrics.bootstrap_means(values, 2000, seed=0, groups=groups)
    assert set(means.tolist()) == {0.0, 0.5, 1.0}
    assert set(metrics.bootstrap_means(values, 2000, seed=0).tolist()) == {
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
    }
    # unequal repeats: the mean of a resample is over images (instance 7 shown 3 times)
    values = torch.tensor([1.0, 1.0, 1.0, 0.0])
    means = metrics.bootstrap_means(values, 2000, seed=0, groups=torch.tensor([7, 7, 7, 3]))
    assert set(means.tolist()) == {0.0, 0.75, 1.0}  # {3,3}, {7,3}, {7,7}


def test_repeated_instances_widen_the_interval_by_the_square_root_of_the_repeats() -> None:
    # 100 instances shown 4 times each with identical values: the information is that of 100
    # images, so the interval is ~2x (sqrt 4) the naive one over 400 "independent" images.
    gen = torch.Generator().manual_seed(0)
    per_instance = (torch.rand(100, generator=gen) < 0.3).double()
    values = per_instance.repeat_interleave(4)
    groups = torch.arange(100).repeat_interleave(4)
    _, lo, hi = metrics.bootstrap_ci(values, 2000, 0.95, 0, groups)
    _, nlo, nhi = metrics.bootstrap_ci(values, 2000, 0.95, 0)
    _, ilo, ihi = metrics.bootstrap_ci(per_instance, 2000, 0.95, 0)
    assert 1.7 < (hi - lo) / (nhi - nlo) < 2.3
    assert (hi - lo) == pytest.approx(ihi - ilo, rel=0.1)  # as if each instance were one image


def test_difference_of_independent_samples() -> None:
    # constants: the difference is exact and the interval has no width
    assert metrics.bootstrap_diff_ci(torch.ones(5), torch.zeros(7)) == (1.0, 1.0, 1.0)
    # a = half ones (n = 400), b = constant 0.1: diff 0.4, se = sqrt(.25 / 400) = 0.025
    a = torch.tensor([0.0, 1.0]).repeat(200)
    b = torch.full((300,), 0.1)
    diff, lo, hi = metrics.bootstrap_diff_ci(a, b, 4000, 0.95, seed=3)
    assert diff == pytest.approx(0.4)
    assert lo == pytest.approx(0.4 - 1.96 * 0.025, abs=0.01)
    assert hi == pytest.approx(0.4 + 1.96 * 0.025, abs=0.01)
    # both samples vary: the variances add, se = sqrt(2) * 0.025
    b = torch.tensor([0.0, 1.0]).repeat(200)
    diff, lo, hi = metrics.bootstrap_diff_ci(a, b, 4000, 0.95, seed=3)
    assert diff == 0.0 and (hi - lo) == pytest.approx(2 * 1.96 * 0.025 * 2**0.5, rel=0.12)
    nan = metrics.bootstrap_diff_ci(torch.ones(3), torch.empty(0))
    assert all(math.isnan(v) for v in nan)


def test_distinct_pairs_never_compare_a_view_with_itself() -> None:
    from eval.views import distinct_pairs, random_pair_offsets

    gen = torch.Generator().manual_seed(0)
    pairs = distinct_pairs(12000, 3, gen)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    # uniform over the 6 ordered pairs of distinct views
    counts = torch.bincount(pairs[:, 0] * 3 + pairs[:, 1], minlength=9).double() / 12000
    for i in range(3):
        assert counts[4 * i] == 0
    assert ((counts[counts > 0] - 1 / 6).abs() < 0.015).all()
    offsets = random_pair_offsets(5000, 1.0, 1.0, gen)  # a 3x3 lattice: 9 points
    assert offsets.abs().max() == 1 and (offsets[:, 0] != offsets[:, 1]).any(1).all()
    with pytest.raises(ValueError, match="two views"):
        distinct_pairs(3, 1, gen)
