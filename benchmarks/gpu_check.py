"""Claim: on a CUDA GPU invlab's GPU path is correct, and fit trains near a hand-written loop.

``make gpu-check``: one command for a machine with a CUDA GPU that downloads nothing, stays within
``--budget-s`` (default 400 s, under 8 minutes with start-up) and writes
``benchmarks/RESULTS-gpu.md``: device, driver, torch, commit, date, and every figure with the
command that reproduces it and min / median / max over its repeats. Sections, in this order,
each with a time budget (repeats and variants that do not fit in it are skipped and listed):

1. ``tests``: the CUDA-only tests (``pytest -m cuda``, tests/test_cuda.py).
2. ``demo``: ``invlab fit configs/default.yaml`` on the GPU: wall time, typical accuracy and each
   split's P(top-1 change), next to the CPU run's figures quoted in README's demo section (or a
   CPU run's ``metrics.json`` given with ``--cpu-reference``).
3. ``peak``: the measured bf16 matmul FLOP/s (the denominator of the utilisation figures).
4. ``throughput``: training images/s at CIFAR size (50,000 synthetic 32-px images, batch 512,
   ``translate,flip``) for the built-in CNN and ``timm:resnet18`` (small input): ``fit``'s
   training path (Lightning + Classifier + the datamodule's loader) against a hand-written loop
   with the same model, data and optimizer (``fit_overhead.py``), fp32 and bf16, with and without
   channels-last and ``torch.compile``; the FLOP/s a step achieves as a share of the bf16 peak.
5. ``augment``: each augmentation preset's time as a share of a training step (built-in CNN fp32
   and resnet18 bf16 + channels-last, batch 512).
6. ``eval``: ``eval.evaluate`` against a forward pass over the same views at ``eval.batch_size``.
7. ``full_epoch``: epochs of the ``full`` study size (configs/studies/full.yaml: resnet18, bf16,
   64-px canvases, 50,000 images) on synthetic images of that shape: seconds per epoch.
8. ``projection``: each study's ``full`` size (its sweep grid x epochs x images) projected onto
   one such GPU from the measured epoch, scaled by each grid point's FLOPs per image.

Without CUDA it exits 2, unless ``--cpu-smoke``: the same code at tiny sizes on the CPU, in
seconds (the test suite runs it; its figures say nothing about a GPU), written to ``--out``.

    .venv/bin/python benchmarks/gpu_check.py [--budget-s 400] [--only throughput ...] [--out PATH]
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu-smoke.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import machine, seconds, spread
from augment_overhead import default_model
from eval_throughput import build_model
from fit_overhead import fit_rate, raw_rate
from omegaconf import OmegaConf
from run_all import commit
from utilization import matmul_flops, step_flops

import augment
import models
from eval import evaluate
from eval.views import trajectory
from invlab.config import Config, eval_splits
from train.config import load_config
from train.data import InvDataModule, SplitData
from train.sweep import grid_points

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_YAML = REPO / "configs" / "default.yaml"
FULL_YAML = REPO / "configs" / "studies" / "full.yaml"
SWEEPS = REPO / "configs" / "sweeps"
NO_CUDA = (
    "gpu_check: no CUDA device (torch.cuda.is_available() is False). Run it on a machine with a "
    "CUDA GPU (`make gpu-check`), or add --cpu-smoke to run the same code at tiny sizes on the "
    "CPU (a correctness check of the script: its figures say nothing about a GPU)."
)
# Settings every benchmark fit shares: no evaluation, no W&B, quiet.
QUIET = [
    "eval.enabled=false",
    "logger.wandb.mode=disabled",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
BF16, CL, COMPILE = "trainer.precision=bf16-mixed", "model.channels_last=true", "model.compile=true"
# Levers in the order they run (the first ones matter most when the budget is short).
LEVERS: list[tuple[str, list[str]]] = [
    ("fp32", []),
    ("bf16", [BF16]),
    ("bf16 + channels-last", [BF16, CL]),
    ("bf16 + channels-last + compile", [BF16, CL, COMPILE]),
    ("fp32 + channels-last", [CL]),
    ("bf16 + compile", [BF16, COMPILE]),
    ("fp32 + compile", [COMPILE]),
    ("fp32 + channels-last + compile", [CL, COMPILE]),
]
MODELS: list[tuple[str, list[str]]] = [
    ("built-in CNN", []),
    ("timm:resnet18 (small_input)", ["model.name=timm:resnet18", "model.small_input=true"]),
]
RESNET18 = {"name": "timm:resnet18", "small_input": True}


@dataclass(frozen=True)
class Sizes:
    """How much work each section does: the GPU sizes, or tiny ones for ``--cpu-smoke``."""

    budget_s: float  # the whole check
    budgets: dict[str, float]  # seconds per section
    test_paths: tuple[str, ...]
    demo_overrides: tuple[str, ...]
    images: int  # throughput: synthetic training images, side, batch
    side: int
    batch: int
    model_overrides: tuple[str, ...]  # e.g. small widths
    models: int  # how many of MODELS (resnet18 is slow on a CPU, bf16 emulated on many)
    levers: tuple[str, ...]  # which of LEVERS, in their order
    compile_backend: str
    trials: int  # repeats of the throughput, augment, eval and full-epoch measurements
    matmul_n: int
    matmul_trials: int
    aug_batch: int
    aug_side: int
    aug_repeat: int
    eval_images: int
    full_overrides: tuple[str, ...]
    compile_guess_s: float  # a first compilation, for the budget


# The whole check gets 400 s: a section may overrun its budget by the one repeat it started
# (at most a compilation), and start-up takes seconds, so it ends well within 8 minutes.
GPU = Sizes(
    budget_s=400,
    budgets={
        "tests": 125,
        "demo": 75,
        "peak": 6,
        "throughput": 110,
        "augment": 15,
        "eval": 12,
        "full_epoch": 35,
        "projection": 10,
    },
    test_paths=("tests",),
    demo_overrides=(),
    images=50_000,
    side=32,
    batch=512,
    model_overrides=(),
    models=len(MODELS),
    levers=tuple(name for name, _ in LEVERS),
    compile_backend="inductor",
    trials=3,
    matmul_n=8192,
    matmul_trials=5,
    aug_batch=512,
    aug_side=32,
    aug_repeat=10,
    eval_images=1000,
    full_overrides=(),
    compile_guess_s=30,
)
SMOKE = Sizes(
    budget_s=600,
    budgets={
        "tests": 60,
        "demo": 60,
        "peak": 2,
        "throughput": 30,
        "augment": 3,
        "eval": 3,
        "full_epoch": 5,
        "projection": 5,
    },
    test_paths=("tests/test_cuda.py",),
    demo_overrides=(
        "data.n_train=64",
        "data.n_val=16",
        "data.batch_size=32",
        *(
            f"data.heldout.{s}.n=8"
            for s in ("typical", "position", "scale", "background", "atypical")
        ),
        "model.widths=[8,16]",
        "trainer.max_epochs=1",
        "eval.n_images=8",
        "eval.n_bootstrap=100",
        "eval.plots=false",
    ),
    images=32,
    side=8,
    batch=16,
    model_overrides=("model.widths=[8,16]",),
    models=1,
    levers=("fp32", "bf16 + channels-last + compile"),  # every code path, two fits
    compile_backend="aot_eager",
    trials=1,
    matmul_n=128,
    matmul_trials=2,
    aug_batch=8,
    aug_side=16,
    aug_repeat=1,
    eval_images=4,
    full_overrides=(
        "data.n_train=16",
        "data.image_size=16",
        "data.batch_size=8",
        "trainer.precision=32-true",
        "model.name=cnn",
        "model.widths=[8,16]",
    ),
    compile_guess_s=10,
)


class Budget:
    """A section's time: ``more(estimate)`` says whether another repeat fits before its end
    (never past the whole check's ``hard_until``); what did not fit is listed in ``skipped``."""

    def __init__(self, seconds_: float, hard_until: float) -> None:
        self.start = time.perf_counter()
        self.hard_until = hard_until
        self.until = min(self.start + seconds_, hard_until)
        self.skipped: list[str] = []

    def extend(self, seconds_: float) -> None:
        """Move the end by ``seconds_`` (time spent on another section's work)."""
        self.until = min(self.until + seconds_, self.hard_until)

    def more(self, estimate: float = 0.0) -> bool:
        return time.perf_counter() + estimate <= self.until

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def left(self) -> float:
        return max(0.0, self.until - time.perf_counter())


@dataclass
class Check:
    """What the sections share: the device, the sizes, and figures later sections reuse."""

    device: torch.device
    sizes: Sizes
    smoke: bool
    cpu_reference: Path | None
    workdir: str
    shared: dict[str, Any] = field(default_factory=dict)

    def command(self, section: str) -> str:
        flags = " --cpu-smoke" if self.smoke else ""
        return f"python benchmarks/gpu_check.py{flags} --only {section}"


# --------------------------------------------------------------------------- helpers
class SyntheticData(InvDataModule):
    """``cfg``'s datamodule over ``n`` random uint8 images of ``side`` px (10 classes): no
    rendering and no download, so the training path is ``fit``'s own (``train_dataloader``
    chooses the device-resident split or the pinned DataLoader) at any size in seconds."""

    def __init__(self, cfg: Config, n: int, side: int, seed: int = 0) -> None:
        super().__init__(cfg)
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen)
        self.labels = torch.randint(0, 10, (n,), generator=gen)
        empty = SplitData(self.images[:0], self.labels[:0], 0)
        self._splits = {name: empty for name in self.split_names}  # setup() has nothing to do
        self._splits["train"] = SplitData(self.images, self.labels, 0)

    @property
    def num_classes(self) -> int:
        return 10

    def prepare_data(self) -> None:  # nothing to download
        return None


def quiet() -> None:
    """Lightning's and torch's informational lines off (the report says what ran)."""
    for name in ("lightning.pytorch", "lightning.fabric", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (
        ".*does not have many workers.*",
        ".*LeafSpec.*",
        ".*on_after_batch_transfer.*",
        ".*TF32.*",
        ".*Tensor Cores.*",
        ".*Precision bf16-mixed.*",
        ".*smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", pattern)


def child_env() -> dict[str, str]:
    """The environment of a child process: the repository importable, as ``run_all.py`` does."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_child(cmd: list[str], timeout: float) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, its output, seconds) of a child process; on timeout the
    child and everything it started (compile workers) are killed."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so that a timeout ends all of it
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    return code, out, time.perf_counter() - start


def flops_per_image(model_cfg: Any, side: int) -> float:
    """FLOPs of one training step (forward + backward) per image, counted on the meta device."""
    with torch.device("meta"):
        net = models.build(model_cfg, num_classes=10)
        x = torch.rand(2, 3, side, side)
        return step_flops(net, x, torch.zeros(2, dtype=torch.long)) / 2


def fmt_time(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.1f} s"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def skipped_lines(budget: Budget) -> list[str]:
    if not budget.skipped:
        return []
    return ["", "Not run (section budget spent): " + "; ".join(budget.skipped) + "."]


# --------------------------------------------------------------------------- 1. tests
def section_tests(check: Check, budget: Budget) -> tuple[list[str], bool]:
    """The CUDA-marked tests in a child process."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", *check.sizes.test_paths]
    code, out, spent = run_child(cmd, timeout=max(budget.left(), 10.0))
    counted = re.compile(r"\d+ (passed|skipped|failed|error|deselected)")
    summary = next(
        (ln.strip("= ") for ln in reversed(out.splitlines()) if counted.search(ln)), "no summary"
    )
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    errors = counts.get("error", 0) + counts.get("errors", 0)
    lines = [
        f"`python -m pytest -m cuda -q -rfEs {' '.join(check.sizes.test_paths)}` "
        f"({spent:.0f} s): **{summary}**",
        "",
        *table(
            ["passed", "failed", "errors", "skipped"],
            [
                [str(counts.get(k, 0)) for k in ("passed", "failed")]
                + [str(errors), str(counts.get("skipped", 0))]
            ],
        ),
    ]
    if code is None:
        lines.append(f"\nStopped after {spent:.0f} s (the section's budget).")
    notes = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR", "SKIPPED"))]
    if notes:
        lines += ["", "```text", *notes[:40], "```"]
    ok = code == 0 or (code == 5 and check.smoke)  # 5: nothing collected
    return lines, ok and not counts.get("failed") and not errors


# --------------------------------------------------------------------------- 2. demo
def readme_demo() -> dict[str, Any]:
    """The CPU figures README's demo section quotes: wall time, machine, accuracy and
    P(top-1 change) per split and transform (empty where the text is not found)."""
    text = (REPO / "README.md").read_text()
    start = text.find("`make demo` trains")
    block = text[start : text.find("\n## ", start)] if start >= 0 else ""
    out: dict[str, Any] = {"source": "README.md (demo section)", "accuracy": {}, "p_change": {}}
    if m := re.search(r"\((\d+) min (\d+) s measured", block):
        out["wall_s"] = 60 * int(m[1]) + int(m[2])
    if m := re.search(r"On an? (.+?) it takes", block, re.S):
        out["machine"] = " ".join(m[1].split())
    row = re.compile(r"^(\w+)\s+(translate|scale)\s+([\d.]+) \[[^\]]*\]\s+([\d.]+) \[", re.M)
    for split, transform, acc, p in row.findall(block.split("difference to typical")[0]):
        out["accuracy"].setdefault(split, float(acc))
        out["p_change"][(split, transform)] = float(p)
    return out


def metrics_figures(path: Path) -> dict[str, Any]:
    """Accuracy and P(top-1 change) per split and transform from a run's ``metrics.json``."""
    inv = json.loads(path.read_text())["invariance"]["splits"]
    out: dict[str, Any] = {"accuracy": {}, "p_change": {}}
    for split, rep in inv.items():
        out["accuracy"][split] = rep["accuracy"]["mean"]
        for transform in ("translate", "scale"):
            if isinstance(rep.get(transform), dict) and "p_change" in rep[transform]:
                out["p_change"][(split, transform)] = rep[transform]["p_change"]["mean"]
    return out


def section_demo(check: Check, budget: Budget) -> tuple[list[str], bool]:
    """``invlab fit configs/default.yaml`` on this machine's accelerator, in a child process."""
    out_dir = Path(check.workdir) / "demo"
    args = [
        "fit",
        "configs/default.yaml",
        f"out_dir={out_dir}",
        "logger.wandb.mode=disabled",
        *check.sizes.demo_overrides,
    ]
    code, out, spent = run_child(
        [sys.executable, "-m", "train.cli", *args], timeout=max(budget.left(), 10.0)
    )
    shown = " ".join(["invlab", *(shlex.quote(a) for a in args)]).replace(str(out_dir), "$TMP")
    lines = [f"`{shown}` (the quickstart's config; W&B off), one run"]
    if code != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        why = "did not finish within its budget" if code is None else f"exit {code}"
        return [
            *lines,
            "",
            f"The demo {why} after {spent:.0f} s:",
            "",
            "```text",
            tail,
            "```",
        ], False
    gpu = metrics_figures(out_dir / "default" / "metrics.json")
    cpu = readme_demo()
    if check.cpu_reference is not None:
        cpu.update(metrics_figures(check.cpu_reference))
        cpu["source"] = str(check.cpu_reference)
    where = (
        "CPU-smoke sizes on the CPU" if check.smoke else torch.cuda.get_device_name(check.device)
    )
    rows = [
        [
            "wall time (process start to exit)",
            f"{spent:.0f} s",
            f"{cpu['wall_s']} s" if "wall_s" in cpu else "—",
        ]
    ]
    for split, acc in gpu["accuracy"].items():
        ref = cpu["accuracy"].get(split)
        rows.append([f"accuracy, {split}", f"{acc:.3f}", "—" if ref is None else f"{ref:.3f}"])
    for (split, transform), p in gpu["p_change"].items():
        ref = cpu["p_change"].get((split, transform))
        rows.append(
            [
                f"P(top-1 change), {split}, {transform}",
                f"{p:.3f}",
                "—" if ref is None else f"{ref:.3f}",
            ]
        )
    lines += [
        "",
        f"This run: {where}. CPU column: {cpu['source']}"
        + (f" ({cpu['machine']})" if "machine" in cpu else "")
        + ". The figures are one run each, point estimates (README gives their intervals); "
        "a GPU's kernels differ in rounding from a CPU's, so equal figures are not expected, "
        "figures within the intervals are.",
        "",
        *table(["figure", "this run", "CPU"], rows),
    ]
    return lines, True


# --------------------------------------------------------------------------- 3. peak
def bf16_peak(check: Check, budget: Budget | None = None) -> list[float]:
    """Measured bf16 matmul FLOP/s, one value per trial (cached for later sections)."""
    if "peak" not in check.shared:
        n, values = check.sizes.matmul_n, []
        for i in range(check.sizes.matmul_trials):
            if i and budget is not None and not budget.more():
                break
            values.append(matmul_flops(n, torch.bfloat16, check.device, 1))
        check.shared["peak"] = values
    return check.shared["peak"]


def section_peak(check: Check, budget: Budget) -> tuple[list[str], bool]:
    values = bf16_peak(check, budget)
    n = check.sizes.matmul_n
    return [
        f"`{check.command('peak')}`: {n} x {n} x {n} bf16 matmul, {len(values)} trials",
        "",
        f"bf16 matmul peak: **{spread([v / 1e12 for v in values], '{:.3g}')} TFLOP/s** "
        "(min / median / max; the best is the denominator below)",
    ], True


# --------------------------------------------------------------------------- 4. throughput
def section_throughput(check: Check, budget: Budget) -> tuple[list[str], bool]:
    """fit's training path and the hand-written loop, every lever, both models."""
    s = check.sizes
    peak = max(bf16_peak(check))
    torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    base = [
        f"data.n_train={s.images}",
        f"data.image_size={s.side}",
        f"data.batch_size={s.batch}",
        "trainer.max_epochs=2",
        "augment.presets=[translate,flip]",
        "data.on_device=auto",
        f"model.compile_backend={s.compile_backend}",
        *QUIET,
    ]
    levers, nets = [lv for lv in LEVERS if lv[0] in s.levers], MODELS[: s.models]
    cfgs = {
        (m, lv): load_config(DEFAULT_YAML, overrides=[*base, *s.model_overrides, *mo, *lo])
        for m, mo in nets
        for lv, lo in levers
    }
    first = next(iter(cfgs.values()))
    data = SyntheticData(first, s.images, s.side)
    flops = {m: flops_per_image(cfgs[(m, levers[0][0])].model, s.side) for m, _ in nets}
    fit_r: dict[tuple[str, str], list[float]] = {k: [] for k in cfgs}
    raw_r: dict[tuple[str, str], list[float]] = {k: [] for k in cfgs}
    took: dict[tuple[str, str], float] = {}
    compiled: set[str] = set()
    paths: set[str] = set()
    for trial in range(s.trials):
        for lv, lo in levers:
            for m, _ in nets:
                key = (m, lv)
                guess = took.get(key, took.get((m, levers[0][0]), 0.0))
                if COMPILE in lo and key not in took:  # a first compilation of this variant
                    guess += s.compile_guess_s if m not in compiled else s.compile_guess_s / 3
                if took and not budget.more(guess):
                    budget.skip(f"{m}, {lv}, trial {trial + 1}")
                    continue
                start = time.perf_counter()
                fit_r[key].append(fit_rate(cfgs[key], data, check.workdir))
                raw_r[key].append(raw_rate(cfgs[key], data.images, data.labels, True))
                took[key] = time.perf_counter() - start
                paths.add("device-resident" if data.train_on_device else "pinned DataLoader")
                if COMPILE in lo:
                    compiled.add(m)
    rows, best, short = [], {}, []
    where = " and ".join(sorted(paths))
    for (m, lv), fits in fit_r.items():
        raws = raw_r[(m, lv)]
        if not fits:
            continue
        ratio = [f / r for f, r in zip(fits, raws, strict=True)]
        if statistics.median(ratio) < 0.95:
            short.append(f"{m}, {lv} ({statistics.median(ratio):.2f})")
        achieved = statistics.median(fits) * flops[m]
        rows.append(
            [
                m,
                lv,
                spread(fits),
                spread(raws),
                spread(ratio, "{:.2f}"),
                f"{achieved / 1e12:.3g}",
                f"{achieved / peak:.1%}",
            ]
        )
        if statistics.median(fits) > best.get(m, ("", 0.0))[1]:
            best[m] = (lv, statistics.median(fits))
    lines = [
        f"`{check.command('throughput')}`: {s.images:,} synthetic {s.side}-px uint8 images "
        f"(10 classes), batch {s.batch}, `translate,flip`, SGD + cosine; `data.on_device=auto` "
        f"gave fit the {where} path and the loop slices the same split on the device; "
        "a repeat trains 2 epochs and times the second "
        f"(compilation and warm-up excluded); fit / loop is the median of per-repeat ratios. "
        f"Step FLOPs (forward + backward, FlopCounterMode): "
        + ", ".join(f"{m} {f / 1e9:.2f} GFLOP/image" for m, f in flops.items())
        + f"; achieved = fit's median img/s x FLOPs, against the bf16 matmul peak "
        f"({peak / 1e12:.3g} TFLOP/s). Compile backend: {s.compile_backend}.",
        "",
        *table(
            [
                "model",
                "lever",
                "fit img/s (min / med / max)",
                "raw loop img/s",
                "fit / loop",
                "TFLOP/s",
                "of bf16 peak",
            ],
            rows,
        ),
        "",
    ]
    lines.append(
        f"- fit / loop below 0.95 (the goal): {'; '.join(short) if short else 'none'} "
        f"of {len(rows)} measured"
    )
    for m, (lv, rate) in best.items():
        fp32 = fit_r[(m, "fp32")]
        gain = rate / statistics.median(fp32) if fp32 else float("nan")
        lines.append(f"- fastest for {m}: {lv}, {rate:,.0f} img/s ({gain:.2f}x fp32)")
    return lines + skipped_lines(budget), bool(rows)


# --------------------------------------------------------------------------- 5. augment
def section_augment(check: Check, budget: Budget) -> tuple[list[str], bool]:
    """Each preset's augmentation time against training steps on the device."""
    s, dev = check.sizes, check.device
    torch.manual_seed(0)
    x = torch.rand(s.aug_batch, 3, s.aug_side, s.aug_side, device=dev)
    y = torch.randint(0, 10, (s.aug_batch,), device=dev)
    cnn, _ = default_model()
    nets = {"built-in CNN fp32": (cnn.to(dev), x, False)}
    if s.models > 1:
        res = models.build(RESNET18, num_classes=10).to(dev).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        nets["timm:resnet18 (small_input) bf16 + channels-last"] = (res, x_cl, True)

    def stepper(net: torch.nn.Module, inp: torch.Tensor, bf16: bool) -> Callable[[], None]:
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(inp), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    steps = {name: stepper(*spec) for name, spec in nets.items()}
    augs = {}
    for name in augment.list_presets():
        aug = augment.build(load_config(overrides=[f"augment.presets=[{name}]"]).augment)
        aug.reseed(0)
        augs[name] = aug
    with torch.no_grad():
        for aug in augs.values():
            aug(x)  # warm-up: size-dependent ops, kernels
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in [*steps, *augs]}
    trials = s.trials + 2
    for trial in range(trials):
        per_trial = sum(statistics.median(v) for v in times.values() if v) * s.aug_repeat
        if trial and not budget.more(per_trial):
            budget.skip(f"trials {trial + 1} to {trials}")
            break
        for k, fn in steps.items():
            times[k].append(seconds(fn, dev, s.aug_repeat))
        with torch.no_grad():
            for k, aug in augs.items():
                times[k].append(seconds(lambda aug=aug: aug(x), dev, s.aug_repeat))
    step_s = {k: statistics.median(times[k]) for k in steps}
    rows = [
        [name, spread([1e3 * t for t in times[name]], "{:.3f}")]
        + [f"{statistics.median(times[name]) / t:.1%}" for t in step_s.values()]
        for name in augs
    ]
    over = {
        k: [name for name in augs if statistics.median(times[name]) > 0.1 * t] or ["none"]
        for k, t in step_s.items()
    }
    first = next(iter(step_s))
    lines = [
        f"`{check.command('augment')}`: batch {s.aug_batch} x 3 x {s.aug_side} x {s.aug_side} "
        f"float on the device; {len(times[first])} interleaved trials of {s.aug_repeat} calls. "
        "Training steps (forward + backward + SGD), ms: "
        + "; ".join(f"{k} {spread([1e3 * t for t in times[k]], '{:.2f}')}" for k in steps)
        + ".",
        "",
        *table(["preset", "augment ms (min / med / max)", *(f"of {k} step" for k in steps)], rows),
        "",
        *(f"- presets over 10% of the {k} step: {', '.join(v)}" for k, v in over.items()),
    ]
    return lines + skipped_lines(budget), True


# --------------------------------------------------------------------------- 6. eval
def section_eval(check: Check, budget: Budget) -> tuple[list[str], bool]:
    """``eval.evaluate`` against a forward pass over as many pre-built views."""
    s, dev = check.sizes, check.device
    cfg = load_config(overrides=[f"eval.n_images={s.eval_images}"])
    ev, size, margin = cfg.eval, cfg.data.image_size, cfg.data.eval_margin_px
    splits = eval_splits(cfg)
    model, model_name = build_model()
    model = model.to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    shape = (s.eval_images, 3, size + 2 * margin, size + 2 * margin)
    images = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (s.eval_images,), generator=gen)
    data = {split: (images, labels) for split in splits}
    views_per_image = 1 + len(trajectory(ev.trajectory, ev.max_shift_px)) + 2 + len(ev.scales)
    n_views = len(splits) * s.eval_images * views_per_image
    prebuilt = torch.rand(n_views, 3, size, size, device=dev)

    def run_evaluate() -> None:
        evaluate(model, data, ev, image_size=size, device=dev, progress=False)

    def run_forward() -> None:
        with torch.inference_mode():
            for batch in prebuilt.split(ev.batch_size):
                model(batch)

    fns = {"eval.evaluate": run_evaluate, "forward pass (ceiling)": run_forward}
    for fn in fns.values():
        fn()  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for trial in range(s.trials):
        took = sum(n_views / statistics.median(v) for v in rates.values() if v)
        if trial and not budget.more(took):
            budget.skip(f"trials {trial + 1} to {s.trials}")
            break
        for k, fn in fns.items():
            rates[k].append(n_views / seconds(fn, dev))
    ratio = [
        a / b for a, b in zip(rates["eval.evaluate"], rates["forward pass (ceiling)"], strict=True)
    ]
    lines = [
        f"`{check.command('eval')}`: {model_name}, {size}-px views, {views_per_image} per image "
        f"({ev.trajectory} {ev.protocol} shifts, pairs, {len(ev.scales)} scales), "
        f"{s.eval_images} images x {len(splits)} splits = {n_views:,} views, "
        f"eval.batch_size {ev.batch_size}, {len(ratio)} trial(s); bootstrap intervals included "
        "in eval.evaluate.",
        "",
        *table(["", "views/s (min / med / max)"], [[k, spread(v)] for k, v in rates.items()]),
        "",
        f"eval.evaluate / ceiling: **{spread(ratio, '{:.2f}')}** (target >= 0.85).",
    ]
    return lines + skipped_lines(budget), True


# --------------------------------------------------------------------------- 7. full epoch
def full_config(check: Check) -> Config:
    over = ["trainer.max_epochs=2", *QUIET, *check.sizes.full_overrides]
    return load_config(DEFAULT_YAML, FULL_YAML, overrides=over)


def section_full_epoch(check: Check, budget: Budget) -> tuple[list[str], bool]:
    """Epochs of the full study size through fit's training path, on synthetic images."""
    cfg = full_config(check)
    n, side = int(cfg.data.n_train), int(cfg.data.image_size)
    data = SyntheticData(cfg, n, side)
    per_epoch: list[float] = []
    for trial in range(max(2, check.sizes.trials - 1)):
        if trial and not budget.more(3 * statistics.median(per_epoch)):
            budget.skip(f"repeat {trial + 1}")
            break
        per_epoch.append(n / fit_rate(cfg, data, check.workdir))
    check.shared["full"] = (cfg, per_epoch)
    m = cfg.model
    lines = [
        f"`{check.command('full_epoch')}`: configs/default.yaml + configs/studies/full.yaml "
        f"({m.name}{', small_input' if m.small_input else ''}, {cfg.trainer['precision']}, "
        f"batch {cfg.data.batch_size}, augment {list(cfg.augment.presets) or 'none'}) on {n:,} "
        f"synthetic {side}-px images (the {cfg.data.source} canvases' shape; nothing rendered or "
        "downloaded), no evaluation; a repeat trains 2 epochs and times the second.",
        "",
        f"seconds per epoch: **{spread(per_epoch, '{:.2f}')}** (min / median / max over "
        f"{len(per_epoch)} repeat(s)); {n / statistics.median(per_epoch):,.0f} img/s.",
    ]
    return lines + skipped_lines(budget), True


# --------------------------------------------------------------------------- 8. projection
def study_sweeps() -> list[tuple[Path, list[str]]]:
    """Every sweep of a study (its command names a configs/studies/ file) and its YAMLs."""
    out = []
    for path in sorted(SWEEPS.glob("*.yaml")):
        spec = OmegaConf.to_container(OmegaConf.load(path))
        command = spec.get("command", []) if isinstance(spec, dict) else []
        yamls = [c for c in command if isinstance(c, str) and c.endswith((".yaml", ".yml"))]
        if any(y.startswith("configs/studies/") for y in yamls):
            out.append((path, yamls))
    return out


def section_projection(check: Check, budget: Budget) -> tuple[list[str], bool]:
    """Each study's full size on one GPU: points x epochs x images x measured s/image, scaled
    by each point's FLOPs per image against the measured configuration's."""
    if "full" not in check.shared:  # --only projection: measure the epoch first
        start = time.perf_counter()
        section_full_epoch(check, Budget(check.sizes.budgets["full_epoch"], budget.hard_until))
        budget.extend(time.perf_counter() - start)
    cfg_ref, per_epoch = check.shared["full"]
    ref_side = int(cfg_ref.data.image_size)
    per_image = [t / int(cfg_ref.data.n_train) for t in per_epoch]
    ref_flops = flops_per_image(cfg_ref.model, ref_side)
    flops_cache: dict[str, float] = {}
    rows, ok = [], True
    for path, yamls in study_sweeps():
        if rows and not budget.more():
            budget.skip(path.stem)
            continue
        try:
            points = grid_points(path)
            seen: dict[tuple[str, ...], tuple[float, float]] = {}  # config without seed
            total = [0.0] * len(per_image)
            ratios = []
            for p in points:
                key = tuple(o for o in p.overrides if not o.startswith("seed="))
                if key not in seen:
                    paths = [REPO / y for y in yamls] + [FULL_YAML]
                    cfg = load_config(*paths, overrides=list(p.overrides))
                    side = int(cfg.data.image_size)
                    mkey = json.dumps([OmegaConf.to_container(cfg.model), side], sort_keys=True)
                    if mkey not in flops_cache:
                        flops_cache[mkey] = flops_per_image(cfg.model, side)
                    work = int(cfg.trainer["max_epochs"]) * int(cfg.data.n_train)
                    seen[key] = (work, flops_cache[mkey] / ref_flops)
                work, ratio = seen[key]
                ratios.append(ratio)
                total = [t + work * ratio * s for t, s in zip(total, per_image, strict=True)]
            cfg0 = load_config(
                *[REPO / y for y in yamls], FULL_YAML, overrides=list(points[0].overrides)
            )
            rows.append(
                [
                    path.stem,
                    str(len(points)),
                    f"{cfg0.trainer['max_epochs']} x {int(cfg0.data.n_train):,}",
                    f"{min(ratios):.2f}–{max(ratios):.2f}",
                    " / ".join(
                        fmt_time(t) for t in (min(total), statistics.median(total), max(total))
                    ),
                ]
            )
        except Exception as exc:  # a study that does not combine with full.yaml says so
            ok = False
            rows.append([path.stem, "—", "—", "—", f"error: {type(exc).__name__}: {exc}"[:200]])
    lines = [
        f"`{check.command('projection')}`: for every study sweep in configs/sweeps/ (base YAMLs "
        "+ configs/studies/full.yaml), the sum over its grid points of epochs x training images x "
        f"the measured seconds per image of the full size ({fmt_time(statistics.median(per_epoch))}"
        " per epoch above) x the point's training FLOPs per image relative to the measured "
        f"configuration's ({ref_flops / 1e9:.2f} GFLOP). Runs one after another on one GPU; "
        "training only (per-epoch validation and the final invariance evaluation are not "
        "included); FLOP scaling understates memory-bound layers (blur, APS).",
        "",
        *table(
            [
                "study sweep",
                "runs",
                "epochs x images",
                "FLOPs vs measured",
                "projected training time (min / med / max)",
            ],
            rows,
        ),
    ]
    return lines + skipped_lines(budget), ok


SECTIONS: dict[str, tuple[str, Callable[[Check, Budget], tuple[list[str], bool]]]] = {
    "tests": ("CUDA-only tests", section_tests),
    "demo": ("The demo on this machine", section_demo),
    "peak": ("bf16 matmul peak", section_peak),
    "throughput": ("Training throughput at CIFAR size: fit vs a raw loop", section_throughput),
    "augment": ("Augmentation presets: share of a training step", section_augment),
    "eval": ("Evaluation throughput against the forward-pass ceiling", section_eval),
    "full_epoch": ("One epoch of the full study size", section_full_epoch),
    "projection": ("Projected wall time of each study's full size", section_projection),
}


# --------------------------------------------------------------------------- report
def device_lines(device: torch.device) -> list[str]:
    """Device, driver, CUDA, cuDNN (or the CPU line of ``--cpu-smoke``)."""
    if device.type != "cuda":
        return [f"- device: CPU only (--cpu-smoke: tiny sizes, no GPU figures); {machine()}"]
    p = torch.cuda.get_device_properties(device)
    driver = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        driver = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout else driver
    return [
        f"- device: {p.name}, compute capability {p.major}.{p.minor}, "
        f"{p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; "
        f"{torch.cuda.device_count()} visible",
        f"- driver {driver}; CUDA runtime {torch.version.cuda}; cuDNN "
        f"{torch.backends.cudnn.version()}",
        f"- host: {machine()}",
    ]


def header(check: Check, argv: list[str]) -> list[str]:
    import kornia
    import lightning
    import timm

    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = "GPU check" + (" — CPU smoke run (not GPU figures)" if check.smoke else "")
    return [
        f"# {title}",
        "",
        *device_lines(check.device),
        f"- torch {torch.__version__}, lightning {lightning.__version__}, timm "
        f"{timm.__version__}, kornia {kornia.__version__}; python {platform.python_version()}",
        f"- commit {commit()}{' (with uncommitted changes)' if dirty else ''}; {now}",
        f"- command: `python benchmarks/gpu_check.py {' '.join(argv)}`".rstrip(" `") + "`",
        "",
        "Every figure below comes with the command that reproduces it and min / median / max "
        "over its repeats (fewer repeats where a section's time budget ran out: the section "
        "says so). Ratios are measured side by side in one process.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/RESULTS-gpu.md")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--budget-s", type=float, default=None, help="seconds for the whole check")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        choices=list(SECTIONS),
        metavar="NAME",
        help=f"sections: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--cpu-reference",
        type=Path,
        default=None,
        help="a CPU demo run's metrics.json (default: README's figures)",
    )
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(NO_CUDA, file=sys.stderr)
        return 2
    smoke = args.cpu_smoke
    if smoke and args.out is None:
        parser.error("--cpu-smoke needs --out (RESULTS-gpu.md holds GPU figures only)")
    out = args.out or HERE / "RESULTS-gpu.md"
    sizes = SMOKE if smoke else GPU
    device = torch.device("cpu") if smoke else torch.device("cuda", torch.cuda.current_device())
    start = time.perf_counter()
    hard_until = start + (args.budget_s or sizes.budget_s)
    quiet()
    names = args.only or list(SECTIONS)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        check = Check(device, sizes, smoke, args.cpu_reference, workdir)
        lines = header(check, argv)
        for i, name in enumerate(names, 1):
            title, fn = SECTIONS[name]
            print(f"[{time.perf_counter() - start:5.0f} s] {name} ...", flush=True)
            lines += ["", f"## {i}. {title}", ""]
            if time.perf_counter() >= hard_until:
                lines.append("Not run: the whole check's time budget was spent.")
                continue
            budget = Budget(sizes.budgets[name], hard_until)
            try:
                body, ok = fn(check, budget)
            except Exception:
                body, ok = ["```text", traceback.format_exc(limit=8).rstrip(), "```"], False
            took = time.perf_counter() - budget.start
            lines += [*body, "", f"_{took:.0f} s of a {sizes.budgets[name]:.0f}-s budget._"]
            if not ok:
                failed.append(name)
                lines.append("\n**FAILED**")
    total = time.perf_counter() - start
    lines += ["", f"Total: {total:.0f} s (budget {args.budget_s or sizes.budget_s:.0f} s)."]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} in {total:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
