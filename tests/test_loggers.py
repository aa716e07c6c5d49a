"""W&B modes: auto resolves by credentials; offline writes a local run; online falls back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from train.loggers import build_loggers, resolve_wandb_mode


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))


def test_auto_mode_follows_credentials(no_credentials, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"


def _finish(loggers) -> None:
    for logger in loggers:
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()


def test_offline_run_is_written_locally(no_credentials, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "logger.wandb.mode=offline")
    loggers, notes = build_loggers(cfg, tmp_path / "run")
    assert [type(x).__name__ for x in loggers] == ["CSVLogger", "WandbLogger"]
    loggers[1].log_metrics({"x": 1.0})
    _finish(loggers)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert any("wandb sync" in n for n in notes)


def test_unreachable_online_falls_back_to_offline(
    no_credentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    cfg = tiny_config(tmp_path, "logger.wandb.mode=online", "logger.wandb.init_timeout=2")
    with pytest.warns(UserWarning, match="logging offline"):
        loggers, notes = build_loggers(cfg, tmp_path / "run")
    _finish(loggers)
    assert any("could not reach" in n for n in notes)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_fit_logs_config_metrics_and_curves_to_offline_wandb(
    no_credentials, tmp_path: Path
) -> None:
    from train.fit import fit

    cfg = tiny_config(tmp_path, "logger.wandb.mode=offline", "augment.presets=[flip]")
    result = fit(cfg)
    (log,) = (result.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    raw = log.read_bytes()  # the transaction log stores keys as plain protobuf strings
    for key in (b"invariance/typical/translate/p_change", b"val/accuracy", b"augment/samples"):
        assert key in raw, key
    assert b"placement" in raw  # the resolved config
    assert any("wandb sync" in n for n in result.notes)


def test_resumed_run_continues_the_same_wandb_run_and_logs_the_config_once(
    no_credentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    from train.fit import fit

    runs = []
    real_init = wandb.init

    def init(*args, **kwargs):
        runs.append(real_init(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    args = ("name=w", "logger.wandb.mode=offline", "eval.enabled=false")
    first = fit(tiny_config(tmp_path, *args))
    run_id = (first.run_dir / "wandb_id.txt").read_text().strip()
    fit(tiny_config(tmp_path, *args, "trainer.max_epochs=2"), resume=True)
    offline = sorted((first.run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2  # one segment per process, both of the same W&B run
    assert all(p.name.endswith(f"-{run_id}") for p in offline)
    assert [r.id for r in runs] == [run_id, run_id]

    config = runs[-1].config.as_dict()
    assert config["augment"]["max_shift_px"] == 4 and config["data"]["image_size"] == 16
    assert "config" not in config and "num_classes" not in config  # not logged a second time
    # On disk every max_shift_px key of the config (augment, eval, eval.equivariance) once.
    keys = str(runs[-1].config.as_dict()).count("'max_shift_px'")
    assert keys == 3
    for path in offline:
        raw = next(path.glob("run-*.wandb")).read_bytes()
        assert raw.count(b"max_shift_px") == keys


def wandb_records(run_dir: Path) -> list:
    """The W&B ``Record`` protobufs of an offline run's transaction log.

    The log is LevelDB's record format (7-byte file header, 32 KiB blocks, each record a 7-byte
    header + payload, split across blocks as first/middle/last) holding W&B ``Record`` protobufs.
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    raw, pos, block, buf, records = log.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        buf += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last fragment: one record
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
        elif kind == 0:
            break
    return records


def wandb_exit_code(run_dir: Path) -> int | None:
    """The exit code an offline run recorded (None: the run never finished)."""
    exits = [
        r.exit.exit_code for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "exit"
    ]
    return exits[-1] if exits else None


def test_a_failed_fit_finishes_its_wandb_run_marked_failed(no_credentials, tmp_path: Path) -> None:
    import lightning.pytorch as L

    from train.fit import fit

    class Boom(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            raise RuntimeError("boom")

    args = ("logger.wandb.mode=offline", "eval.enabled=false")
    with pytest.raises(RuntimeError, match="boom"):
        fit(tiny_config(tmp_path, "name=bad", *args), callbacks=[Boom()])
    assert wandb_exit_code(tmp_path / "bad") == 1
    good = fit(tiny_config(tmp_path, "name=good", *args))
    assert wandb_exit_code(good.run_dir) == 0


def test_parameter_counts_are_logged_and_follow_freeze(tmp_path: Path) -> None:
    import yaml

    from train.fit import fit, parameter_counts

    args = ("logger.wandb.mode=disabled", "eval.enabled=false")
    full = fit(tiny_config(tmp_path, "name=full", *args))
    frozen = fit(tiny_config(tmp_path, "name=frozen", *args, "model.freeze=[features.stage0.*]"))
    logged = [
        yaml.safe_load((r.run_dir / "csv" / "hparams.yaml").read_text())["parameters"]
        for r in (full, frozen)
    ]
    assert logged[0]["total"] == logged[1]["total"] == logged[0]["trainable"]
    assert 0 < logged[1]["trainable"] < logged[1]["total"]
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    net[0].weight.requires_grad_(False)
    assert parameter_counts(net) == {"total": 8 + 3, "trainable": 2 + 3}


def test_sweep_points_share_a_wandb_group_tagged_with_their_values_and_log_a_results_table(
    no_credentials, tmp_path: Path
) -> None:
    from tests.conftest import DEFAULT_YAML, TINY_OVERRIDES
    from train.sweep import run_sweep

    sweep = tmp_path / "shift.yaml"
    sweep.write_text("method: grid\nparameters:\n  augment.max_shift_px:\n    values: [0, 2]\n")
    base = [*TINY_OVERRIDES, f"out_dir={tmp_path / 'runs'}", "logger.wandb.mode=offline"]
    results = run_sweep(sweep, [str(DEFAULT_YAML)], base)
    assert [r.status for r in results] == ["done", "done"]
    for r, value in zip(results, (0, 2), strict=True):
        (run,) = [x.run for x in wandb_records(r.run_dir) if x.WhichOneof("record_type") == "run"]
        assert run.run_group == "shift"
        assert f"augment.max_shift_px={value}" in list(run.tags)
        raw = next((r.run_dir / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        assert b"final/splits" in raw and b"data/samples" in raw
        (table,) = (r.run_dir / "wandb").glob("offline-run-*/files/media/table/final/*.json")
        data = json.loads(table.read_text())
        metrics = json.loads((r.run_dir / "metrics.json").read_text())
        rows = {row[0]: dict(zip(data["columns"], row, strict=True)) for row in data["data"]}
        typical = metrics["invariance"]["splits"]["typical"]["translate"]["p_change"]
        assert rows["typical"]["translate/p_change"] == pytest.approx(typical["mean"])
        assert rows["typical"]["accuracy"] == pytest.approx(
            metrics["splits"]["typical"]["accuracy"]
        )
