"""Pretrained models evaluated as themselves: timm's own loading (``model.pretrained=true``),
here from a ``pretrained_cfg_overlay`` file the test writes (timm's hub needs the network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import models
from invlab.config import ConfigError


def _overlay_weights(tmp_path: Path, num_classes: int = 3) -> tuple[Path, torch.nn.Module]:
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=num_classes).eval()
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    return path, reference


def test_timm_pretrained_weights_load_through_timm_and_match_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # from the file, never a download
    path, reference = _overlay_weights(tmp_path)
    cfg = {
        "name": "timm:resnet10t",
        "pretrained": "true",
        "small_input": False,
        "kwargs": {"pretrained_cfg_overlay": {"file": str(path), "num_classes": 3}},
    }
    net = models.build(cfg, num_classes=3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))
    fresh = models.build({**cfg, "pretrained": None}, num_classes=3).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(x), reference(x))


def test_pretrained_true_is_for_library_models_and_says_what_failed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="built-in model"):
        models.build({"name": "cnn", "pretrained": "true"}, num_classes=3)
    missing = {"file": str(tmp_path / "none.safetensors"), "num_classes": 3}
    cfg = {"name": "timm:resnet10t", "pretrained": "true", "small_input": False}
    with pytest.raises(ConfigError, match="could not load the pretrained weights"):
        models.build({**cfg, "kwargs": {"pretrained_cfg_overlay": missing}}, num_classes=3)


def test_pretrained_preprocessing_is_timms_own(tmp_path: Path) -> None:
    from models.external import pretrained_preprocessing

    overlay = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "input_size": [3, 48, 48]}
    pre = pretrained_preprocessing("resnet10t", {"pretrained_cfg_overlay": overlay})
    assert pre["mean"] == [0.1, 0.2, 0.3] and pre["std"] == [0.4, 0.5, 0.6]
    assert pre["input_size"] == [3, 48, 48]
    plain = pretrained_preprocessing("resnet10t", {})
    assert plain["mean"] == pytest.approx([0.485, 0.456, 0.406])  # ImageNet's, from timm
    assert plain["input_size"] == [3, 176, 176] and plain["interpolation"] == "bicubic"


def test_a_pretrained_model_brings_its_own_input_unless_the_config_sets_it(
    tmp_path: Path,
) -> None:
    from train.config import load_config
    from train.preprocessing import describe

    overlay = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "input_size": [3, 48, 48]}
    base = [
        "model.name=timm:resnet10t",
        "model.pretrained=true",
        *(f"model.kwargs.pretrained_cfg_overlay.{k}={v}" for k, v in overlay.items()),
    ]
    cfg = load_config(overrides=base)
    assert list(cfg.data.mean) == [0.1, 0.2, 0.3] and list(cfg.data.std) == [0.4, 0.5, 0.6]
    assert cfg.data.image_size == 48
    assert describe(cfg)["overridden_by_config"] == []
    # a value the config sets wins, and the report says so
    mine = load_config(overrides=[*base, "data.image_size=32", "data.mean=[0.5,0.5,0.5]"])
    assert mine.data.image_size == 32 and list(mine.data.mean) == [0.5, 0.5, 0.5]
    assert list(mine.data.std) == [0.4, 0.5, 0.6]
    assert describe(mine)["overridden_by_config"] == ["image_size", "mean"]
    # data.preprocessing=config: the config's values only
    own = load_config(overrides=[*base, "data.preprocessing=config"])
    assert own.data.image_size == 32 and list(own.data.mean) == [0.5, 0.5, 0.5]
    assert describe(own) is None
    # models without pretrained weights of their library keep the config's input
    plain = load_config(overrides=["model.name=timm:resnet10t"])
    assert plain.data.image_size == 32 and describe(plain) is None
