"""Registry and factory: built-in CNN shapes, padding and heads, timm/torchvision with the
small-input stem, name errors, weights round trips and fine-tuning initialisation."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import models
from invlab.config import ConfigError
from models.cnn import CNN
from models.registry import MODELS
from train.config import load_config


def _x(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", models.list_models())
def test_every_builtin_gives_logits(name: str) -> None:
    model = models.build({"name": name}, num_classes=7)
    assert model(_x()).shape == (2, 7)
    assert isinstance(list(model.modules())[-1], nn.Linear)


def test_registry_lists_and_registers() -> None:
    assert {"cnn", "cnn_tiny", "allconv", "vgg_small"} <= set(models.list_models())

    @models.register_model
    def _probe_net(num_classes: int = 10, in_chans: int = 3, **arch) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        assert "_probe_net" in models.list_models()
        assert models.build({"name": "_probe_net"}, 4)(_x()).shape == (2, 4)
    finally:
        MODELS.remove("_probe_net")


@pytest.mark.parametrize(
    ("downsample", "kernel", "stride", "final"),
    [
        ("conv", 3, 2, 8),
        ("conv", 4, 2, 8),
        ("maxpool", 2, 2, 8),
        ("maxpool", 3, 2, 8),
        ("avgpool", 3, 2, 8),
        ("conv", 3, 3, 4),  # 32 -> 11 -> 4
        ("maxpool", 3, 3, 4),
        ("none", 3, 2, 32),
    ],
)
def test_downsample_kinds_reach_the_expected_resolution(
    downsample: str, kernel: int, stride: int, final: int
) -> None:
    model = CNN(5, widths=[4, 8, 8], downsample=downsample, down_kernel=kernel, down_stride=stride)
    assert model.features(_x()).shape == (2, 8, final, final)
    assert model(_x()).shape == (2, 5)


def test_flatten_and_gap_heads() -> None:
    gap = CNN(10, widths=[8, 16], head="gap")
    flat = CNN(10, widths=[8, 16], head="flatten")
    assert gap.fc.in_features == 16
    assert flat.fc.in_features == 16 * 16 * 16  # 16 channels at 16x16 after one stride-2 stage
    assert flat(_x()).shape == gap(_x()).shape == (2, 10)
    small = models.build({"name": "cnn_tiny", "head": "flatten", "kwargs": {"input_size": 16}}, 3)
    assert small.fc.in_features == 16 * 8 * 8 and small(_x(size=16)).shape == (2, 3)
    with pytest.raises(ValueError, match="input_size"):
        flat(_x(size=24))
    assert gap(_x(size=24)).shape == (2, 10)  # global pooling takes any size


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_padding_mode_reaches_every_layer(mode: str) -> None:
    model = CNN(10, widths=[4, 8], downsample="maxpool", down_kernel=3, padding_mode=mode)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.padding_mode == mode for c in convs)
    assert model.get_submodule("features.down1").padding_mode == mode
    # no downsampling + circular padding + GAP: exactly invariant to circular shifts
    flat = CNN(10, widths=[4, 8], downsample="none", padding_mode=mode).eval()
    x = _x()
    with torch.no_grad():
        change = (flat(torch.roll(x, (3, 5), (2, 3))) - flat(x)).abs().max().item()
    assert (change <= 1e-5) == (mode == "circular")


def test_presets_fix_their_architecture() -> None:
    tiny = models.build({"name": "cnn_tiny", "widths": [64, 128]}, 10)
    assert tiny.fc.in_features == 16
    vgg = models.build({"name": "vgg_small"}, 10)
    assert vgg.head_kind == "flatten" and vgg.fc.in_features == 128 * 8 * 8
    assert "vgg_small" in models.describe()


@pytest.mark.parametrize("name", ["timm:resnet18", "tv:resnet18"])
def test_resnet18_small_input_stem(name: str) -> None:
    model = models.build({"name": name, "small_input": True}, num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(_x()).shape == (2, 10)
    big = models.build({"name": name, "small_input": False}, num_classes=10)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.stride == (2, 2)


def test_small_input_other_stems() -> None:
    small = {"small_input": True}
    mnv3 = models.build({"name": "timm:mobilenetv3_small_050", **small}, 10)
    assert mnv3.conv_stem.stride == (1, 1) and mnv3(_x()).shape == (2, 10)
    tv_mnv2 = models.build({"name": "tv:mobilenet_v2", **small}, 10)
    assert tv_mnv2.features[0][0].stride == (1, 1)
    with pytest.raises(ConfigError, match="small_input=false"):
        models.build({"name": "tv:vit_b_16", **small}, 10)


@pytest.mark.parametrize("name", ["timm:resnet10t", "tv:resnet18"])
def test_a_named_architecture_is_built_as_itself_by_default(name: str) -> None:
    """No default rewrites a library model: same modules and the same logits as the library's
    own constructor (the stride-1 stem would keep parameter names and shapes, and silently
    evaluate another network)."""
    import timm
    import torchvision

    torch.manual_seed(0)
    ours = models.build({"name": name}, 10).eval()
    lib = name.split(":")[1]
    plain = (
        timm.create_model(lib, num_classes=10)
        if name.startswith("timm:")
        else torchvision.models.get_model(lib, num_classes=10)
    ).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), plain(x))
    assert str(ours) == str(plain)


@pytest.mark.parametrize(
    ("name", "hint"),
    [("cnnn", "Did you mean 'cnn'"), ("timm:resnet181", "resnet18"), ("tv:resnet181", "resnet18")],
)
def test_unknown_model_names(name: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        models.build({"name": name}, 10)
    assert hint in str(err.value)
    if ":" not in name:
        assert (
            "cnn_tiny" in str(err.value) and "timm:" in str(err.value) and "tv:" in str(err.value)
        )


def test_export_and_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    src = models.build({"name": "cnn_tiny"}, 10).eval()
    path = models.export_weights(src, tmp_path / "w.safetensors")
    dst = models.build({"name": "cnn_tiny"}, 10).eval()
    assert not torch.equal(dst(_x()), src(_x()))
    result = models.load_weights(dst, path)
    assert result == models.LoadResult()
    assert torch.equal(dst(_x()), src(_x()))
    # an antialiased model takes the baseline's weights strictly (same keys)
    aa = models.build({"name": "cnn_tiny", "antialias": {"method": "blur"}}, 10)
    models.load_weights(aa, path, strict=True)


def test_exported_weights_load_in_timm(tmp_path) -> None:
    import timm
    from timm.models import load_checkpoint

    src = models.build({"name": "timm:resnet18", "small_input": False}, 10).eval()
    path = models.export_weights(src, tmp_path / "r18.safetensors")
    dst = timm.create_model("resnet18", num_classes=10).eval()
    load_checkpoint(dst, str(path), strict=True)
    torch.testing.assert_close(dst(_x()), src(_x()), atol=0, rtol=0)


def test_lightning_and_wrapped_checkpoints(tmp_path) -> None:
    src = models.build({"name": "cnn_tiny"}, 10).eval()
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in src.state_dict().items()},
        "hyper_parameters": {"config": {}, "num_classes": 10},
        "epoch": 3,
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    torch.save({f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}, tmp_path / "w.pt")
    for name in ("last.ckpt", "w.pt"):
        dst = models.build({"name": "cnn_tiny"}, 10).eval()
        models.load_weights(dst, tmp_path / name)
        assert torch.equal(dst(_x()), src(_x()))


def test_load_errors(tmp_path) -> None:
    model = models.build({"name": "cnn_tiny"}, 10)
    with pytest.raises(ConfigError, match="not found"):
        models.load_weights(model, tmp_path / "nope.pt")
    other = models.build({"name": "cnn", "widths": [8, 16, 32]}, 10)
    path = models.export_weights(other, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError) as err:
        models.load_weights(model, path)
    msg = str(err.value)
    assert "unexpected keys" in msg and "features.down2.conv.weight" in msg
    assert "shape mismatches" in msg and "fc.weight (10, 32) vs (10, 16)" in msg
    with pytest.raises(ConfigError, match="not found"):
        models.build({"name": "cnn_tiny", "pretrained": str(tmp_path / "missing.safetensors")}, 10)


def test_init_from_other_num_classes_skips_only_the_head(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    src = models.build({"name": "cnn_tiny"}, 10)
    path = models.export_weights(src, tmp_path / "src.safetensors")
    fresh = models.build({"name": "cnn_tiny"}, 4)
    result = models.load_weights(fresh, path, allow_head_mismatch=True)
    assert result.skipped == ["fc.bias", "fc.weight"] and not result.missing
    with caplog.at_level(logging.INFO, logger="models"):
        model = models.build({"name": "cnn_tiny", "init_from": str(path)}, 4)
    assert "fc.weight" in caplog.text
    own, theirs = model.state_dict(), src.state_dict()
    same = {k for k in own if own[k].shape == theirs[k].shape and torch.equal(own[k], theirs[k])}
    assert set(own) - same == {"fc.weight", "fc.bias"}
    with pytest.raises(ConfigError, match="shape mismatches"):  # the head only, not the body
        models.build({"name": "cnn", "widths": [8, 32], "init_from": str(path)}, 4)


def test_build_from_loaded_config_and_channels_last() -> None:
    cfg = load_config(overrides=["model.name=cnn_tiny", "model.channels_last=true"])
    model = models.build(cfg.model, num_classes=3)
    conv = model.get_submodule("features.stage0.0.conv")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model(_x()).shape == (2, 3)


def test_describe() -> None:
    listing = models.describe()
    assert all(name in listing for name in models.list_models()) and "timm:" in listing
    text = models.describe("cnn")
    assert "features.down1.conv" in text and "Blur(k4, s2, reflect)" in text
    text = models.describe({"name": "cnn", "downsample": "maxpool", "antialias": {"method": "aps"}})
    assert "PaddedMaxPool2d(k3, s2)" in text and "APS(s2)" in text
    assert "layer2.0.downsample.0" in models.describe("tv:resnet18")
