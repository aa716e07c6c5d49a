"""The `invlab` command line: output, exit codes, no tracebacks for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_YAML, TINY_OVERRIDES
from train.cli import main


def test_config_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(DEFAULT_YAML), "data.n_train=77"]) == 0
    out = capsys.readouterr().out
    assert "n_train: 77" in out and "placement:" in out and "antialias:" in out


def test_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "train.cli", "config", "data.n_trian=3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "data.n_trian" in proc.stderr and "n_train" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "missing.yaml"],
        ["fit", "optim.optimizer=adamm"],
        ["eval", "no/such.ckpt"],
        ["models", "resnet9000"],
    ],
)
def test_user_errors_return_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("invlab ") and "error:" in err


def test_fit_eval_models_show_augment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(DEFAULT_YAML), *TINY_OVERRIDES, f"out_dir={tmp_path}", "name=cli"]
    assert main(["fit", *args]) == 0
    out = capsys.readouterr().out
    assert "typical" in out and "atypical" in out and str(tmp_path / "cli") in out
    assert main(["fit", *args]) == 2  # the run exists: nothing is overwritten

    ckpt = tmp_path / "cli" / "checkpoints" / "last.ckpt"
    assert main(["eval", str(ckpt), "eval.n_images=8", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "invariance.json").read_text())
    assert {"typical", "atypical"} <= set(report["splits"])
    assert "p_change" in report["splits"]["typical"]["translate"]

    # Fine-tune the run with BlurPool: its own config plus the change, under a new name.
    assert main(["finetune", str(ckpt), "model.antialias.method=blur", "eval.enabled=false"]) == 0
    ft_cfg = (tmp_path / "cli-ft" / "config.yaml").read_text()
    assert "method: blur" in ft_cfg and f"init_from: {ckpt}" in ft_cfg
    assert (tmp_path / "cli-ft" / "metrics.json").is_file()
    capsys.readouterr()

    # The two runs side by side: only the config key that differs, and their metrics.
    runs = [str(tmp_path / "cli"), str(tmp_path / "cli-ft")]
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "model.antialias.method" in lines[0] and "augment.presets" not in lines[0]
    base = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    row = lines[2].split()
    assert row[:3] == ["cli", "none", "typical"]  # one row per run and held-out split
    accuracy = base["invariance"]["splits"]["typical"]["accuracy"]
    assert " ".join(row[3:6]) == (
        f"{accuracy['mean']:.3f} [{accuracy['ci'][0]:.3f}, {accuracy['ci'][1]:.3f}]"
    )
    assert [ln.split()[2] for ln in lines[2:7]] == [
        "typical",
        "position",
        "scale",
        "background",
        "atypical",
    ]
    assert (tmp_path / "cmp.png").is_file()
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    capsys.readouterr()

    assert main(["models"]) == 0
    assert "cnn" in capsys.readouterr().out
    assert main(["models", "cnn", "model.antialias.method=blur"]) == 0
    assert "conv" in capsys.readouterr().out.lower()

    png = tmp_path / "grid.png"
    aug = ["augment.presets=[translate]", *TINY_OVERRIDES]
    assert main(["show-augment", str(DEFAULT_YAML), *aug, "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    png = tmp_path / "data.png"
    assert (
        main(["show-data", str(DEFAULT_YAML), *TINY_OVERRIDES, "--out", str(png), "-n", "4"]) == 0
    )
    out = capsys.readouterr().out
    assert "atypical" in out and "ring" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_sweep_runs_each_point_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(
        "method: grid\n"
        "parameters:\n"
        "  model.antialias.method: {values: [none, blur]}\n"
        "  seed: {values: [0, 1]}\n"
    )
    base = [str(DEFAULT_YAML), *TINY_OVERRIDES, f"out_dir={tmp_path}", "eval.enabled=false"]
    assert main(["sweep", str(sweep), *base, "--dry-run"]) == 0
    assert capsys.readouterr().out.count(": planned") == 4
    assert main(["sweep", str(sweep), *base]) == 0
    runs = sorted(p.parent.name for p in tmp_path.glob("*/metrics.json"))
    assert runs == [
        "grid-method_blur-seed_0",
        "grid-method_blur-seed_1",
        "grid-method_none-seed_0",
        "grid-method_none-seed_1",
    ]
    stored = (tmp_path / "grid-method_blur-seed_1" / "config.yaml").read_text()
    assert "method: blur" in stored and "seed: 1" in stored
    capsys.readouterr()
    assert main(["sweep", str(sweep), *base]) == 0  # finished points are skipped
    assert capsys.readouterr().out.count(": skipped") == 4
    sweep.write_text("method: bayes\nparameters: {seed: {values: [0]}}\n")
    assert main(["sweep", str(sweep), *base]) == 2
