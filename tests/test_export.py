"""invlab export: plain safetensors + model config JSON that reload to identical logits, in a
fresh built-in CNN and through timm.create_model(pretrained=True, pretrained_cfg_overlay=...)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import models
from tests.conftest import REPO, tiny_config
from train.cli import main
from train.fit import fit
from train.module import Classifier


def _logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def test_export_builtin_cnn_reloads_to_identical_logits(tmp_path: Path) -> None:
    run = fit(tiny_config(tmp_path, "name=cnn", "eval.enabled=false"))
    out = tmp_path / "export" / "cnn.safetensors"
    umask = os.umask(0o027)
    try:
        assert main(["export", str(run.last_checkpoint), str(out)]) == 0
    finally:
        os.umask(umask)
    for path in (out, out.with_suffix(".json")):  # readable by the group, as open() would
        assert path.stat().st_mode & 0o777 == 0o640, path
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["model"]["name"] == "cnn" and meta["num_classes"] == 10
    assert meta["input"]["image_size"] == 16 and meta["timm"]["loadable"] is False

    fresh = models.build({**meta["model"], "init_from": None}, num_classes=meta["num_classes"])
    fresh.load_state_dict(load_file(str(out)), strict=True)
    trained = Classifier.load_from_checkpoint(run.last_checkpoint, map_location="cpu").net
    x = torch.randn(4, 3, 16, 16)
    assert not torch.equal(_logits(trained, x), _logits(models.build(meta["model"], 10), x))
    assert torch.equal(_logits(fresh, x), _logits(trained, x))
    before = out.read_bytes()
    assert main(["export", str(run.last_checkpoint), str(out)]) == 2  # exists: kept as it was
    assert out.read_bytes() == before


def test_export_timm_model_loads_with_timm_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the weights come from the file, never a download
    cfg = tiny_config(
        tmp_path,
        "name=r10",
        "model.name=timm:resnet10t",
        "model.small_input=false",
        "trainer.max_steps=1",
        "eval.enabled=false",
    )
    run = fit(cfg)
    assert run.metrics["global_step"] == 1
    out = tmp_path / "r10.safetensors"
    assert main(["export", str(run.last_checkpoint), str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())["timm"]
    assert meta["loadable"] is True and meta["model_name"] == "resnet10t"

    n = 10
    model = timm.create_model(
        "resnet10t",
        pretrained=True,
        num_classes=n,
        pretrained_cfg_overlay=dict(file=str(out), num_classes=n),
    )
    from_json = timm.create_model(meta["model_name"], **meta["kwargs"])
    trained = Classifier.load_from_checkpoint(run.last_checkpoint, map_location="cpu").net
    fresh = timm.create_model("resnet10t", pretrained=False, num_classes=n)
    x = torch.randn(2, 3, 32, 32)
    expected = _logits(trained, x)
    assert not torch.equal(_logits(fresh, x), expected)
    assert torch.equal(_logits(model, x), expected)
    assert torch.equal(_logits(from_json, x), expected)

    # The README's block, as written, next to the exported files.
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- timm-round-trip -->\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    out.with_suffix(".json").replace(tmp_path / "m.json")
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert torch.equal(_logits(scope["model"], x), expected)
    data = scope["data_config"]
    assert tuple(data["mean"]) == tuple(cfg.data.mean)  # not ImageNet's statistics
    assert tuple(data["std"]) == tuple(cfg.data.std)
    assert tuple(data["input_size"]) == (3, 16, 16)


def test_exported_weights_are_evaluated_as_themselves_and_bare_ones_must_be_described(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from omegaconf import OmegaConf

    run = fit(tiny_config(tmp_path, "name=r", "data.mean=[0.4,0.5,0.6]", "data.std=[0.2,0.3,0.4]"))
    out = tmp_path / "r.safetensors"
    assert main(["export", str(run.last_checkpoint), str(out)]) == 0
    # A user's data + evaluation config: nothing about the model or its normalisation.
    stored = run.metrics["config"]
    data = {k: v for k, v in stored["data"].items() if k not in ("mean", "std")}
    data_yaml = tmp_path / "data.yaml"
    OmegaConf.save({"data": data, "eval": stored["eval"]}, data_yaml)
    assert (
        main(["eval", str(run.last_checkpoint), str(data_yaml), "--out", str(tmp_path / "a")]) == 0
    )
    assert main(["eval", str(out), str(data_yaml), "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "invariance.json").read_text()) for d in "ab")
    assert a["splits"] == b["splits"]
    assert b["config"]["data"]["mean"] == [0.4, 0.5, 0.6]
    assert b["config"]["model"] == stored["model"] | {"init_from": None}
    # Without r.json nothing says which network the weights belong to: refused, not guessed.
    out.with_suffix(".json").unlink()
    capsys.readouterr()
    assert main(["eval", str(out), "--out", str(tmp_path / "c")]) == 2
    assert "bare weights file" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
