"""Run every benchmark in ``benchmarks/`` and write ``benchmarks/RESULTS.md`` (``make bench``).

Each benchmark runs in its own process, one after the other, and prints its claim, its number
of trials, the machine line and min / median / max over trials; this file collects them under a
header naming the machine, torch, its threads and the date. A failing benchmark is recorded as
such and makes the run exit 1 after the others ran.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only fit_overhead ...] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import machine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Full-mode arguments sized so that `make bench` takes minutes on a 2-core CPU (RESULTS.md
# shows each command); run a script by hand for its own defaults.
FULL_ARGS = {
    "antialias_cost": ["--batch", "32", "--trials", "3", "--min-trial-s", "1"],
    "augment_overhead": ["--trials", "5"],
    "fit_overhead": ["--trials", "3", "--epochs", "2", "--threads", "1"],
    "render_speed": ["--n", "2000", "--trials", "2"],
    "utilization": ["--trials", "3", "--timm-batch", "16"],
}


def benchmarks() -> list[Path]:
    """Every benchmark script (helpers start with ``_``; this runner is not one, nor the GPU
    check, which needs CUDA and has its own target: ``make gpu-check``)."""
    skip = {Path(__file__).name, "gpu_check.py"}
    return sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name not in skip)


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def claim(path: Path) -> str:
    """The first line of a benchmark's docstring."""
    text = path.read_text().split('"""', 2)[1].strip().splitlines()[0]
    return text.removeprefix("Claim:").strip()


def arguments(path: Path, quick: bool) -> list[str]:
    return ["--quick"] if quick else FULL_ARGS.get(path.stem, [])


def run(path: Path, quick: bool) -> tuple[int, str, float]:
    """(exit code, stdout, seconds) of one benchmark."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(path), *arguments(path, quick)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    out = proc.stdout
    if proc.returncode != 0:
        out += "\n" + "\n".join(proc.stderr.strip().splitlines()[-15:])
    return proc.returncode, out.rstrip(), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark in --quick mode")
    parser.add_argument("--only", nargs="+", default=None, help="benchmark names (file stems)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    paths = benchmarks()
    if args.only:
        known = {p.stem: p for p in paths}
        unknown = [n for n in args.only if n not in known]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(known)}")  # fmt: skip
        paths = [known[n] for n in args.only]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"- {machine()}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s) by default "
        f"(benchmarks that set their own say so), CUDA available: {torch.cuda.is_available()}",
        f"- {now}, commit {commit()}{', --quick (correctness only)' if args.quick else ''}",
        "",
        "Ratios are measured side by side in one process (variants interleaved within each "
        "trial, so machine load hits them alike). Absolute numbers are indicative only: the "
        "machine is shared, and its load average at the start is on the machine line. Each "
        "section gives the benchmark's claim, its command and its own output (trials, "
        "min / median / max).",
    ]
    failed = []
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        code, out, spent = run(path, args.quick)
        status = "" if code == 0 else f" — FAILED (exit {code})"
        if code:
            failed.append(path.stem)
        command = " ".join(["python", f"benchmarks/{path.name}", *arguments(path, args.quick)])
        lines += [
            "",
            f"## {path.stem}{status}",
            "",
            f"Claim: {claim(path)}",
            "",
            f"`{command}` ({spent:.0f} s)",
            "",
            "```text",
            out,
            "```",
        ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
