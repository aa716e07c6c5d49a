"""`fit(cfg)` end to end on the shrunk default config: artefacts, reproducibility, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from invlab.config import Config, ConfigError
from tests.conftest import DEFAULT_YAML, tiny_config
from train.config import load_config
from train.fit import fit
from train.module import Classifier


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_fit_writes_every_artefact(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "augment.presets=[translate,flip]")
    result = fit(cfg)
    run = tmp_path / "default"
    assert result.run_dir == run
    for rel in ("config.yaml", "metrics.json", "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (run / rel).is_file(), rel
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert (run / "reports" / "augment_samples.png").is_file()
    assert (run / "reports" / "data_samples.png").is_file()
    assert list((run / "reports").glob("invariance_epoch*.json"))

    metrics = json.loads((run / "metrics.json").read_text())
    heldout = {"typical", "position", "scale", "background", "atypical"}
    assert set(metrics["splits"]) == {"val", *heldout}
    for split in metrics["splits"].values():
        assert 0.0 <= split["accuracy"] <= 1.0
    inv = metrics["invariance"]["splits"]
    assert set(inv) == heldout
    p = inv["typical"]["translate"]["p_change"]
    assert 0.0 <= p["ci"][0] <= p["mean"] <= p["ci"][1] <= 1.0

    # The saved config is the resolved one and reloads; the checkpoint rebuilds the model.
    assert load_config(run / "config.yaml") == cfg
    model = Classifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert set(model.state_dict()) == set(_weights(run / "checkpoints" / "last.ckpt"))
    assert all(k.startswith("net.") for k in model.state_dict())
    # Test-split accuracy recomputed by hand from the checkpoint equals the reported one.
    from train.data import build_datamodule

    dm = build_datamodule(cfg)
    dm.setup("fit")
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in dm.eval_dataloader("typical"):
            correct += (model(x.float() / 255).argmax(1) == y).sum().item()
            total += len(y)
    assert correct / total == pytest.approx(metrics["splits"]["typical"]["accuracy"], abs=1e-6)


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    extra = ("augment.presets=[translate]", "eval.enabled=false", "data.n_val=0")
    a = fit(tiny_config(tmp_path, "name=a", *extra))
    b = fit(tiny_config(tmp_path, "name=b", *extra))
    assert a.metrics["splits"] == b.metrics["splits"]
    wa, wb = _weights(a.last_checkpoint), _weights(b.last_checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = fit(tiny_config(tmp_path, "name=c", "seed=1", *extra))
    wc = _weights(c.last_checkpoint)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


class _CrashAtEpochStart(L.Callback):
    """Dies as epoch ``epoch`` starts, after the previous epoch's checkpoints were written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class _ForcedValAccuracy(L.Callback):
    """Sets ``val/accuracy`` as ModelCheckpoint reads it to ``0.5 + slope * epoch``: with a
    negative slope epoch 0 is the best, with a positive one the last epoch.

    Callbacks run before the checkpoint callbacks (Lightning moves those last)."""

    def __init__(self, slope: float = -0.1) -> None:
        self.slope = slope

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = torch.tensor(0.5 + self.slope * trainer.current_epoch)
        trainer.callback_metrics["val/accuracy"] = value


def _position(path: Path) -> tuple[int, int]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["global_step"], ckpt["epoch"]


def _accuracies_by_hand(ckpt: Path, cfg: Config) -> dict[str, float]:
    """Top-1 accuracy of ``ckpt``'s weights on val and every held-out split, outside Lightning."""
    from train.data import build_datamodule

    dm = build_datamodule(cfg)
    dm.setup("fit")
    model = Classifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    out = {}
    with torch.no_grad():
        for split in ("val", *dm.heldout_names):
            correct = total = 0
            for x, y in dm.eval_dataloader(split):
                correct += (model(x.float() / 255).argmax(1) == y).sum().item()
                total += len(y)
            out[split] = correct / total
    return out


@pytest.mark.parametrize(
    ("epochs", "crash_at", "best_is_earlier"),
    [(2, 1, False), (3, 2, True)],
    ids=["best-is-last", "best-is-earlier"],
)
def test_resumed_run_equals_uninterrupted(
    tmp_path: Path, epochs: int, crash_at: int, best_is_earlier: bool
) -> None:
    extra = (f"trainer.max_epochs={epochs}", "augment.presets=[translate,flip]")
    extra += ("eval.enabled=false",)
    metric = [_ForcedValAccuracy(-0.1 if best_is_earlier else 0.1)]
    full = fit(tiny_config(tmp_path, "name=full", *extra), callbacks=metric)

    cfg = tiny_config(tmp_path, "name=crashed", *extra)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[*metric, _CrashAtEpochStart(crash_at)])
    ckpts = tmp_path / "crashed" / "checkpoints"
    # last.ckpt holds the epoch before the crash, whether or not that epoch was the best.
    assert _position(ckpts / "last.ckpt") == (2 * crash_at, crash_at - 1)  # 2 steps an epoch
    best_before_crash = 0 if best_is_earlier else crash_at - 1
    assert [p.name for p in ckpts.glob("best-*.ckpt")] == [
        f"best-epoch{best_before_crash:03d}.ckpt"
    ]
    resumed = fit(cfg, resume=True, callbacks=metric)

    # Both logs survive: the epochs before the crash in csv/metrics.csv, the rest (and only
    # the rest: training continued from the newest epoch) in csv/resumed-1/.
    for rel, expected in (
        ("metrics.csv", {str(e) for e in range(crash_at)}),
        ("resumed-1/metrics.csv", {str(e) for e in range(crash_at, epochs)}),
    ):
        with (resumed.run_dir / "csv" / rel).open() as fh:
            rows = [r for r in csv.DictReader(fh) if r["train/loss"]]
        assert {r["epoch"] for r in rows} == expected, rel
    wf, wr = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    assert wf.keys() == wr.keys()
    for k in wf:
        assert torch.equal(wr[k], wf[k]), k  # bit-identical
    assert resumed.metrics["splits"] == full.metrics["splits"]
    assert resumed.metrics["checkpoint"] == full.metrics["checkpoint"]
    assert resumed.metrics["best_checkpoint"] == full.metrics["best_checkpoint"]
    assert resumed.metrics["checkpoint"]["global_step"] == 2 * epochs
    best_epoch = 0 if best_is_earlier else epochs - 1
    assert (
        resumed.metrics["best_checkpoint"]["path"] == f"checkpoints/best-epoch{best_epoch:03d}.ckpt"
    )


def test_last_checkpoint_holds_the_final_weights_when_the_best_is_earlier(tmp_path: Path) -> None:
    """metrics.json, last.ckpt and the invariance reports all describe the final weights; the
    best checkpoint (epoch 0 here) stays separate."""
    cfg = tiny_config(tmp_path, "trainer.max_epochs=3")
    result = fit(cfg, callbacks=[_ForcedValAccuracy()])
    run, metrics = result.run_dir, json.loads((result.run_dir / "metrics.json").read_text())
    last, best = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "best-epoch000.ckpt"
    assert result.last_checkpoint == last and result.best_checkpoint == best
    assert sorted(p.name for p in last.parent.iterdir()) == [best.name, last.name]

    # The best really is epoch 0 (score 0.5), and last.ckpt is the end of epoch 2.
    assert metrics["global_step"] == 6 and _position(last) == (6, 2) and _position(best) == (2, 0)
    assert metrics["checkpoint"] == {"path": "checkpoints/last.ckpt", "global_step": 6, "epoch": 2}
    assert metrics["best_checkpoint"] == {
        "path": "checkpoints/best-epoch000.ckpt",
        "global_step": 2,
        "epoch": 0,
        "monitor": "val/accuracy",
        "score": 0.5,
    }
    wl, wb = _weights(last), _weights(best)
    assert not all(torch.equal(wl[k], wb[k]) for k in wl)

    # metrics.json's accuracies are last.ckpt's, recomputed outside Lightning ...
    assert _accuracies_by_hand(last, cfg) == {
        s: v["accuracy"] for s, v in metrics["splits"].items()
    }

    # ... and so is its invariance block, re-evaluated from the file by `invlab eval`'s function.
    from train.standalone import evaluate_checkpoint

    report = evaluate_checkpoint(last, cfg, tmp_path / "ev", progress=False, device="cpu")
    for split, block in metrics["invariance"]["splits"].items():
        assert report["splits"][split]["accuracy"] == block["accuracy"], split
        for m in ("p_change", "consistency", "worst_case_accuracy"):
            assert report["splits"][split]["translate"][m] == block["translate"][m], (split, m)

    # Provenance: every report names the checkpoint and the step its numbers come from.
    assert metrics["provenance"]["checkpoint"] == metrics["checkpoint"]
    assert metrics["provenance"]["device"] == "cpu"
    (written,) = (run / "reports").glob("invariance_epoch*.json")
    callback_prov = json.loads(written.read_text())["provenance"]
    assert metrics["invariance"]["provenance"] == callback_prov
    assert callback_prov["checkpoint"]["path"] == "checkpoints/last.ckpt"
    assert callback_prov["checkpoint"]["global_step"] == 6
    standalone = json.loads((tmp_path / "ev" / "invariance.json").read_text())["provenance"]
    assert standalone["checkpoint"] == {"path": str(last.resolve()), "global_step": 6, "epoch": 2}


class _RecordLastCheckpoint(L.Callback):
    """``(global_step, epoch)`` of ``last.ckpt`` as each epoch after the first starts."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self.seen.append(_position(self.path))


def test_last_checkpoint_after_every_epoch_and_a_mid_epoch_stop(tmp_path: Path) -> None:
    """Validation every second epoch, and max_steps ends training inside epoch 2: last.ckpt is
    still rewritten after every epoch and holds the final state at the end."""
    cfg = tiny_config(
        tmp_path, "trainer.max_epochs=5", "trainer.max_steps=5", "trainer.check_val_every_n_epoch=2"
    )
    record = _RecordLastCheckpoint(tmp_path / "default" / "checkpoints" / "last.ckpt")
    result = fit(cfg, callbacks=[record])
    assert record.seen == [(2, 0), (4, 1)]  # 2 steps an epoch
    assert result.metrics["global_step"] == 5
    assert _position(result.last_checkpoint) == (5, 2)
    assert result.metrics["checkpoint"]["global_step"] == 5
    assert result.metrics["best_checkpoint"]["path"] == "checkpoints/best-epoch001.ckpt"
    by_hand = _accuracies_by_hand(result.last_checkpoint, cfg)
    assert by_hand == {s: v["accuracy"] for s, v in result.metrics["splits"].items()}
    # The invariance report evaluated the same final weights (at the end of training).
    report = result.metrics["invariance"]
    step_epoch = {"global_step": 5, "epoch": report["epoch"]}
    assert report["provenance"]["checkpoint"] == {"path": "checkpoints/last.ckpt", **step_epoch}


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("eval.max_shift_px=3", "data.eval_margin_px"), ("data.n_typical=0", "data.n_typical")],
)
def test_eval_settings_fail_before_training(tmp_path: Path, override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        fit(tiny_config(tmp_path, override))  # tiny margin: 2 px
    assert not (tmp_path / "default" / "checkpoints").exists()  # nothing was trained


def test_existing_run_is_never_clobbered(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "eval.enabled=false")
    fit(cfg)
    before = (tmp_path / "default" / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(cfg)
    assert (tmp_path / "default" / "metrics.json").read_bytes() == before
    with pytest.raises(ConfigError, match="no checkpoint"):
        fit(tiny_config(tmp_path, "name=other"), resume=True)


def test_lr_schedules_by_hand() -> None:
    from omegaconf import OmegaConf

    from train.module import _lr_lambda

    o = OmegaConf.create(
        {"schedule": "cosine", "warmup_epochs": 1.0, "milestones": [0.5, 0.75], "gamma": 0.1}
    )
    f = _lr_lambda(o, total_steps=110, steps_per_epoch=10)
    assert [f(0), f(4), f(9)] == pytest.approx([0.1, 0.5, 1.0])  # linear warm-up
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5)  # cos(pi/2) halfway
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    o.schedule, o.warmup_epochs = "step", 0.0
    f = _lr_lambda(o, total_steps=100, steps_per_epoch=10)
    assert [f(49), f(50), f(75)] == pytest.approx([1.0, 0.1, 0.01])
    o.schedule = "constant"
    assert _lr_lambda(o, 100, 10)(99) == 1.0


@pytest.mark.parametrize(
    "extra",
    [
        ("optim.optimizer=adamw", "optim.lr=0.003", "optim.schedule=onecycle"),
        ("optim.schedule=step", "optim.label_smoothing=0.1", "model.channels_last=true"),
    ],
)
def test_optimizers_and_schedules_train(tmp_path: Path, extra: tuple[str, ...]) -> None:
    cfg = tiny_config(tmp_path, "eval.enabled=false", "trainer.max_epochs=2", *extra)
    result = fit(cfg)
    rows = (result.run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in rows[0]
    assert result.metrics["global_step"] == 4  # 64 images / batch 32 x 2 epochs


def test_finetune_antialiased_from_baseline_checkpoint(tmp_path: Path) -> None:
    """A baseline checkpoint initialises its BlurPool version exactly (same state-dict keys)."""
    base = fit(tiny_config(tmp_path, "name=base", "eval.enabled=false"))
    extra = ("eval.enabled=false", "model.antialias.method=blur")
    cfg = tiny_config(tmp_path, "name=ft", *extra, f"model.init_from={base.last_checkpoint}")
    model = Classifier(cfg, num_classes=base.metrics["num_classes"])
    wb = _weights(base.last_checkpoint)
    assert set(model.state_dict()) == set(wb)
    assert all(torch.equal(model.state_dict()[k], wb[k]) for k in wb)
    blurred = [m for m in model.net.modules() if type(m).__name__ == "BlurDownsample"]
    assert blurred  # the function changed, the weights did not
    ft = fit(cfg)  # and it trains from there
    assert ft.last_checkpoint.is_file()

    # The fine-tuned checkpoint is self-contained: it evaluates after its source is gone.
    from train.standalone import evaluate_checkpoint

    for path in base.run_dir.glob("checkpoints/*.ckpt"):
        path.unlink()
    report = evaluate_checkpoint(ft.last_checkpoint, cfg, tmp_path / "ev", progress=False)
    assert set(report["splits"]) == {"typical", "position", "scale", "background", "atypical"}
    restored = Classifier.load_from_checkpoint(ft.last_checkpoint, map_location="cpu")
    assert all(
        torch.equal(v, _weights(ft.last_checkpoint)[k]) for k, v in restored.state_dict().items()
    )


def test_only_rank_zero_touches_an_existing_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under DDP every rank runs fit(); a rank > 0 must not delete rank 0's fresh files."""
    from lightning.pytorch.utilities import rank_zero_only

    from train.fit import prepare_run_dir

    cfg = tiny_config(tmp_path)
    (tmp_path / "default" / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "default" / "config.yaml"
    marker.write_text("written by rank 0")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    run_dir, ckpt, lock = prepare_run_dir(cfg, resume=False, overwrite=True)
    assert run_dir == tmp_path / "default" and ckpt is None and lock is None
    assert marker.read_text() == "written by rank 0"
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    _, _, lock = prepare_run_dir(cfg, resume=False, overwrite=True)
    lock.release()
    assert not marker.exists()


@pytest.mark.slow
def test_default_config_reaches_the_quickstart_accuracy(tmp_path: Path) -> None:
    """`make demo`'s promise: >= 85% on typical images, and atypical images far less stable."""
    cfg = load_config(
        DEFAULT_YAML,
        overrides=[f"out_dir={tmp_path}", "logger.wandb.mode=disabled", "trainer.accelerator=cpu"],
    )
    result = fit(cfg)
    assert result.accuracy("typical") >= 0.85
    inv = result.metrics["invariance"]["splits"]
    typical, atypical = (inv[s]["translate"]["p_change"] for s in ("typical", "atypical"))
    assert typical["ci"][1] < atypical["ci"][0]  # the intervals do not overlap
