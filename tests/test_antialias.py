"""Antialiasing: the blur against an independent reference, the rewrite rules on built-in, timm
and torchvision models (keys, shapes, strict loading), exact APS invariance, and a measured
consistency gain."""

from __future__ import annotations

import copy
import math

import kornia
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from invlab.config import ConfigError
from models import BlurDownsample, PolyphaseDownsample


def reference_blur(x: torch.Tensor, k: int, stride: int, pad_mode: str) -> torch.Tensor:
    """Zhang's BlurPool written out: binomial row from math.comb, asymmetric pad, strided
    depthwise conv."""
    row = torch.tensor([math.comb(k - 1, i) for i in range(k)], dtype=torch.float64)
    filt = torch.outer(row, row) / row.sum() ** 2
    lo, hi = (k - 1) // 2, k // 2  # k // 2 == ceil((k - 1) / 2)
    mode = "constant" if pad_mode == "zeros" else pad_mode
    xp = F.pad(x.double(), (lo, hi, lo, hi), mode=mode)
    c = x.shape[1]
    return F.conv2d(xp, filt.expand(c, 1, k, k), stride=stride, groups=c).float()


def strided_layers(model: nn.Module) -> list[str]:
    """Conv/pool layers still subsampling on their own (independent of models.antialias)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            s = m.stride if m.stride is not None else m.kernel_size
            if max(s if isinstance(s, tuple) else (s,)) > 1:
                out.append(name)
    return out


@pytest.mark.parametrize("pad_mode", ["reflect", "replicate", "circular", "zeros"])
@pytest.mark.parametrize("k", range(1, 8))
def test_blur_downsample_matches_reference(k: int, pad_mode: str) -> None:
    torch.manual_seed(k)
    for size, stride in [(16, 2), (15, 2), (17, 3)]:
        x = torch.randn(2, 3, size, size)
        out = BlurDownsample(stride, k, pad_mode)(x)
        assert out.shape[-1] == math.ceil(size / stride)
        torch.testing.assert_close(out, reference_blur(x, k, stride, pad_mode), atol=1e-5, rtol=0)


def test_blur_reflect_falls_back_to_replicate_on_tiny_maps() -> None:
    x = torch.randn(2, 3, 2, 2)
    out = BlurDownsample(2, 5, "reflect")(x)
    torch.testing.assert_close(out, reference_blur(x, 5, 2, "replicate"), atol=1e-5, rtol=0)
    # circular padding wider than the map wraps around: a 1x1 map is a constant field
    one = torch.randn(2, 3, 1, 1)
    torch.testing.assert_close(BlurDownsample(1, 7, "circular")(one), one)
    x3 = torch.randn(1, 1, 3, 3)
    tiled = BlurDownsample(1, 7, "circular")(x3)
    torch.testing.assert_close(
        tiled, BlurDownsample(1, 7, "circular")(x3.repeat(1, 1, 3, 3))[..., 3:6, 3:6]
    )


def test_blur_filter_is_binomial_and_non_persistent() -> None:
    blur = BlurDownsample(2, 5)
    expected = torch.tensor([1.0, 4, 6, 4, 1]) / 16
    torch.testing.assert_close(blur.filt[0, 0], torch.outer(expected, expected))
    assert blur.state_dict() == {}


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_blur_zeros_equals_kornia_reflect_differs_only_at_border(k: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 16, 16)
    ours = BlurDownsample(2, k, "zeros")(x)
    theirs = kornia.filters.BlurPool2D(k, stride=2)(x)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)  # same asymmetric padding
    # reflect: equal where the filter window lies inside the image, different at the border
    lo = (k - 1) // 2
    idx = torch.arange(ours.shape[-1])
    inside = (idx * 2 - lo >= 0) & (idx * 2 - lo + k - 1 <= 15)
    reflect = BlurDownsample(2, k, "reflect")(x)
    interior = inside[:, None] & inside[None, :]
    torch.testing.assert_close(reflect[..., interior], theirs[..., interior], atol=1e-6, rtol=0)
    # on a constant map the reflect blur stays constant, kornia's zero padding darkens the border
    ones = torch.ones(1, 1, 16, 16)
    torch.testing.assert_close(BlurDownsample(2, k, "reflect")(ones), torch.ones(1, 1, 8, 8))
    border = kornia.filters.BlurPool2D(k, stride=2)(ones)[0, 0]
    assert (~interior).any() == (k > 2)  # at k=2 on 16 px no window reaches the padding
    if k > 2:
        assert border[0, 0] < 0.9 and border[~interior].max() < 1
    torch.testing.assert_close(border[interior], torch.ones(int(interior.sum())))


def test_polyphase_keeps_max_norm_component_per_sample() -> None:
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 1::2, 0::2] = 3.0  # component (1, 0) dominates sample 0
    x[1, 0, 0::2, 1::2] = -5.0  # component (0, 1) dominates sample 1 (norm, not sign)
    x[1, 0, 0, 0] = 4.0
    out = PolyphaseDownsample(2)(x)
    torch.testing.assert_close(out[0], x[0, :, 1::2, 0::2])
    torch.testing.assert_close(out[1], x[1, :, 0::2, 1::2])


def test_polyphase_is_shift_equivariant_up_to_a_circular_shift() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8)
    aps = PolyphaseDownsample(2)
    y = aps(x)
    for shift in [(1, 0), (0, 1), (1, 1), (3, 5)]:
        ys = aps(torch.roll(x, shift, (2, 3)))
        # the kept component is the same one, circularly shifted by floor(shift / 2) (or more)
        matches = [
            torch.equal(ys, torch.roll(y, (a, b), (2, 3))) for a in range(4) for b in range(4)
        ]
        assert any(matches)


def _cnn(downsample: str, **kw) -> nn.Module:
    cfg = {"name": "cnn", "widths": [8, 16, 16], "downsample": downsample, **kw}
    return models.build(cfg, num_classes=10).eval()


def _check_rewrite(base: nn.Module, method: str, x: torch.Tensor, **kw) -> nn.Module:
    state = base.state_dict()
    with torch.no_grad():
        y = base(x)
    plan = models.antialias(base, method, **kw, dry_run=True)
    assert [p for p, _, _ in plan] == strided_layers(base)
    aa = models.antialias(copy.deepcopy(base), method, **kw)
    assert strided_layers(aa) == []
    assert set(aa.state_dict()) == set(state)
    aa.load_state_dict(state, strict=True)
    with torch.no_grad():
        ya = aa(x)
    assert ya.shape == y.shape
    assert not torch.allclose(ya, y)  # the rewrite did change the computation
    return aa


@pytest.mark.parametrize("method", ["blur", "aps"])
@pytest.mark.parametrize(("downsample", "kernel"), [("conv", 3), ("maxpool", 2), ("avgpool", 3)])
def test_antialias_builtin_cnn(downsample: str, kernel: int, method: str) -> None:
    torch.manual_seed(0)
    base = _cnn(downsample, down_kernel=kernel)
    aa = _check_rewrite(base, method, torch.randn(2, 3, 32, 32), filt_size=3)
    kinds = {type(m).__name__ for m in aa.modules()}
    assert ("PolyphaseDownsample" in kinds) == (method == "aps")
    assert "BlurDownsample" in kinds


def test_conv_norm_act_block_blurs_after_its_activation() -> None:
    """Zhang's ConvBlurPool: conv(s1) -> norm -> ReLU -> blur-downsample. With filter size 1
    the block computes what the strided block computed (eval-mode BatchNorm is per pixel)."""
    torch.manual_seed(0)
    base = _cnn("conv")
    for m in base.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    plan = models.antialias(base, "blur", filt_size=3, dry_run=True)
    assert plan[0][2] == "Conv2d(s1) ... ReLU + Blur(k3, s2, reflect)"
    x = torch.randn(2, 3, 32, 32)
    split = models.antialias(copy.deepcopy(base), "blur", filt_size=1)
    assert split.features.down1.conv.stride == (1, 1)
    with torch.no_grad():
        torch.testing.assert_close(split(x), base(x))
    blurred = models.antialias(copy.deepcopy(base), "blur", filt_size=3)
    block = blurred.features.down1
    with torch.no_grad():
        h = torch.randn(1, 8, 16, 16).relu()
        full = torch.relu(block.norm(block.conv(h)))  # the block's activation at full resolution
        want = BlurDownsample(2, 3, "reflect")(full)
        torch.testing.assert_close(block(h), want)
    # A conv that is not the head of a conv-norm-act block keeps the blur right after it.
    lone = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    models.antialias(lone, "blur", filt_size=3)
    assert isinstance(lone[0].downsample, BlurDownsample) and type(lone[1]) is nn.ReLU
    shared = nn.ReLU()  # one activation module used by two blocks: not a place for the blur
    two = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), shared),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), shared),
    )
    models.antialias(two, "blur", filt_size=3)
    assert isinstance(two[0][0].downsample, BlurDownsample) and type(shared) is nn.ReLU


def test_maxblur_rewrites_pools_only() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    pooled = _cnn("maxpool", down_kernel=3)
    a = models.antialias(copy.deepcopy(pooled), "blur", 4)
    b = models.antialias(copy.deepcopy(pooled), "maxblur", 4)
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)  # MaxBlurPool on every max-pool
    strided = _cnn("conv")
    plan = models.antialias(strided, "maxblur", dry_run=True)
    assert plan and all(r == "kept (maxblur: pools only)" for _, _, r in plan)
    before = strided_layers(strided)
    assert strided_layers(models.antialias(strided, "maxblur")) == before


@pytest.mark.parametrize("name", ["timm:resnet18", "tv:resnet18"])
def test_antialias_resnet18_blurs_shortcuts_too(name: str) -> None:
    torch.manual_seed(0)
    base = models.build({"name": name, "small_input": True}, num_classes=10).eval()
    aa = _check_rewrite(base, "blur", torch.randn(2, 3, 32, 32), filt_size=4)
    shortcut = aa.get_submodule("layer2.0.downsample.0")
    assert shortcut.stride == (1, 1) and isinstance(shortcut.downsample, BlurDownsample)
    assert shortcut.downsample.stride == 2 and shortcut.downsample.filt_size == 4


def test_antialias_torchvision_vgg() -> None:
    torch.manual_seed(0)
    # VGG's classifier is sized for 224 px; a small one keeps the test light, the features
    # (five 2x2 max-pools, 32 px -> 1 px) are torchvision's.
    base = models.build({"name": "tv:vgg11_bn"}, num_classes=10)
    base.classifier = nn.Linear(512 * 7 * 7, 10)
    aa = _check_rewrite(base.eval(), "blur", torch.randn(2, 3, 32, 32), filt_size=3)
    assert sum(isinstance(m, BlurDownsample) for m in aa.modules()) == 5


@pytest.mark.parametrize("name", ["timm:mobilenetv3_small_050", "timm:efficientnet_b0"])
def test_antialias_timm_mobile_nets(name: str) -> None:
    torch.manual_seed(0)
    base = models.build({"name": name}, num_classes=10).eval()
    aa = _check_rewrite(base, "blur", torch.randn(2, 3, 32, 32), filt_size=3)
    depthwise = [m for m in aa.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert any(isinstance(getattr(m, "downsample", None), BlurDownsample) for m in depthwise)


def test_nothing_to_rewrite_without_downsampling() -> None:
    model = _cnn("none")
    assert models.antialias(model, dry_run=True) == []
    assert models.antialias(model) is model


def test_skip_first_keeps_the_highest_resolution_layers() -> None:
    base = models.build({"name": "tv:resnet18", "small_input": False}, num_classes=10)
    plan = models.antialias(base, skip_first=True, dry_run=True)
    kept = [p for p, _, r in plan if r.startswith("kept")]
    assert kept == ["conv1"]  # 32 px input: conv1 sees 32x32, the max-pool 16x16
    aa = models.antialias(base, skip_first=True)
    assert strided_layers(aa) == ["conv1"]
    cnn = models.antialias(_cnn("conv"), skip_first=True)
    assert strided_layers(cnn) == ["features.down1.conv"]


@pytest.mark.parametrize(
    ("downsample", "filt_size"), [("conv", 1), ("conv", 3), ("maxpool", 3), ("avgpool", 2)]
)
def test_aps_with_circular_padding_is_exactly_shift_invariant(
    downsample: str, filt_size: int
) -> None:
    torch.manual_seed(0)
    cfg = {
        "name": "cnn",
        "widths": [8, 16, 16],
        "downsample": downsample,
        "down_kernel": 3,
        "padding_mode": "circular",
        "antialias": {"method": "aps", "filt_size": filt_size},
    }
    model = models.build(cfg, num_classes=10).eval()
    for m in model.modules():  # non-trivial eval-mode BatchNorm
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 32, 32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y = model(x)
        worst = max(
            (model(torch.roll(x, torch.randint(0, 32, (2,), generator=gen).tolist(), (2, 3))) - y)
            .abs()
            .max()
            .item()
            for _ in range(8)
        )
        baseline = models.build({**cfg, "antialias": {"method": "none"}}, 10).eval()
        base_change = (baseline(torch.roll(x, (1, 1), (2, 3))) - baseline(x)).abs().max().item()
    assert worst <= 1e-5
    assert base_change > 1e-3  # the same network with plain subsampling is not invariant


def test_blur_improves_one_pixel_shift_consistency() -> None:
    """Paired comparison on the same random-init weights: relative logit change under a 1-px
    circular shift of smooth inputs, baseline vs BlurPool (filter 4)."""
    diffs = []
    for seed in range(3):
        torch.manual_seed(seed)
        cfg = {
            "name": "cnn",
            "widths": [8, 16, 32],
            "downsample": "maxpool",
            "padding_mode": "circular",
        }
        base = models.build(cfg, 10).eval()
        blur = models.antialias(copy.deepcopy(base), "blur", 4, "circular")
        noise = torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
        x = 3 * kornia.filters.gaussian_blur2d(noise, (9, 9), (2.0, 2.0), border_type="circular")
        with torch.no_grad():
            change = []
            for net in (base, blur):
                a, b = net(x), net(torch.roll(x, 1, 3))
                change.append((a - b).norm(dim=1) / a.norm(dim=1))
        diffs.append(change[0] - change[1])
        assert change[1].mean() < 0.5 * change[0].mean()
    d = torch.cat(diffs)
    assert d.mean() > 5 * d.std() / math.sqrt(len(d))  # paired gain far beyond the noise


def test_build_applies_antialias_from_config() -> None:
    cfg = {
        "name": "cnn_tiny",
        "antialias": {"method": "blur", "filt_size": 5, "pad_mode": "replicate"},
    }
    model = models.build(cfg, 10)
    blur = model.get_submodule("features.down1.act").downsample
    assert (blur.filt_size, blur.pad_mode, blur.stride) == (5, "replicate", 2)
    plain = models.build({"name": "cnn_tiny"}, 10)
    assert strided_layers(plain) == ["features.down1.conv"]


def test_native_timm_antialias_leaves_shortcut_strided() -> None:
    cfg = {"name": "timm:resnet18", "antialias": {"method": "blur", "filt_size": 3, "native": True}}
    model = models.build(cfg, 10).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert type(model.layer2[0].aa).__name__ == "TimmBlurPool2d"
    assert model.layer2[0].downsample[0].stride == (2, 2)  # timm does not blur the shortcut
    with pytest.raises(ConfigError, match="odd filt_size"):
        models.build({**cfg, "antialias": {**cfg["antialias"], "filt_size": 4}}, 10)
    with pytest.raises(ConfigError, match="timm models only"):
        models.build({"name": "cnn", "antialias": {"method": "blur", "native": True}}, 10)
