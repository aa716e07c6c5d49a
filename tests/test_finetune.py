"""Fine-tuning controls: frozen parameters and BatchNorm statistics, learning-rate multipliers,
and the loading report of model.init_from (strict by default, relaxed on request)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

import models
from invlab.config import ConfigError
from tests.conftest import tiny_config
from train.fit import fit
from train.module import Classifier


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


class _Groups(L.Callback):
    """The optimizer's param groups as training starts: (lr_mult, initial lr, parameter names)."""

    groups: list[tuple[float, float, set[str]]]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = {id(p): n for n, p in pl_module.net.named_parameters()}
        self.groups = [
            (g["lr_mult"], g["initial_lr"], {names[id(p)] for p in g["params"]})
            for g in trainer.optimizers[0].param_groups
        ]


def test_freeze_keeps_weights_and_bn_statistics_and_lr_mult_makes_groups(tmp_path: Path) -> None:
    src = fit(tiny_config(tmp_path, "name=src", "eval.enabled=false"))
    groups = _Groups()
    cfg = tiny_config(
        tmp_path,
        "name=ft",
        "eval.enabled=false",
        "trainer.max_epochs=2",
        f"model.init_from={src.last_checkpoint}",
        "model.freeze=[features.stage0.*]",
        "optim.lr_mult={'fc.*': 10, 'features.down1.*': 0.5}",
    )
    ft = fit(cfg, callbacks=[groups])
    before, after = _state(src.last_checkpoint), _state(ft.last_checkpoint)
    frozen = [k for k in before if k.startswith("net.features.stage0.")]
    assert any("running_mean" in k for k in frozen) and any("conv.weight" in k for k in frozen)
    for key in frozen:  # weights and BatchNorm buffers bit-identical after 4 steps
        assert torch.equal(before[key], after[key]), key
    for key in ("conv.weight", "norm.running_mean", "norm.running_var"):
        key = f"net.features.stage1.0.{key}"
        assert not torch.equal(before[key], after[key]), key
    assert not torch.equal(before["net.fc.weight"], after["net.fc.weight"])

    lr = cfg.optim.lr
    by_mult: dict[float, set[str]] = {}
    for mult, initial_lr, names in groups.groups:
        assert initial_lr == pytest.approx(lr * mult)
        by_mult.setdefault(mult, set()).update(names)
    assert by_mult[10.0] == {"fc.weight", "fc.bias"}
    assert by_mult[0.5] == {
        f"features.down1.{k}" for k in ("conv.weight", "norm.weight", "norm.bias")
    }
    assert not any(n.startswith("features.stage0.") for names in by_mult.values() for n in names)
    assert "features.stage1.0.conv.weight" in by_mult[1.0]

    report = json.loads((ft.run_dir / "load_report.json").read_text())
    assert report["matched"] == len(before) and report["head_reinitialised"] is False
    assert report["missing"] == report["unexpected"] == report["shape_mismatch"] == []
    assert sorted(report["matched_keys"]) == sorted(k.removeprefix("net.") for k in before)
    assert report["frozen"] and all(n.startswith("features.stage0.") for n in report["frozen"])
    params = models.build({"name": "cnn", "widths": [8, 16]}, 10).named_parameters()
    stage0 = [n for n, _ in params if n.startswith("features.stage0.")]
    assert sorted(report["frozen"]) == sorted(stage0)
    assert any("Initialised from" in n and "load_report.json" in n for n in ft.notes)


def test_load_report_of_a_replaced_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    four = models.build({"name": "cnn", "widths": [8, 16]}, num_classes=4)
    path = models.export_weights(four, tmp_path / "four.safetensors")
    result = fit(tiny_config(tmp_path, "name=ft", "eval.enabled=false", f"model.init_from={path}"))
    report = json.loads((result.run_dir / "load_report.json").read_text())
    assert report["head"] == "fc" and report["head_reinitialised"] is True
    assert report["shape_mismatch"] == ["fc.bias", "fc.weight"]
    assert report["matched"] == len(four.state_dict()) - 2
    assert report["init_from"] == str(path)


def test_init_strict_refuses_other_shapes_unless_relaxed(tmp_path: Path) -> None:
    torch.manual_seed(2)
    other = models.build({"name": "cnn", "widths": [8, 32]}, num_classes=10)
    path = models.export_weights(other, tmp_path / "other.safetensors")
    strict = tiny_config(tmp_path, f"model.init_from={path}")
    with pytest.raises(ConfigError, match="init_strict=false") as err:
        Classifier(strict, num_classes=10)
    assert "features.stage1.0.conv.weight (32, 8, 3, 3) vs (16, 8, 3, 3)" in str(err.value)

    relaxed = tiny_config(tmp_path, f"model.init_from={path}", "model.init_strict=false")
    clf = Classifier(relaxed, num_classes=10)
    report = clf.load_report
    assert report is not None and "features.stage1.0.conv.weight" in report["shape_mismatch"]
    assert report["head_reinitialised"] is True  # fc is (10, 32) in the file, (10, 16) here
    theirs = other.state_dict()
    own = clf.net.state_dict()
    loaded = [k for k in own if k in theirs and own[k].shape == theirs[k].shape]
    assert report["matched"] == len(loaded) > 0
    assert all(torch.equal(own[k], theirs[k]) for k in loaded)
