"""Studies: sweeps that survive interruption and failure, and `invlab report` across seeds."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.study import group_runs, load_runs, short_label, t_interval, write_report
from tests.conftest import DEFAULT_YAML, REPO, TINY_OVERRIDES
from train.cli import main
from train.sweep import grid_points, run_sweep, slurm_script, summary


def _stat(mean: float) -> dict:
    return {"mean": mean, "ci": [mean - 0.01, mean + 0.01]}


def _fake_run(root: Path, shift: int, seed: int, typ: float, far: float) -> Path:
    """A finished run's metrics.json with known P(top-1 change) on two splits."""
    run = root / f"s{shift}-seed{seed}"
    run.mkdir(parents=True)
    block = lambda p, gap=None: {  # noqa: E731
        "translate": {
            "accuracy": _stat(0.9),
            "p_change": _stat(p),
            "given_correct": {"p_change": _stat(p / 2)},
            **({"gap_to_typical": {"p_change": _stat(gap)}} if gap is not None else {}),
        }
    }
    metrics = {
        "name": run.name,
        "config": {
            "name": run.name,
            "seed": seed,
            "out_dir": str(root),
            "augment": {"max_shift_px": shift, "pad_fill": "reflect"},
            "logger": {"csv": True},
        },
        "invariance": {"splits": {"typical": block(typ), "far": block(far, far - typ)}},
    }
    # a 3x3 shift map (cosine to the centre view) on typical: 1 - 0.01 * seed off-centre
    cmap = [[1 - 0.01 * seed] * 3 for _ in range(3)]
    cmap[1][1] = 1.0
    metrics["invariance"]["splits"]["typical"]["translate"]["cosine_map"] = cmap
    metrics["invariance"]["splits"]["typical"]["translate"]["cosine_local"] = _stat(0.99)
    # local homogeneity of the split's images: typical 0.9, far 0.5 + 0.1 * seed
    for split, h in (("typical", 0.9), ("far", 0.5 + 0.1 * seed)):
        metrics["invariance"]["splits"][split]["homogeneity"] = {"2": _stat(h)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_runs_group_by_everything_but_the_seed_with_a_t_interval(tmp_path: Path) -> None:
    # shift 0: typical P(change) 0.1, 0.2, 0.3 over seeds -> mean 0.2, sd 0.1,
    # t(0.975, df=2) = 4.302653 -> half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    for seed, typ in enumerate([0.1, 0.2, 0.3]):
        _fake_run(tmp_path, 0, seed, typ, typ + 0.1)
    for seed, typ in enumerate([0.05, 0.05]):  # shift 4: identical seeds -> no width
        _fake_run(tmp_path, 4, seed, typ, 0.5)
    runs = load_runs([tmp_path])
    groups, keys = group_runs(runs)
    assert keys == ["augment.max_shift_px"]  # name, out_dir and seed do not split groups
    assert sorted((g.key["augment.max_shift_px"], g.seeds) for g in groups) == [
        (0, [0, 1, 2]),
        (4, [0, 1]),
    ]
    out = write_report([tmp_path], tmp_path / "rep")
    rows = {(r["group"], r["split"], r["metric"]): r for r in out["rows"]}
    r = rows[("augment.max_shift_px=0", "typical", "p_change")]
    assert r["mean"] == pytest.approx(0.2) and r["n_seeds"] == 3
    assert r["hi"] - r["mean"] == pytest.approx(0.248414, abs=1e-5)
    g = rows[("augment.max_shift_px=0", "far", "p_change")]
    assert g["gap_mean"] == pytest.approx(0.1) and g["gap_hi"] == pytest.approx(0.1)  # constant
    assert rows[("augment.max_shift_px=4", "typical", "p_change")]["lo"] == pytest.approx(0.05)
    c = rows[("augment.max_shift_px=0", "typical", "given_correct/p_change")]
    assert c["mean"] == pytest.approx(0.1)
    # the files: CSV with every number, Markdown table, the plot against the swept key
    names = {p.name for p in out["files"]}
    assert names == {
        "report.csv",
        "report.md",
        "contrasts.csv",
        "contrasts.md",
        "by_augment_max_shift_px.png",
        "tradeoff.png",
        "homogeneity.png",
        "cosine_maps.png",
    }
    assert rows[("augment.max_shift_px=4", "typical", "cosine_local")]["mean"] == pytest.approx(
        0.99
    )
    # intervals are clipped to the metric's range: P(change) 0.1, 0.2, 0.3 -> lo 0.2 - 0.248 < 0
    assert r["lo"] == 0.0
    h = rows[("augment.max_shift_px=0", "far", "homogeneity/2")]
    assert h["transform"] == "data" and h["mean"] == pytest.approx(0.6) and h["n_seeds"] == 3
    assert h["gap_mean"] is None
    assert (tmp_path / "rep" / "by_augment_max_shift_px.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| 0 | 0,1,2 | typical |" in md and "+0.100 [+0.100, +0.100]" in md
    one = t_interval([1.0])
    assert one["mean"] == 1.0 and one["n"] == 1 and all(math.isnan(c) for c in one["ci"])
    assert math.isnan(t_interval([])["mean"])


def test_runs_that_predate_a_key_or_differ_in_execution_only_group_together(
    tmp_path: Path,
) -> None:
    """A run without ``augment.pad_fill`` (older than the key) takes its default, ``reflect``;
    ``data.on_device`` and ``model.compile`` change how a run executes, not what it computes."""
    import json as _json

    for seed, extra in enumerate([{}, {"data": {"on_device": "false"}}, {"model": {"compile": 1}}]):
        run = _fake_run(tmp_path, 2, seed, 0.1, 0.2)
        metrics = _json.loads((run / "metrics.json").read_text())
        if seed == 0:
            del metrics["config"]["augment"]["pad_fill"]
        metrics["config"].update(extra)
        (run / "metrics.json").write_text(_json.dumps(metrics))
    other = _fake_run(tmp_path / "z", 2, 0, 0.1, 0.2)  # a real difference: another fill
    metrics = _json.loads((other / "metrics.json").read_text())
    metrics["config"]["augment"]["pad_fill"] = "zeros"
    (other / "metrics.json").write_text(_json.dumps(metrics))
    groups, keys = group_runs(load_runs([tmp_path]))
    assert keys == ["augment.pad_fill"]
    assert sorted((g.key["augment.pad_fill"], g.seeds) for g in groups) == [
        ("reflect", [0, 1, 2]),
        ("zeros", [0]),
    ]


def test_duplicate_seeds_and_bad_by_key_are_errors(tmp_path: Path) -> None:
    _fake_run(tmp_path / "a", 0, 0, 0.1, 0.2)
    _fake_run(tmp_path / "b", 0, 0, 0.1, 0.2)
    assert main(["report", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path / "a"), "--by", "seed"]) == 2
    assert main(["report", str(tmp_path / "nothing")]) == 2


def _grid(tmp_path: Path, body: str) -> Path:
    sweep = tmp_path / "grid.yaml"
    sweep.write_text("method: grid\nparameters:\n" + body)
    return sweep


def test_tiny_sweep_of_two_values_and_two_seeds_then_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _grid(tmp_path, "  augment.max_shift_px: {values: [1, 2]}\n  seed: {values: [0, 1]}\n")
    base = [
        str(DEFAULT_YAML),
        *TINY_OVERRIDES,
        "augment.presets=[translate]",
        "eval.transforms=[translate]",
        f"out_dir={tmp_path / 'runs'}",
    ]
    assert main(["sweep", str(sweep), *base]) == 0
    out = capsys.readouterr().out
    assert "4 points: 4 done." in out
    assert len(list((tmp_path / "runs").glob("*/metrics.json"))) == 4
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "4 runs in 2 groups" in out
    lines = [ln for ln in out.splitlines() if " typical " in f" {ln} "]
    assert len(lines) == 2 and all("0,1" in ln for ln in lines)
    assert (tmp_path / "rep" / "by_augment_max_shift_px.png").is_file()
    # `invlab eval` outputs under the runs join the report as their own group (eval.protocol)
    circular = []
    for run in sorted((tmp_path / "runs").glob("*/")):
        if json.loads((run / "metrics.json").read_text())["config"]["augment"]["max_shift_px"] != 1:
            continue
        out_dir = run / "reports" / "circular"
        ckpt = str(run / "checkpoints" / "last.ckpt")
        assert main(["eval", ckpt, "eval.protocol=circular", "--out", str(out_dir)]) == 0
        report = json.loads((out_dir / "invariance.json").read_text())
        assert report["config"]["eval"]["protocol"] == "circular"
        circular.append(report["splits"]["typical"]["translate"]["p_change"]["mean"])
    assert len(circular) == 2
    capsys.readouterr()
    out = write_report([tmp_path / "runs"], tmp_path / "rep2")
    assert set(out["keys"]) == {"augment.max_shift_px", "eval.protocol"}
    rows = {
        (r["group"], r["split"], r["metric"]): r
        for r in out["rows"]
        if r["transform"] == "translate"
    }
    row = rows[("augment.max_shift_px=1, eval.protocol=circular", "typical", "p_change")]
    assert row["n_seeds"] == 2 and row["mean"] == pytest.approx(sum(circular) / 2)
    assert (
        rows[("augment.max_shift_px=2, eval.protocol=crop", "typical", "p_change")]["n_seeds"] == 2
    )
    # a second sweep skips every finished point
    assert main(["sweep", str(sweep), *base]) == 0
    assert "4 points: 4 skipped." in capsys.readouterr().out


def test_parallel_jobs_run_every_point_in_its_own_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _grid(tmp_path, "  seed: {values: [0, 1]}\n")
    base = [str(DEFAULT_YAML), *TINY_OVERRIDES, f"out_dir={tmp_path}", "eval.enabled=false"]
    assert main(["sweep", str(sweep), *base, "--jobs", "2"]) == 0
    assert "2 points: 2 done." in capsys.readouterr().out
    logs = sorted(p.name for p in (tmp_path / "sweep-logs").iterdir())
    assert logs == ["grid-seed_0.log", "grid-seed_1.log"]
    for seed in (0, 1):
        metrics = json.loads((tmp_path / f"grid-seed_{seed}" / "metrics.json").read_text())
        assert metrics["config"]["seed"] == seed


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep = _grid(tmp_path, "  model.name: {values: [cnn, 'timm:no_such_model']}\n")
    base = [*TINY_OVERRIDES, f"out_dir={tmp_path}", "eval.enabled=false"]
    results = run_sweep(sweep, [str(DEFAULT_YAML)], base)
    assert [r.status for r in results] == ["done", "failed"]
    error = (results[1].run_dir / "error.txt").read_text()
    assert "no_such_model" in error and "Traceback" in error
    assert "1 done, 1 failed" in summary(results) and "error.txt" in summary(results)
    assert main(["sweep", str(sweep), str(DEFAULT_YAML), *base]) == 1  # the exit code says so


def test_an_interrupted_point_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """A real `invlab sweep` process killed mid-run; the next sweep resumes the point from
    last.ckpt and finishes it with the same number of steps as an uninterrupted run."""
    sweep = _grid(tmp_path, "  seed: {values: [0]}\n")
    args = [
        str(sweep),
        str(DEFAULT_YAML),
        *TINY_OVERRIDES,
        f"out_dir={tmp_path}",
        "trainer.max_epochs=40",
        "eval.enabled=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "train.cli", "sweep", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    run_dir = tmp_path / "grid-seed_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.is_file() and not (run_dir / "metrics.json").is_file()
    results = run_sweep(sweep, [str(DEFAULT_YAML)], args[2:])
    assert [r.status for r in results] == ["resumed"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 40 and metrics["global_step"] == 40 * 2  # 64 images, batch 32


def test_the_slurm_script_parses_and_lists_every_point(tmp_path: Path) -> None:
    sweep = _grid(
        tmp_path, "  model.antialias.method: {values: [none, blur]}\n  seed: {values: [0, 1, 2]}\n"
    )
    script = slurm_script(sweep, [str(DEFAULT_YAML)], ["trainer.max_epochs=3"])
    path = tmp_path / "run.sbatch"
    assert (
        main(
            [
                "sweep",
                str(sweep),
                str(DEFAULT_YAML),
                "trainer.max_epochs=3",
                "--emit-slurm",
                str(path),
            ]
        )
        == 0
    )
    assert path.read_text() == script
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert "#SBATCH --array=0-5" in script
    for point in grid_points(sweep):
        assert point.name in script
    assert '--point "$SLURM_ARRAY_TASK_ID"' in script
    # what a task runs: one point, skipped when it is finished
    assert main(["sweep", str(sweep), str(DEFAULT_YAML), "--point", "9"]) == 2


def test_short_label_keeps_full_keys_only_where_their_last_parts_collide() -> None:
    key = {
        "model.antialias.method": "blur",
        "augment.max_shift_px": 4,
        "data.placement.scale": [1, 2],
        "model.scale": 0.5,
    }
    assert short_label(key) == (
        "method=blur, max_shift_px=4, data.placement.scale=[1, 2], model.scale=0.5"
    )
