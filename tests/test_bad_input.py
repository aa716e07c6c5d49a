"""Bad input: one table of mistakes, each row a test (docs/bad_input.md lists the same rows).

Every row exits with code 2, prints one paragraph naming the problem to stderr, no traceback,
and leaves the folder of runs byte-identical (nothing written before the input is validated).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from tests.conftest import DEFAULT_YAML, REPO, TINY_OVERRIDES
from train.cli import main


class Row(NamedTuple):
    id: str
    argv: tuple[str, ...]  # {fit} expands to the tiny config; {out}, {files}, {ckpt} to paths
    expect: str  # stderr names the problem with this text
    creates_run: bool = False  # a new run dir may appear (the existing one is still untouched)


ROWS = [
    Row("unknown-key", ("fit", "{fit}", "data.n_trian=3"), "Unknown config key 'data.n_trian'"),
    Row("renamed-key", ("fit", "{fit}", "data.n_typical=3"), "was replaced"),
    Row("wrong-type", ("fit", "{fit}", "model.widths=abc"), "Wrong type for config key"),
    Row("bad-choice", ("fit", "{fit}", "optim.optimizer=adam"), "Invalid value 'adam'"),
    Row("override-syntax", ("fit", "{fit}", "model.widths=[8,"), "Could not parse override"),
    Row("override-no-key", ("config", "=3"), "is not of the form key=value"),
    Row("missing-yaml", ("fit", "{files}/missing.yaml"), "Config file"),
    Row("yaml-syntax", ("fit", "{files}/broken.yaml"), "Could not read YAML file"),
    Row("yaml-not-mapping", ("fit", "{files}/list.yaml"), "must hold a mapping"),
    Row("trainer-arg", ("fit", "{fit}", "trainer.max_epoch=1"), "Unknown Lightning Trainer"),
    Row("trainer-type", ("fit", "{fit}", "trainer.max_epochs=abc"), "expects int or null"),
    Row("trainer-strategy", ("fit", "{fit}", "trainer.strategy=nonsense"), "invalid strategy"),
    Row("trainer-devices-0", ("fit", "{fit}", "trainer.devices=0"), "Lightning rejected"),
    Row("out-dir-under-file", ("fit", "{fit}", "out_dir={files}/plain.txt/runs"), "out_dir="),
    Row("out-dir-unwritable", ("fit", "{fit}", "out_dir=/proc/nope"), "out_dir="),
    Row(
        "ring-off-canvas",
        ("fit", "{fit}", "data.heldout.position.radius_px=[30,40]", "data.keep_in_frame=false"),
        "every image would be empty background",
    ),
    Row(
        "placement-cuts-objects",
        ("fit", "{fit}", "data.heldout.position.radius_px=[9,10]"),
        "cannot be placed wholly inside",
    ),
    Row("image-size-4", ("fit", "{fit}", "data.image_size=4"), "chance level"),
    Row(
        "shift-above-margin",
        ("fit", "{fit}", "eval.enabled=true", "eval.max_shift_px=9", "logger.wandb.mode=offline"),
        "exceeds the held-out rendering's margin",
    ),
    Row("resume-without-run", ("fit", "{fit}", "name=nothing", "--resume"), "Cannot resume"),
    Row("existing-run", ("fit", "{fit}", "name=existing"), "already holds a run"),
    Row("resume-and-overwrite", ("fit", "{fit}", "--resume", "--overwrite"), "Choose one of"),
    Row("name-empty", ("fit", "{fit}", "name=''", "--overwrite"), "Invalid run name"),
    Row("name-dotdot", ("fit", "{fit}", "name=..", "--overwrite"), "Invalid run name"),
    Row("name-escapes", ("fit", "{fit}", "name=../x"), "Invalid run name"),
    Row(
        "resume-other-model",
        ("fit", "{fit}", "name=existing", "--resume", "model.widths=[4,8]"),
        "do not fit the configured model",
    ),
    Row(
        "overwrite-own-input",
        ("fit", "{fit}", "name=existing", "model.init_from={ckpt}", "--overwrite"),
        "holds this run's input",
    ),
    Row("eval-out-exists", ("eval", "{ckpt}", "--out", "{files}/old_eval"), "already exists"),
    Row("show-data-exists", ("show-data", "{fit}", "--out", "{files}/plain.txt"), "already"),
    Row("show-augment-exists", ("show-augment", "{fit}", "--out", "{files}/plain.txt"), "already"),
    Row(
        "slurm-script-exists",
        ("sweep", "configs/sweeps/ablation.yaml", "--emit-slurm", "{files}/plain.txt"),
        "already exists",
    ),
    Row("report-exists", ("report", "{out}/existing", "--out", "{files}/old_report"), "already"),
    Row("compare-exists", ("compare", "{out}/existing", "--out", "{files}/plain.txt"), "already"),
    Row("eval-missing-ckpt", ("eval", "{files}/none.ckpt"), "not found"),
    Row("eval-dir-as-ckpt", ("eval", "{files}"), "is a directory"),
    Row("eval-truncated", ("eval", "{files}/truncated.ckpt"), "truncated or corrupt"),
    Row("eval-text-file", ("eval", "{files}/text.ckpt"), "is not a checkpoint"),
    Row("eval-yaml-as-ckpt", ("eval", "configs/default.yaml"), "is not a checkpoint"),
    Row("eval-pickled-code", ("eval", "{files}/code.ckpt"), "pickled Python objects (posix.system"),
    Row("eval-bare-weights", ("eval", "{files}/bare.pt"), "is a bare weights file"),
    Row("finetune-empty", ("finetune", "{files}/empty.ckpt"), "is empty"),
    Row("finetune-truncated", ("finetune", "{files}/truncated.ckpt"), "truncated or corrupt"),
    Row("finetune-no-weights", ("finetune", "{files}/config_only.ckpt"), "not hold model weights"),
    Row("finetune-other-arch", ("finetune", "{ckpt}", "model.widths=[4,8]"), "init_strict=false"),
    Row("freeze-no-match", ("finetune", "{ckpt}", "model.freeze=[nope.*]"), "matches no parameter"),
    Row("lr-mult-no-match", ("finetune", "{ckpt}", "optim.lr_mult={'head.*': 10}"), "matches no"),
    Row("lr-mult-negative", ("fit", "{fit}", "optim.lr_mult={'fc.*': -1}"), "must be >= 0"),
    Row("onecycle-too-short", ("fit", "{fit}", "optim.schedule=onecycle"), "at least 4 optimizer"),
    Row("export-suffix", ("export", "{ckpt}", "{files}/w.pt"), "must end in .safetensors"),
    Row("export-exists", ("export", "{ckpt}", "{files}/taken.safetensors"), "already exists"),
    Row("export-bare-weights", ("export", "{files}/bare.pt", "{files}/b.safetensors"), "`invlab"),
    Row("sweep-missing", ("sweep", "{files}/none.yaml"), "Sweep file"),
    Row("sweep-jobs-0", ("sweep", "configs/sweeps/ablation.yaml", "--jobs", "0"), "--jobs"),
    Row("report-nothing", ("report", "{files}/nothing"), "neither a run directory"),
    Row("compare-nothing", ("compare", "{files}/nothing"), "No metrics.json"),
    Row("report-damaged-run", ("report", "{files}/damaged"), "is not valid JSON"),
    Row("compare-damaged-run", ("compare", "{files}/damaged"), "is not valid JSON"),
    Row("report-eval-no-config", ("report", "{files}/old_eval"), "does not record the config"),
    Row(
        "nan-loss",
        ("fit", "{fit}", "name=diverged", "optim.lr=1e30", "eval.enabled=false"),
        "Training loss became",
        creates_run=True,
    ),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class _Evil:
    def __reduce__(self):  # unpickling would call os.system
        return (os.system, ("true",))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder of runs holding one finished run, and a folder of broken input files."""
    out = tmp_path_factory.mktemp("runs")
    files = tmp_path_factory.mktemp("files")
    fit = [str(DEFAULT_YAML), *TINY_OVERRIDES, f"out_dir={out}", "eval.enabled=false"]
    assert main(["fit", *fit, "name=existing"]) == 0
    ckpt = out / "existing" / "checkpoints" / "last.ckpt"
    good = ckpt.read_bytes()
    (files / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (files / "text.ckpt").write_text("epoch 3, accuracy 0.9\n")
    (files / "empty.ckpt").write_bytes(b"")
    torch.save({"state_dict": {}, "hook": _Evil()}, files / "code.ckpt")
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    torch.save({"hyper_parameters": stored["hyper_parameters"]}, files / "config_only.ckpt")
    torch.save({"w": torch.zeros(2)}, files / "bare.pt")
    (files / "taken.safetensors").write_bytes(b"keep me")
    (files / "broken.yaml").write_text("data:\n  n_train: [1, 2\n")
    (files / "list.yaml").write_text("- data\n- model\n")
    (files / "plain.txt").write_text("not a folder\n")
    (files / "damaged").mkdir()
    (files / "damaged" / "metrics.json").write_text('{"name": "cut off')
    (files / "old_eval").mkdir()
    (files / "old_eval" / "invariance.json").write_text('{"splits": {}}')
    (files / "old_report").mkdir()
    (files / "old_report" / "report.csv").write_text("group,split\n")
    return {"out": out, "files": files, "ckpt": ckpt, "fit": fit}  # type: ignore[dict-item]


def _argv(row: Row, world: dict) -> list[str]:
    argv: list[str] = []
    for a in row.argv:
        if a == "{fit}":
            argv += world["fit"]
        else:
            for key in ("out", "files", "ckpt"):
                a = a.replace(f"{{{key}}}", str(world[key]))
            argv.append(a)
    return argv


@pytest.fixture
def offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(
    row: Row,
    world: dict,
    offline_wandb: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if row.id == "out-dir-unwritable" and not Path("/proc").is_dir():
        pytest.skip("needs Linux /proc")
    monkeypatch.chdir(REPO)
    out, files = world["out"], world["files"]
    before_runs, before_files = _snapshot(out), _snapshot(files)
    existing = _snapshot(out / "existing")
    assert main(_argv(row, world)) == 2
    err = capsys.readouterr().err
    assert row.expect in err, err
    assert "Traceback" not in err and "weights_only" not in err
    message = [line for line in err.splitlines() if "error:" in line]
    assert len(message) == 1 and message[0].startswith("invlab "), err
    assert _snapshot(out / "existing") == existing
    assert _snapshot(files) == before_files
    if not row.creates_run:
        assert _snapshot(out) == before_runs  # nothing written, no W&B run folder
        assert not (offline_wandb / "wandb").exists()


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    """A NaN forced into the weights at step 3 (second epoch): the run stops at that step and
    last.ckpt still holds the finite weights of the end of the first epoch (step 2)."""
    import lightning.pytorch as L

    from tests.conftest import tiny_config
    from train.divergence import LossDiverged
    from train.fit import fit

    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 3:
                with torch.no_grad():
                    next(pl_module.net.parameters()).fill_(float("nan"))

    cfg = tiny_config(tmp_path, "name=nan", "trainer.max_epochs=3", "eval.enabled=false")
    with pytest.raises(LossDiverged, match=r"nan at step 3 \(epoch 1, batch 1\)") as err:
        fit(cfg, callbacks=[Poison()])
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    assert str(last) in str(err.value)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(v).all() for v in weights)


@pytest.mark.parametrize("row_id", ["eval-truncated", "out-dir-under-file"])
def test_command_line_prints_no_traceback(row_id: str, world: dict) -> None:
    row = next(r for r in ROWS if r.id == row_id)
    argv = _argv(row, world)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "train.cli", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2
    assert row.expect in proc.stderr and "Traceback" not in proc.stderr


def test_doc_lists_the_same_rows() -> None:
    doc = (REPO / "docs" / "bad_input.md").read_text()
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", doc, flags=re.MULTILINE)
    assert documented == [r.id for r in ROWS]


# ------------------------------------------------------------------------------------------------
# Runs that guard themselves: a second writer, signals, stale sweep points (docs/bad_input.md,
# "Runs, sweeps and signals"). Each test checks that nothing already written changed.

HOLD_LOCK = (
    "import sys, time\n"
    "from train.rundir import DirLock\n"
    "lock = DirLock(sys.argv[1], sys.argv[2]).acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


def _python(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True, **kw)


def _tiny_sweep(path: Path, values: str = "[0, 1]") -> Path:
    path.write_text(f"method: grid\nparameters:\n  augment.max_shift_px:\n    values: {values}\n")
    return path


def test_a_second_writer_of_a_run_or_a_sweep_is_refused_with_the_holders_pid(
    world: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = world["out"]
    run = str(out / "existing")
    holder = _python("-c", HOLD_LOCK, run, "Run directory", stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(out)  # with the holder's lock files
        # --overwrite would delete the run the other process is writing: refused instead.
        assert main(["fit", *world["fit"], "name=existing", "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"being written by process {holder.pid}" in err and "-c" in err, err
        assert main(["eval", str(world["ckpt"])]) == 2  # an evaluation into that run, too
        assert f"process {holder.pid}" in capsys.readouterr().err
        assert _snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()
        for leftover in out.glob(".existing.lock*"):  # a killed holder cannot clean up
            leftover.unlink()

    sweep = _tiny_sweep(tmp_path / "s.yaml")
    sweep_out = tmp_path / "sweep_runs"
    what = "Sweep output folder"
    holder = _python("-c", HOLD_LOCK, str(sweep_out), what, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["sweep", str(sweep), *world["fit"], f"out_dir={sweep_out}"]) == 2
        err = capsys.readouterr().err
        assert f"Sweep output folder {sweep_out} is being written by process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert not sweep_out.exists()  # not one point started


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_fit_with_its_exit_code_and_leaves_a_resumable_run(
    sig: str, code: int, tmp_path: Path
) -> None:
    import signal
    import time

    args = [str(DEFAULT_YAML), *TINY_OVERRIDES, f"out_dir={tmp_path}", "eval.enabled=false"]
    proc = _python(
        "-m", "train.cli", "fit", *args, "trainer.max_epochs=500", stderr=subprocess.PIPE
    )
    last = tmp_path / "default" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert last.is_file(), "no epoch finished"
    time.sleep(0.5)  # inside a later epoch
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"Stopped by {sig}" in err and "--resume" in err and "Traceback" not in err
    assert not (tmp_path / "default" / "metrics.json").exists()
    epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    resumed = ["fit", *args, f"trainer.max_epochs={epoch + 2}", "--resume"]
    assert main(resumed) == 0
    assert (tmp_path / "default" / "metrics.json").is_file()


def test_a_stale_sweep_point_is_an_error_naming_the_keys_until_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _tiny_sweep(tmp_path / "s.yaml")
    base = [str(DEFAULT_YAML), *TINY_OVERRIDES, f"out_dir={tmp_path / 'runs'}"]
    base.append("eval.enabled=false")
    assert main(["sweep", str(sweep), *base]) == 0
    finished = _snapshot(tmp_path / "runs")
    capsys.readouterr()
    # Same grid, another model: the finished points are not this grid's results.
    assert main(["sweep", str(sweep), *base, "model.widths=[4,8]"]) == 1
    out = capsys.readouterr().out
    assert "2 stale" in out and "model.widths: [8, 16] -> [4, 8]" in out, out
    assert main(["sweep", str(sweep), *base, "model.widths=[4,8]", "--dry-run"]) == 0
    assert "stale" in capsys.readouterr().out
    assert _snapshot(tmp_path / "runs") == finished
    # Only execution keys differ: still the same points, skipped.
    assert main(["sweep", str(sweep), *base, "data.num_workers=0", "logger.csv=false"]) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert main(["sweep", str(sweep), *base, "model.widths=[4,8]", "--overwrite"]) == 0
    assert "2 done" in capsys.readouterr().out
    stored = (tmp_path / "runs").glob("*/config.yaml")
    assert all("- 4\n  - 8" in p.read_text() for p in stored)


def test_the_grid_is_checked_once_per_distinct_config_before_any_point_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import train.sweep

    sweep = tmp_path / "big.yaml"
    sweep.write_text(
        "method: grid\nparameters:\n  seed:\n    values: [0, 1, 2, 3, 4]\n"
        "  augment.max_shift_px:\n    values: [0, 1, 2, 3]\n"
        "  optim.lr:\n    values: [0.1, 0.01, -1.0]\n"
    )
    calls: list[tuple[str, ...]] = []
    real = train.sweep.load_config

    def counting(*args, overrides=(), **kw):
        calls.append(tuple(overrides))
        return real(*args, overrides=overrides, **kw)

    monkeypatch.setattr(train.sweep, "load_config", counting)
    base = [str(DEFAULT_YAML), *TINY_OVERRIDES, f"out_dir={tmp_path / 'runs'}"]
    assert main(["sweep", str(sweep), *base]) == 2  # optim.lr=-1 is refused up front
    err = capsys.readouterr()
    assert "60 points, 12 distinct configs" in err.out
    assert "optim.lr" in err.err and not (tmp_path / "runs").exists()
    assert len(calls) <= 12 + 5  # each distinct config once, each seed value once
