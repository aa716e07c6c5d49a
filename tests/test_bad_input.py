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

import numpy as np
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
    Row("bad-choice", ("fit", "{fit}", "optim.schedule=cosin"), "Invalid value 'cosin'"),
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
    Row("optimizer-unknown", ("fit", "{fit}", "optim.optimizer=lamm"), "Did you mean 'lamb'"),
    Row("optimizer-not-offered", ("fit", "{fit}", "optim.optimizer=fusedlamb"), "NVIDIA apex"),
    Row(
        "ema-decay-1", ("fit", "{fit}", "optim.ema.decay=1"), "'optim.ema.decay' must be in (0, 1)"
    ),
    Row("mixup-alpha-0", ("fit", "{fit}", "augment.mixup_alpha=0"), "'augment.mixup_alpha' must"),
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
    Row("seed-negative", ("fit", "{fit}", "seed=-1"), "'seed' must be in 0..4294967295, got -1"),
    Row("down-stride-0", ("fit", "{fit}", "model.down_stride=0"), "'model.down_stride' must be"),
    Row("eval-images-negative", ("fit", "{fit}", "eval.n_images=-5"), "'eval.n_images' must be"),
    Row(
        "homogeneity-window-0",
        ("fit", "{fit}", "eval.homogeneity_windows=[0]"),
        "Invalid entry 0 in 'eval.homogeneity_windows'",
    ),
    Row("object-size-0", ("fit", "{fit}", "data.object_size=0"), "leaves blank images"),
    Row("bootstrap-0", ("fit", "{fit}", "eval.n_bootstrap=0"), "'eval.n_bootstrap' must be >= 100"),
    Row("bootstrap-too-few", ("fit", "{fit}", "eval.n_bootstrap=50"), "must be >= 100, got 50"),
    Row("lr-nan", ("fit", "{fit}", "optim.lr=nan"), "must be a finite number > 0, got nan"),
    Row("lr-inf", ("fit", "{fit}", "optim.lr=inf"), "must be a finite number > 0, got inf"),
    Row("heldout-typo", ("fit", "{fit}", "data.heldout.typcal.n=100"), "Did you mean 'typical'"),
    Row("heldout-duplicate", ("fit", "{fit}", "data.heldout.copy.n=100"), "a second 'typical'"),
    Row(
        "fast-dev-run",
        ("fit", "{fit}", "trainer.fast_dev_run=true"),
        "use trainer.max_epochs=1 data.n_train=",
    ),
    Row("train-batches-0", ("fit", "{fit}", "trainer.limit_train_batches=0"), "trains on no"),
    Row("max-epochs-0", ("fit", "{fit}", "trainer.max_epochs=0"), "'trainer.max_epochs=0'"),
    Row(
        "checkpointing-off",
        ("fit", "{fit}", "trainer.enable_checkpointing=false"),
        "'trainer.enable_checkpointing=False' leaves no checkpoints",
    ),
    Row(
        "image-truncated",
        ("fit", "{fit}", "data.source=folder", "data.root={files}/truncated_jpeg"),
        "truncated_jpeg/train/b/broken.jpg: ",
    ),
    Row(
        "image-not-an-image",
        ("fit", "{fit}", "data.source=folder", "data.root={files}/text_png"),
        "text_png/val/a/notes.png: cannot identify image file",
    ),
    Row(
        "one-class-folder",
        ("fit", "{fit}", "data.source=folder", "data.root={files}/one_class"),
        "has 1 class(es) ('only')",
    ),
    Row(
        "render-false-factor-split",
        ("fit", "{fit}", "data.render=false"),
        "images are used as they are",
    ),
    Row(
        "typicality-checkpoint-pixels",
        ("fit", "{fit}", "eval.enabled=true", "eval.typicality.checkpoint={ckpt}"),
        "set eval.typicality.method=features",
    ),
    Row(
        "typicality-checkpoint-bare",
        (
            "fit",
            "{fit}",
            "eval.enabled=true",
            "eval.typicality.method=features",
            "eval.typicality.checkpoint={files}/bare.pt",
        ),
        "is not a checkpoint of an invlab run",
    ),
    Row("report-gap-to-unknown", ("report", "{out}", "--gap-to", "refrence"), "--gap-to refrence"),
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
    _image_folders(files)  # section "Values, data files, permissions"
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


# ------------------------------------------------------------------------------------------------
# Values, data files, permissions (docs/bad_input.md, "Values, data files, permissions"): every
# numeric key declares its range in the schema, image files decode to RGB or name themselves,
# written files honour the umask. The refusals are rows of ROWS above; these test the rest.


def _image_folders(files: Path) -> None:
    """ImageFolder trees for the rows: a truncated JPEG, a text file named .png, one class."""
    from PIL import Image

    rng = np.random.default_rng(0)

    def png(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)

    for name in ("truncated_jpeg", "text_png"):
        for part, cls, i in [("train", "a", 0), ("train", "a", 1), ("train", "b", 0)]:
            png(files / name / part / cls / f"{i}.png")
        for cls in "ab":  # six held-out splits need six held-out instances at least
            for i in range(3):
                png(files / name / "val" / cls / f"{i}.png")
    jpeg = files / "truncated_jpeg" / "train" / "b" / "broken.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:1500])
    (files / "text_png" / "val" / "a" / "notes.png").write_text("not an image\n")
    for part in ("train", "val"):
        png(files / "one_class" / part / "only" / "0.png")
    png(files / "one_class" / "train" / "only" / "1.png")


def test_every_numeric_key_declares_its_allowed_values() -> None:
    """A numeric key (int or float; optional, list or mapping of them too) without a declared
    range would let a value through that only fails deep in a run, or never does."""
    from invlab.config import constraint_of, leaf_type, schema_fields

    missing, seen = [], []
    for key, hint, f in schema_fields():
        leaf, _, _ = leaf_type(hint)
        if leaf in (int, float):
            seen.append(key)
            if constraint_of(f) is None:
                missing.append(key)
    assert not missing, f"numeric keys without a declared constraint: {missing}"
    assert {"seed", "data.heldout.*.sigma_px", "optim.lr_mult", "model.widths"} <= set(seen)


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        # a key of a mapping of sections, an optional key when set, list and mapping entries
        ("data.heldout.atypical.sigma_px=-1", ["'data.heldout.atypical.sigma_px' must be >= 0"]),
        ("data.heldout.far.scale=[0,1]", ["Invalid entry 0 in 'data.heldout.far.scale'", "> 0"]),
        ("model.widths=[8,0]", ["Invalid entry 0 in 'model.widths'", "default: model.widths="]),
        ("optim.lr_mult={'fc.*': nan}", ["'optim.lr_mult.fc.*' must be a finite number >= 0"]),
        ("eval.embed_size=0", ["'eval.embed_size' must be in (0, 1], got 0"]),
        ("optim.milestones=[0.5,2]", ["Invalid entry 2 in 'optim.milestones'", "in [0, 1]"]),
        ("data.heldout.far.position=rng", ["'data.heldout.far.position'", "Did you mean 'ring'"]),
        ("eval.transforms=[translat]", ["Invalid entry 'translat'", "Did you mean 'translate'"]),
        ("seed=-1", ["'seed'", "got -1", "in 0..4294967295", "(default: seed=0)"]),
        ("augment.flip_p=1.5", ["'augment.flip_p' must be in [0, 1], got 1.5"]),
        ("eval.ci_level=inf", ["'eval.ci_level' must be a finite number in (0, 1), got inf"]),
    ],
)
def test_a_declared_constraint_names_key_value_range_and_fix(
    override: str, fragments: list[str]
) -> None:
    from invlab.config import ConfigError
    from train.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT_YAML, overrides=[override])
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_null_optional_keys_and_the_defaults_pass() -> None:
    from train.config import load_config

    cfg = load_config(
        DEFAULT_YAML, overrides=["eval.embed_size=null", "data.heldout.atypical.sigma_px=null"]
    )
    assert cfg.eval.embed_size is None
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if "sweeps" not in path.parts:
            load_config(DEFAULT_YAML, path)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["data.heldout.typcal.n=0"], "Did you mean 'typical'"),  # meant to empty typical
        (["data.heldout.far.radius_px=[1,2]"], "not used by position=gaussian"),
        (["data.heldout.far.scale=[0.9,1.1]"], "which equal training"),
        (["eval.n_bootstrap=100", "eval.ci_level=0.99"], "at least 400"),
        (["trainer.fast_dev_run=3"], "'trainer.fast_dev_run=3'"),
        (["trainer.limit_train_batches=0.0"], "trains on no batch"),
        (["trainer.max_steps=0"], "trains for no step"),
        (["trainer.limit_test_batches=0"], "no held-out accuracy"),
        (["optim.momentum=0"], "optim.nesterov=true needs momentum"),
        (["data.object_size=0.01"], "smaller than a pixel"),
    ],
)
def test_rules_across_keys_and_trainer_settings_without_a_result(
    overrides: list[str], fragment: str
) -> None:
    from invlab.config import ConfigError
    from train.config import load_config

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(DEFAULT_YAML, overrides=overrides)


def test_what_the_rules_leave_alone() -> None:
    """An empty split of an unrelated name (configs empty YAML splits they do not load that
    way), a split that only changes its source, and the trainer settings that still train."""
    from train.config import load_config

    load_config(overrides=["data.heldout.position.n=0", "data.heldout.other.source=digits"])
    load_config(
        DEFAULT_YAML,
        overrides=[
            "eval.n_bootstrap=400",
            "eval.ci_level=0.99",
            "trainer.fast_dev_run=false",
            "trainer.limit_train_batches=0.5",
            "trainer.max_steps=-1",
            "optim.optimizer=adamw",
            "optim.momentum=0",
        ],
    )


# --------------------------------------------------------------------------- image files
def _decode(path: Path, side: int = 6) -> tuple[np.ndarray, np.ndarray | None]:
    from train.data.folder import decode_image

    return decode_image(str(path), (side, side))


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    from PIL import Image

    for value, expected in [(65535, 255), (32896, 128), (0, 0), (257, 1)]:
        path = tmp_path / f"{value}.png"
        Image.fromarray(np.full((6, 6), value, np.uint16)).save(path)
        assert Image.open(path).mode.startswith("I")  # a real 16-bit PNG
        rgb, alpha = _decode(path)
        assert rgb.dtype == np.uint8 and (rgb == expected).all() and alpha is None, value


def test_palette_grey_cmyk_and_alpha_images_become_rgb_with_their_alpha(tmp_path: Path) -> None:
    from PIL import Image

    pal = Image.new("P", (6, 6))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 3, 6))  # left half blue, right half red
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "p_transparent.png", transparency=0)  # red is transparent
    Image.new("LA", (6, 6), (100, 128)).save(tmp_path / "la.png")
    Image.new("L", (6, 6), 77).save(tmp_path / "l.png")
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("RGBA", (6, 6), (10, 20, 30, 255)).save(tmp_path / "opaque.png")

    rgb, alpha = _decode(tmp_path / "p.png")
    assert rgb[0, 0].tolist() == [0, 0, 255] and rgb[0, 5].tolist() == [255, 0, 0]
    assert alpha is None
    rgb, alpha = _decode(tmp_path / "p_transparent.png")
    assert alpha is not None and alpha[0, 0] == 255 and alpha[0, 5] == 0
    rgb, alpha = _decode(tmp_path / "la.png")
    assert (rgb == 100).all() and alpha is not None and (alpha == 128).all()
    assert (_decode(tmp_path / "l.png")[0] == 77).all()
    rgb, _ = _decode(tmp_path / "cmyk.jpg")
    assert rgb[2, 2, 0] > 250 and rgb[2, 2, 1] < 5 and rgb[2, 2, 2] < 5  # red
    rgb, alpha = _decode(tmp_path / "opaque.png")
    assert rgb[0, 0].tolist() == [10, 20, 30] and alpha is None  # opaque: no mask


def test_a_batch_with_a_transparent_image_masks_it_and_keeps_the_others_opaque(
    tmp_path: Path,
) -> None:
    from PIL import Image

    from train.data.folder import FolderPool

    Image.new("RGB", (6, 6), (1, 2, 3)).save(tmp_path / "rgb.png")
    Image.new("RGBA", (6, 6), (9, 9, 9, 0)).save(tmp_path / "clear.png")
    pool = FolderPool([(str(tmp_path / "rgb.png"), 0), (str(tmp_path / "clear.png"), 1)], 6)
    objects = pool.take(np.array([0, 1]), 6)
    assert objects.masks is not None and objects.masks.shape == (2, 1, 6, 6)
    assert (objects.masks[0] == 255).all() and (objects.masks[1] == 0).all()
    assert pool.take(np.array([0]), 6).masks is None  # opaque alone: rectangles as before


def test_a_corrupt_image_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    from PIL import Image

    from invlab.config import ConfigError

    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(ConfigError, match=re.escape(f"image file {path}: ")) as err:
        _decode(path)
    assert "truncated" in str(err.value).lower() and "replace it" in str(err.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="empty.png: cannot identify image file"):
        _decode(tmp_path / "empty.png")


def test_a_source_with_one_class_is_refused_whatever_the_source(tmp_path: Path) -> None:
    from invlab.config import ConfigError
    from train.config import load_config
    from train.data import ArrayPool, Source, build_datamodule, register_source

    @register_source("test_one_class", override=True)
    def one_class(cfg, seed: int) -> Source:
        pool = ArrayPool(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4))
        return Source("test_one_class", ["only"], pool, pool)

    cfg = load_config(overrides=["data.source=test_one_class", "data.image_size=8"])
    with pytest.raises(ConfigError, match=r"'test_one_class' has 1 class\(es\) \('only'\)"):
        build_datamodule(cfg).setup()


# ---------------------------------------------------------------------------- permissions
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    from invlab.config import save_config
    from invlab.files import atomic_write_bytes, atomic_write_text
    from train.config import load_config

    cfg = load_config()
    old = os.umask(umask)
    try:
        written = [
            atomic_write_text(tmp_path / "a.json", "{}"),
            atomic_write_bytes(tmp_path / "sub" / "b.png", b"\x89PNG"),
            save_config(cfg, tmp_path / "run" / "config.yaml"),
        ]
    finally:
        os.umask(old)
    for path in written:
        assert path.stat().st_mode & 0o777 == mode, path
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_an_atomic_rewrite_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    from invlab.files import atomic_write_text

    path = tmp_path / "metrics.json"
    path.write_text("{}")
    path.chmod(0o640)
    old = os.umask(0o022)
    try:
        atomic_write_text(path, '{"a": 1}')
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640 and path.read_text() == '{"a": 1}'
