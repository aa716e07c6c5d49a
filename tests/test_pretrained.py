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
