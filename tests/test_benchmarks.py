"""Every benchmark runs in ``--quick`` mode and prints its claim and numbers (correctness only:
no timing is asserted)."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(
    p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.stem != "run_all"
)
# A line each benchmark's output must contain, with a number where one is expected.
EXPECTED = {
    "antialias_cost": r"timm:resnet18 \(small_input\)\s+aps \+ blur k3\s+11\.\d+M",
    "augment_overhead": r"translate\s+[\d.]+ / [\d.]+ / [\d.]+\s+[\d.]+%",
    "eval_throughput": r"eval\.evaluate\s+\d+ / \d+ / \d+\s+[\d.]+x",
    "fit_overhead": r"fit / raw loop, on device:\s+\d+\.\d{3}",
    "render_speed": r"quick datamodule setup \(shapes, 80 images",
    "stream_memory": r"peak RSS, eval of 200 / 40 images: \d+ / \d+ MiB = \d\.\d{3}",
    "utilization": r"largest lever, timm resnet18: .+ of the limit\)",
}


@pytest.fixture
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_every_benchmark_is_covered() -> None:
    assert set(SCRIPTS) == set(EXPECTED)


@pytest.mark.usefixtures("_restore_threads")
@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_mode(name: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    path = BENCH / f"{name}.py"
    monkeypatch.syspath_prepend(str(BENCH))  # as `python benchmarks/<name>.py` would
    monkeypatch.setattr(sys, "argv", [str(path), "--quick"])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert out.startswith("machine: ") or "\nmachine: " in out
    assert "claim: " in out
    assert re.search(EXPECTED[name], out), out


def test_runner_writes_results(tmp_path: Path) -> None:
    """The runner (``make bench``) records each benchmark's claim, command and output."""
    import subprocess

    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(BENCH / "run_all.py"), "--quick", "--only", "eval_throughput"]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.startswith("# Benchmark results\n")
    assert "torch " in text and "side by side in one process" in text
    assert "## eval_throughput\n" in text
    assert "Claim: Throughput of ``eval.evaluate``" in text
    assert "`python benchmarks/eval_throughput.py --quick`" in text
    assert re.search(EXPECTED["eval_throughput"], text)
    bad = subprocess.run([*cmd[:-1], "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown benchmark(s) nope" in bad.stderr
