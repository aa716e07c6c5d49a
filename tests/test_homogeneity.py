"""Local homogeneity on hand-made images, with the values worked out in the comments, and the
shift bound that motivates the measure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from eval import metrics
from eval.homogeneity import homogeneity_report, local_homogeneity, local_range


def constant(h: int = 16, w: int = 16, value: float = 0.3) -> Tensor:
    return torch.full((1, 1, h, w), value)


def checkerboard(h: int = 16, w: int = 16) -> Tensor:
    i = torch.arange(h)[:, None]
    j = torch.arange(w)[None, :]
    return ((i + j) % 2).float()[None, None]


def step_edge(h: int = 8, w: int = 16) -> Tensor:
    """Left half 0, right half 1 (columns w/2 .. w-1)."""
    x = torch.zeros(1, 1, h, w)
    x[..., w // 2 :] = 1.0
    return x


def ramp(h: int = 12, w: int = 16) -> Tensor:
    """x[i, j] = j / (w - 1): 0 at the left column, 1 at the right one."""
    return (torch.arange(w, dtype=torch.float32) / (w - 1)).expand(1, 1, h, w).clone()


@pytest.mark.parametrize("k", [2, 3, 4, 5, 16])
def test_constant_image_is_fully_homogeneous(k: int) -> None:
    # every window holds one value: max - min = 0 -> range 0, homogeneity 1
    x = constant()
    torch.testing.assert_close(local_range(x, k), torch.tensor([0.0]))
    torch.testing.assert_close(local_homogeneity(x, k), torch.tensor([1.0]))


@pytest.mark.parametrize("k", [2, 3, 4, 5, 16])
def test_checkerboard_has_zero_homogeneity(k: int) -> None:
    # any window of side >= 2 holds a 0 and a 1: every range is 1 -> homogeneity 0
    x = checkerboard()
    torch.testing.assert_close(local_range(x, k), torch.tensor([1.0]))
    torch.testing.assert_close(local_homogeneity(x, k), torch.tensor([0.0]))


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # W = 16, edge between columns 7 and 8. Window columns start at c = 0 .. 16-k
        # (16-k+1 of them); a window straddles the edge when c <= 7 and c+k-1 >= 8, i.e.
        # c in [9-k, 7]: k-1 starts. Rows do not matter (every row is the same), so
        # local_range = (k-1) / (16-k+1):
        (2, 1 / 15),  # only c = 7
        (3, 2 / 14),  # c = 6, 7
        (4, 3 / 13),
        (5, 4 / 12),
        (8, 7 / 9),  # H = 8 caps k at 8
    ],
)
def test_step_edge_only_straddling_windows_count(k: int, expected: float) -> None:
    x = step_edge(h=8, w=16)
    torch.testing.assert_close(local_range(x, k), torch.tensor([expected]))
    torch.testing.assert_close(local_homogeneity(x, k), torch.tensor([1.0 - expected]))


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # ramp j/15: a window spans k consecutive columns, max - min = (k-1)/15 everywhere
        (2, 1 / 15),
        (3, 2 / 15),
        (4, 3 / 15),  # = 0.2
        (5, 4 / 15),
        (12, 11 / 15),  # H = 12 caps k at 12
    ],
)
def test_linear_ramp_range_is_slope_times_window(k: int, expected: float) -> None:
    x = ramp(h=12, w=16)
    torch.testing.assert_close(local_range(x, k), torch.tensor([expected]))


def test_uint8_equals_float_over_255() -> None:
    gen = torch.Generator().manual_seed(1)
    x8 = torch.randint(0, 256, (3, 2, 16, 20), generator=gen, dtype=torch.uint8)
    xf = x8.float() / 255.0
    for k in (2, 3, 5):
        torch.testing.assert_close(local_range(x8, k), local_range(xf, k))
    # 0/255 checkerboard as uint8 -> same 1.0 as the float 0/1 one
    cb8 = (checkerboard() * 255).to(torch.uint8)
    torch.testing.assert_close(local_range(cb8, 3), torch.tensor([1.0]))


def test_channels_are_averaged() -> None:
    # channel 0 constant (range 0), channel 1 checkerboard (range 1) -> (0 + 1) / 2 = 0.5
    x = torch.cat([constant(value=0.7), checkerboard()], dim=1)
    for k in (2, 4):
        torch.testing.assert_close(local_range(x, k), torch.tensor([0.5]))
        torch.testing.assert_close(local_homogeneity(x, k), torch.tensor([0.5]))


def test_batch_gives_per_image_values_in_order() -> None:
    # k = 3 on 16 x 16 images:
    #   constant      -> 1
    #   checkerboard  -> 0
    #   step edge     -> 1 - 2/14 = 6/7  (same as the 8 x 16 one: rows do not matter)
    #   ramp j/15     -> 1 - 2/15 = 13/15
    x = torch.cat([constant(), checkerboard(), step_edge(16, 16), ramp(16, 16)])
    expected = torch.tensor([1.0, 0.0, 6 / 7, 13 / 15])
    torch.testing.assert_close(local_homogeneity(x, 3), expected)
    # reversing the batch reverses the values: no mixing across images
    torch.testing.assert_close(local_homogeneity(x.flip(0), 3), expected.flip(0))


def test_float64_input_keeps_precision() -> None:
    x = ramp(h=12, w=16).double()
    out = local_range(x, 4)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([0.2], dtype=torch.float64))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (1, r"Window size 1 is out of range .* from 2 to 8"),
        (0, r"Window size 0 is out of range .* from 2 to 8"),
        (-3, r"Window size -3 is out of range .* from 2 to 8"),
        (9, r"Window size 9 is out of range for 8x16 images.* from 2 to 8"),
        (2.5, r"Window size 2.5 is not an integer.* from 2 to 8"),
        ("3", r"Window size '3' is not an integer.* from 2 to 8"),
        (True, r"Window size True is not an integer.* from 2 to 8"),
    ],
)
def test_invalid_windows_raise_with_value_and_range(bad: object, message: str) -> None:
    x = step_edge(h=8, w=16)
    with pytest.raises(ValueError, match=message):
        local_range(x, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        homogeneity_report(x, windows=(2, bad))  # type: ignore[arg-type]


def test_non_image_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        local_range(torch.zeros(16, 16), 2)
    with pytest.raises(TypeError, match="uint8"):
        local_range(torch.zeros(1, 1, 16, 16, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="at least one window"):
        homogeneity_report(constant(), windows=())


def test_report_schema_and_values() -> None:
    # two constants (H = 1) and two checkerboards (H = 0): mean 0.5 at every window
    x = torch.cat([constant(), constant(value=0.9), checkerboard(), checkerboard()])
    report = homogeneity_report(x, windows=(2, 3, 4, 5), n_bootstrap=200, seed=3)
    assert list(report) == ["2", "3", "4", "5"]
    for entry in report.values():
        assert set(entry) == {"mean", "ci"}
        assert entry["mean"] == pytest.approx(0.5)
        lo, hi = entry["ci"]
        assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    # the interval is eval.metrics.bootstrap_ci on the per-image values
    _, lo, hi = metrics.bootstrap_ci(local_homogeneity(x, 3), n_resamples=200, seed=3)
    assert report["3"]["ci"] == [lo, hi]
    # a constant batch has a degenerate interval
    flat = homogeneity_report(constant().expand(4, 1, 16, 16), windows=[2])
    assert flat == {"2": {"mean": 1.0, "ci": [1.0, 1.0]}}


# --- what the measure predicts: stability of strided pooling under 1-px shifts ----------------


def smooth_images(n: int, size: int, source: int, gen: torch.Generator) -> Tensor:
    """Uniform noise at ``source x source`` pixels, bilinearly upsampled to ``size``: values stay
    in [0, 1] (convex combinations). ``source == size`` gives i.i.d. noise."""
    low = torch.rand(n, 1, source, source, generator=gen)
    if source == size:
        return low
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=True)


def shifted_pair(x: Tensor, dy: int, dx: int) -> tuple[Tensor, Tensor]:
    """The image and its copy moved by (dy, dx) px, both cropped to the common valid part (no
    invented pixels)."""
    h, w = x.shape[-2:]
    return x[..., : h - dy, : w - dx], x[..., dy:, dx:]


def maxpool_change(x: Tensor, k: int = 2, s: int = 2) -> Tensor:
    """Per image: mean |maxpool_k(x) - maxpool_k(x shifted 1 px to the left)|."""
    a, b = shifted_pair(x, 0, 1)
    return (F.max_pool2d(a, k, s) - F.max_pool2d(b, k, s)).abs().mean(dim=(1, 2, 3))


def test_smoother_images_are_more_homogeneous_and_pool_more_stably() -> None:
    gen = torch.Generator().manual_seed(0)
    smooth = smooth_images(16, 32, 4, gen)
    rough = smooth_images(16, 32, 32, gen)
    # i.i.d. uniform noise: the range of n uniforms has mean (n-1)/(n+1), so
    # H_2 = 1 - 3/5 = 0.4 (n = 4 pixels) and H_3 = 1 - 8/10 = 0.2 (n = 9)
    assert local_homogeneity(rough, 2).mean().item() == pytest.approx(0.4, abs=0.02)
    assert local_homogeneity(rough, 3).mean().item() == pytest.approx(0.2, abs=0.02)
    for k in (2, 3):
        assert local_homogeneity(smooth, k).mean() > local_homogeneity(rough, k).mean() + 0.3
    assert maxpool_change(smooth).mean() < 0.5 * maxpool_change(rough).mean()

    # graded smoothness: upsampled from 4, 8, 16 and 32 (= none) px. Homogeneity falls and the
    # max-pool change under a 1-px shift rises, group by group, in the same order.
    groups = [smooth_images(8, 32, src, gen) for src in (4, 8, 16, 32)]
    homog = torch.stack([local_homogeneity(g, 3).mean() for g in groups])
    change = torch.stack([maxpool_change(g).mean() for g in groups])
    assert (homog[1:] < homog[:-1]).all(), homog
    assert (change[1:] > change[:-1]).all(), change


def range_map(x: Tensor, kh: int, kw: int, stride: int) -> Tensor:
    """max - min over every kh x kw window on the stride grid (no padding)."""
    return F.max_pool2d(x, (kh, kw), stride) + F.max_pool2d(-x, (kh, kw), stride)


POOLS = {
    # name: (pooling function, kernel, stride); subsampling is a 1 x 1 "pool" with stride s
    "maxpool2s2": (F.max_pool2d, 2, 2),
    "maxpool3s2": (F.max_pool2d, 3, 2),
    "maxpool3s1": (F.max_pool2d, 3, 1),
    "avgpool2s2": (F.avg_pool2d, 2, 2),
    "avgpool3s3": (F.avg_pool2d, 3, 3),
    "subsample2": (F.max_pool2d, 1, 2),
    "subsample3": (F.max_pool2d, 1, 3),
}


@pytest.mark.parametrize("shift", [(0, 1), (1, 0), (1, 1)], ids=["right", "down", "diagonal"])
@pytest.mark.parametrize("pool", list(POOLS))
def test_one_pixel_shift_change_is_bounded_by_local_range(
    pool: str, shift: tuple[int, int]
) -> None:
    fn, k, s = POOLS[pool]
    dy, dx = shift
    gen = torch.Generator().manual_seed(7)
    x = torch.cat(
        [
            smooth_images(12, 24, 6, gen).reshape(4, 3, 24, 24),
            torch.rand(4, 3, 24, 24, generator=gen),
            torch.cat([step_edge(24, 24), ramp(24, 24), checkerboard(24, 24)], dim=1),
        ]
    )
    a, b = shifted_pair(x, dy, dx)
    change = (fn(a, k, s) - fn(b, k, s)).abs()  # [N, C, h, w], valid interior only
    # per output position: the old and the new window both lie in one (k+dy) x (k+dx) window
    # starting at the same place, so the change is at most that window's range
    bound = range_map(x, k + dy, k + dx, s)
    assert change.shape == bound.shape
    assert (change <= bound + 1e-6).all()
    # the stated per-image form: max change <= max range over (k+1) x (k+1) windows
    # (2 x 2 for subsampling, k = 1); every (k+dy) x (k+dx) window lies in one of those
    per_image_max = change.amax(dim=(1, 2, 3))
    max_range = range_map(x, k + 1, k + 1, 1).amax(dim=(1, 2, 3))
    assert (per_image_max <= max_range + 1e-6).all()
    assert per_image_max.max() > 0  # not vacuous: the rough images do change


def test_bound_is_attained_by_subsampling_a_checkerboard() -> None:
    # stride-2 subsampling of a 0/1 checkerboard picks all 0s (even sites); one pixel to the
    # right it picks all 1s: every sample changes by 1 = the 2 x 2 range, local_range(x, 2) = 1
    x = checkerboard(16, 16)
    a, b = shifted_pair(x, 0, 1)
    change = (a[..., ::2, ::2] - b[..., ::2, ::2]).abs()
    torch.testing.assert_close(change, torch.ones_like(change))
    torch.testing.assert_close(local_range(x, 2), torch.tensor([1.0]))
    # whereas 2 x 2 max pooling sees a 1 in every window, before and after: no change at all
    assert (F.max_pool2d(a, 2, 2) == F.max_pool2d(b, 2, 2)).all()


# ------------------------------------------------------------- where the downsampling acts
def test_feature_homogeneity_measures_each_channel_against_its_own_range() -> None:
    from eval.homogeneity import feature_homogeneity

    # channel 0: a ramp 0, 10, 20, 30, 40 across 5 columns (rescaled: steps of 1/4, so every
    # 2x2 window has range 1/4); channel 1: constant (homogeneous by definition)
    ramp5 = (10.0 * torch.arange(5.0)).expand(1, 1, 5, 5)
    maps = torch.cat([ramp5, torch.full((1, 1, 5, 5), -3.0)], dim=1)
    assert feature_homogeneity(maps, 2).item() == pytest.approx((0.75 + 1.0) / 2)
    # the scale of the features does not matter; window 3 covers two steps (range 1/2)
    assert feature_homogeneity(0.01 * maps, 3).item() == pytest.approx((0.5 + 1.0) / 2)


def test_first_downsampling_finds_the_pool_after_the_stem_and_its_kernel() -> None:
    import models
    from eval.equivariance import first_downsampling
    from train.config import load_config

    pooled = load_config(
        overrides=["model.widths=[4,8]", "model.downsample=maxpool", "model.down_kernel=3"]
    )
    net = models.build(pooled.model, num_classes=3)
    first = first_downsampling(net, 16)
    assert first is not None and isinstance(first.module, torch.nn.MaxPool2d)
    assert (first.kernel, first.stride, first.sees_pixels) == (3, 2, False)
    # a strided first convolution sees the pixels
    strided = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 5, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    first = first_downsampling(strided, 16)
    assert first is not None and (first.name, first.kernel, first.sees_pixels) == ("0", 5, True)
    # nothing downsamples below the global pooling
    flat = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1))
    assert first_downsampling(flat, 16) is None


def test_evaluate_reports_the_homogeneity_the_first_pooling_sees() -> None:
    import models
    from eval import evaluate
    from eval.homogeneity import feature_homogeneity
    from tests.test_eval import SIZE, eval_cfg, make_data
    from train.config import load_config

    cfg = load_config(
        overrides=["model.widths=[4,8]", "model.downsample=maxpool", "model.down_kernel=2"]
    )
    torch.manual_seed(0)
    net = models.build(cfg.model, num_classes=4).eval()
    data = make_data(n=6)
    ev = eval_cfg("eval.transforms=[translate]", "eval.homogeneity_windows=[2]", "eval.n_images=6")
    report = evaluate(net, data, ev, image_size=SIZE, progress=False)
    layer = report["protocol"]["homogeneity_layer"]
    assert (layer["kernel"], layer["window"], layer["input"]) == (2, 3, "features")
    for split in ("typical", "atypical"):
        block = report["splits"][split]
        assert set(block["homogeneity"]) == {"2", "3"}  # the pixels at the matching window too
        # by hand: the pool's input on the central crops, measured at window 3
        seen: list[Tensor] = []
        pool = dict(net.named_modules())[layer["layer"]]
        handle = pool.register_forward_pre_hook(lambda _m, i, seen=seen: seen.append(i[0]))
        images = data[split][0][:6]
        crops = images[..., 4 : 4 + SIZE, 4 : 4 + SIZE].float() / 255
        with torch.no_grad():
            net(crops)
        handle.remove()
        expected = feature_homogeneity(seen[0], 3).mean().item()
        assert block["homogeneity_input"]["3"]["mean"] == pytest.approx(expected, rel=1e-5)
