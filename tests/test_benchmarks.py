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
# run_all runs the others; gpu_check has its own test (a CUDA check, with a --cpu-smoke mode).
SCRIPTS = sorted(
    p.stem
    for p in BENCH.glob("*.py")
    if not p.name.startswith("_") and p.stem not in ("run_all", "gpu_check")
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


# What each section of the GPU check's report must hold, in order (numbers where they belong).
GPU_CHECK_SECTIONS = [
    ("CUDA-only tests", r"pytest -m cuda .*\*\*\d+ (passed|skipped)"),
    ("The demo on this machine", r"\| accuracy, typical \| \d\.\d{3} \| \d\.\d{3} \|"),
    ("bf16 matmul peak", r"bf16 matmul peak: \*\*[\d.e-]+ / [\d.e-]+ / [\d.e-]+ TFLOP/s"),
    (
        "Training throughput at CIFAR size",
        r"\| built-in CNN \| bf16 \+ channels-last \+ compile \| \d+ / \d+ / \d+ \| "
        r"\d+ / \d+ / \d+ \| \d\.\d\d / \d\.\d\d / \d\.\d\d \| [\d.e-]+ \| [\d.]+% \|",
    ),
    ("Augmentation presets", r"\| translate \| [\d.]+ / [\d.]+ / [\d.]+ \| [\d.]+% \|"),
    ("Evaluation throughput", r"eval\.evaluate / ceiling: \*\*\d\.\d\d / \d\.\d\d / \d\.\d\d"),
    ("One epoch of the full study size", r"seconds per epoch: \*\*[\d.]+ / [\d.]+ / [\d.]+\*\*"),
    (
        "Projected wall time",
        r"\| \w+ \| \d+ \| \d+ x [\d,]+ \| [\d.]+–[\d.]+ \| [\d.]+ (s|min|h) / [\d.]+ (s|min|h)",
    ),
]


def test_gpu_check_cpu_smoke_writes_every_section(tmp_path: Path) -> None:
    """``make gpu-check``'s script, run at tiny sizes on the CPU (``--cpu-smoke``), writes every
    section with its command and numbers to ``--out`` (never to RESULTS-gpu.md)."""
    import subprocess

    out = tmp_path / "gpu.md"
    results = BENCH / "RESULTS-gpu.md"
    before = results.stat().st_mtime_ns if results.exists() else None
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--cpu-smoke", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    text = out.read_text()
    assert text.startswith("# GPU check — CPU smoke run (not GPU figures)\n")
    assert re.search(r"^- torch \S+, lightning \S+, timm \S+, kornia \S+", text, re.M)
    assert re.search(r"^- commit \S+.*; \d{4}-\d\d-\d\d \d\d:\d\d UTC$", text, re.M)
    assert "FAILED" not in text and "Traceback" not in text and "Not run: the whole" not in text
    sections = re.split(r"^## \d+\. ", text, flags=re.M)[1:]
    assert len(sections) == len(GPU_CHECK_SECTIONS)
    for body, (title, pattern) in zip(sections, GPU_CHECK_SECTIONS, strict=True):
        assert body.startswith(title), body[:200]
        assert "`python " in body or "`invlab " in body, body[:300]  # its command
        assert re.search(pattern, body), body
    assert (results.stat().st_mtime_ns if results.exists() else None) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_check_without_cuda_exits_2_and_names_the_fix() -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert "make gpu-check" in proc.stderr
