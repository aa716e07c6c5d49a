"""Run a sweep's grid on this machine (W&B agents run it on many; ``--emit-slurm`` on a cluster).

The sweep file is the W&B sweep YAML of ``configs/sweeps/`` (``method: grid``): its
``parameters`` are invlab ``key=value`` overrides. Each grid point becomes a run named after the
values it sets. A point's run directory decides what happens to it:

- ``metrics.json`` exists: the point finished, it is **skipped** — only when the config stored
  with it equals the point's (else it is **stale**: an error naming the keys that differ, or a
  rerun with ``--overwrite``);
- ``checkpoints/last.ckpt`` exists but no ``metrics.json``: it was interrupted, it is
  **resumed** from that checkpoint (a resumed run equals an uninterrupted one), under the same
  rule for its stored config;
- another process holds the run's lock: it is **busy** (left alone, nothing written);
- anything else: it is **done** now (a directory left without a checkpoint is replaced).

The grid is checked before the first run starts: its size is stated, and each distinct config
(points that differ only in ``seed`` share one) is validated once, with a progress bar. One
sweep at a time writes an ``out_dir`` (a lock beside it; ``--point`` runs take only their run's).

A point that raises is **failed**: its traceback goes to ``<run dir>/error.txt`` and the sweep
goes on; the summary lists every status and the CLI exits non-zero when any point failed.
``jobs > 1`` runs points in parallel processes (``invlab sweep --point K`` each), one device
each when the machine has several accelerators.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from tqdm import tqdm

from invlab.config import Config, ConfigError, flatten, to_container
from invlab.files import atomic_write_text
from train.config import load_config
from train.rundir import DirectoryInUse, DirLock
from train.signals import Interrupted, record_signals

STATUSES = ("done", "resumed", "skipped", "stale", "busy", "failed", "planned")
# Keys that change how a run is executed or logged, not its result: a finished point whose stored
# config differs from the sweep's only in these is still the same point.
EXECUTION_KEYS = (
    "logger.",
    "data.num_workers",
    "data.on_device",
    "data.stream",
    "model.compile",
    "model.compile_backend",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "eval.plots",
)


@dataclass(frozen=True)
class SweepPoint:
    name: str
    overrides: tuple[str, ...]


def _slug(value: Any) -> str:
    text = re.sub(r"[^A-Za-z0-9.]+", "-", str(value)).strip("-")
    return text or "none"


def grid_points(sweep_yaml: str | Path, prefix: str | None = None) -> list[SweepPoint]:
    """Every point of the sweep's grid as overrides plus a readable, unique run name."""
    path = Path(sweep_yaml)
    if not path.is_file():
        raise ConfigError(f"Sweep file '{path}' not found (see configs/sweeps/).")
    sweep = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict):
        raise ConfigError(f"Sweep file '{path}' needs a 'parameters' mapping (W&B sweep format).")
    if sweep.get("method", "grid") != "grid":
        raise ConfigError(
            f"Sweep file '{path}' uses method {sweep['method']!r}; the local runner runs grids "
            f"only (use `wandb sweep` + `wandb agent` for random or Bayesian search)."
        )
    params = sweep["parameters"]
    for key, spec in params.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("values"), list):
            raise ConfigError(f"Sweep parameter '{key}' needs a list under 'values'.")
    prefix = prefix or path.stem
    points = []
    for values in itertools.product(*(spec["values"] for spec in params.values())):
        overrides = tuple(f"{k}={v}" for k, v in zip(params, values, strict=True))
        short = "-".join(
            f"{k.rsplit('.', 1)[-1]}_{_slug(v)}" for k, v in zip(params, values, strict=True)
        )
        points.append(SweepPoint(f"{prefix}-{short}", overrides))
    return points


def point_state(run_dir: Path) -> str:
    """What a point's run directory says: ``skipped`` (finished), ``resumed`` (a checkpoint to
    continue) or ``done`` (to train from scratch)."""
    if (run_dir / "metrics.json").is_file():
        return "skipped"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "resumed"
    return "done"


def stored_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config a run directory holds (``metrics.json`` or ``config.yaml``)."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            stored = json.loads(metrics.read_text()).get("config")
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict):
            return stored
    path = run_dir / "config.yaml"
    if path.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(path))
        return loaded if isinstance(loaded, dict) else None
    return None


def config_differences(stored: dict[str, Any], cfg: Config) -> list[str]:
    """``key: stored -> wanted`` for every result-relevant key in which they differ."""
    a, b = flatten(stored), flatten(to_container(cfg))
    return [
        f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not k.startswith(EXECUTION_KEYS)
    ]


def point_check(run_dir: Path, cfg: Config) -> tuple[str, list[str]]:
    """``(state, differences)``: ``state`` as :func:`point_state`, or ``stale`` when the run
    directory holds a finished or interrupted run of another config."""
    state = point_state(run_dir)
    if state == "done":
        return state, []
    stored = stored_config(run_dir)
    diffs = ["no stored config"] if stored is None else config_differences(stored, cfg)
    return ("stale", diffs) if diffs else (state, [])


def _stale_message(run_dir: Path, diffs: list[str]) -> str:
    shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs)} keys)" if len(diffs) > 6 else "")
    return (
        f"{run_dir} holds a run of another config ({shown}). Rerun it with --overwrite, or "
        f"give this sweep another out_dir."
    )


def _record_failure(run_dir: Path, text: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(run_dir / "error.txt", text)


@dataclass
class PointResult:
    point: SweepPoint
    status: str
    run_dir: Path
    error: str | None = None


@dataclass
class Plan:
    """A checked grid: its points, and how to build each point's validated config."""

    points: list[SweepPoint]
    yaml_paths: tuple[str, ...]
    overrides: tuple[str, ...]
    out_dirs: dict[int, Path]  # point index -> out_dir (from its checked config)

    name: str = "sweep"

    def config(self, index: int) -> Config:
        """The point's validated config; in W&B its run joins the sweep's group (unless
        ``logger.wandb.group`` is set) and is tagged with the values it sets."""
        point = self.points[index]
        cfg = load_config(
            *self.yaml_paths, overrides=[*self.overrides, *point.overrides, f"name={point.name}"]
        )
        w = cfg.logger.wandb
        if w.group is None:
            w.group = self.name
        w.tags = [*w.tags, *(o[:64] for o in point.overrides)]  # W&B tags: at most 64 chars
        return cfg

    def run_dir(self, index: int) -> Path:
        return self.out_dirs[index] / self.points[index].name


def _plan(
    sweep_yaml: str | Path,
    yaml_paths: Sequence[str],
    overrides: Sequence[str],
    report: Callable[[str], None] = lambda line: None,
    only: int | None = None,
) -> Plan:
    """Every point of the grid, checked before the first run starts: each distinct config once
    (points that differ only in ``seed`` share one; each seed value is checked once too), or
    point ``only`` alone (a ``--point`` job: the sweep that launched it checked the grid)."""
    points = grid_points(sweep_yaml)
    if only is not None and not 0 <= only < len(points):
        raise ConfigError(
            f"--point {only} is outside the grid's {len(points)} points (0..{len(points) - 1})."
        )

    def key(p: SweepPoint) -> tuple[str, ...]:
        return tuple(o for o in p.overrides if not o.startswith("seed="))

    first: dict[tuple[str, ...], int] = {}
    seeds: dict[str, int] = {}
    for i, p in enumerate(points):
        first.setdefault(key(p), i)
        for o in p.overrides:
            if o.startswith("seed="):
                seeds.setdefault(o, i)
    plan = Plan(points, tuple(map(str, yaml_paths)), tuple(overrides), {}, Path(sweep_yaml).stem)
    if only is not None:
        plan.out_dirs = {only: Path(plan.config(only).out_dir)}
        return plan
    check = sorted(set(first.values()) | set(seeds.values()))
    report(
        f"{sweep_yaml}: {len(points)} points, {len(first)} distinct configs ({len(check)} to check)"
    )
    checked: dict[int, Path] = {}
    for i in tqdm(check, desc="checking the grid", disable=len(check) < 20, leave=False):
        checked[i] = Path(plan.config(i).out_dir)
    plan.out_dirs = {i: checked[first[key(p)]] for i, p in enumerate(points)}
    return plan


def run_point(
    cfg: Config, fit_fn: Callable[..., Any] | None = None, overwrite: bool = False
) -> tuple[str, str | None]:
    """Train one point as its run directory says (skip, resume or start); never raises for a
    failing run: returns ``(status, error text)``. A stale point is an error unless
    ``overwrite``; a point another process is writing is ``busy`` and left alone."""
    if fit_fn is None:
        from train.fit import fit as fit_fn
    run_dir = Path(cfg.out_dir) / cfg.name
    state, diffs = point_check(run_dir, cfg)
    if state == "skipped":
        return state, None
    if state == "stale" and not overwrite:
        return "stale", _stale_message(run_dir, diffs)
    try:
        if state == "resumed":
            fit_fn(cfg, resume=True)
        else:
            fit_fn(cfg, overwrite=run_dir.exists())
    except DirectoryInUse as err:  # another process trains it: write nothing there
        return "busy", str(err)
    except Exception:  # a failing point is recorded, the sweep goes on
        text = traceback.format_exc()
        _record_failure(run_dir, text)
        return "failed", text.strip().splitlines()[-1]
    return "done" if state == "stale" else state, None


def run_sweep(
    sweep_yaml: str | Path,
    yaml_paths: Sequence[str] = (),
    overrides: Sequence[str] = (),
    *,
    dry_run: bool = False,
    jobs: int = 1,
    only: int | None = None,
    overwrite: bool = False,
    fit_fn: Callable[..., Any] | None = None,
    report: Callable[[str], None] = lambda line: None,
) -> list[PointResult]:
    """Run every grid point (or only point ``only``) as its run directory says.

    ``jobs > 1`` runs points in parallel ``invlab sweep --point K`` processes (``fit_fn`` is
    then not used). ``overwrite`` reruns stale points. Returns one :class:`PointResult` per
    point, in grid order.
    """
    plan = _plan(sweep_yaml, yaml_paths, overrides, report, only=only)
    indices = list(range(len(plan.points))) if only is None else [only]
    if dry_run:
        return _dry_run(plan, indices, report)
    with contextlib.ExitStack() as stack:
        if only is None:  # one sweep per out_dir; --point runs lock only their own run
            for out_dir in sorted(set(plan.out_dirs.values())):
                stack.enter_context(DirLock(out_dir, "Sweep output folder"))
        if jobs > 1 and only is None:
            return _run_parallel(sweep_yaml, yaml_paths, overrides, plan, jobs, overwrite, report)
        return [_run_one(plan, i, fit_fn, overwrite, report) for i in indices]


def _run_one(
    plan: Plan,
    index: int,
    fit_fn: Callable[..., Any] | None,
    overwrite: bool,
    report: Callable[[str], None],
) -> PointResult:
    point, run_dir, n = plan.points[index], plan.run_dir(index), len(plan.points)
    state = point_state(run_dir)
    if state != "skipped":  # a finished point is reported once, below
        verb = "starting" if state == "done" else "resuming"
        report(f"[{index + 1}/{n}] {point.name}: {verb} ...")
    status, error = run_point(plan.config(index), fit_fn, overwrite)
    suffix = f": {error}" if error else ""
    report(f"[{index + 1}/{n}] {point.name}: {status}{suffix}")
    return PointResult(point, status, run_dir, error)


def _dry_run(plan: Plan, indices: list[int], report: Callable[[str], None]) -> list[PointResult]:
    """What a run would do with each point: skipped, stale (with the keys) or planned."""
    results = []
    for i in indices:
        point, run_dir = plan.points[i], plan.run_dir(i)
        state, diffs = (
            ("done", []) if not run_dir.exists() else point_check(run_dir, plan.config(i))
        )
        status = state if state in ("skipped", "stale") else "planned"
        error = _stale_message(run_dir, diffs) if state == "stale" else None
        results.append(PointResult(point, status, run_dir, error))
        suffix = f": {error}" if error else f" ({' '.join(point.overrides)})"
        report(f"[{i + 1}/{len(plan.points)}] {point.name}: {status}{suffix}")
    return results


def _devices() -> list[str]:
    """One entry per visible CUDA device (empty without CUDA): each parallel job gets one."""
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable torch.cuda: run on CPU
        return []


def point_command(
    sweep_yaml: str | Path,
    yaml_paths: Sequence[str],
    overrides: Sequence[str],
    index: int,
    overwrite: bool = False,
) -> list[str]:
    """The command that runs point ``index`` of a sweep (what a parallel job or a SLURM array
    task executes)."""
    return [
        sys.executable,
        "-m",
        "train.cli",
        "sweep",
        str(sweep_yaml),
        *map(str, yaml_paths),
        *overrides,
        "--point",
        str(index),
        *(["--overwrite"] if overwrite else []),
    ]


EXIT_BUSY = 75  # a --point job whose run another process holds (EX_TEMPFAIL): nothing written


def _run_parallel(
    sweep_yaml: str | Path,
    yaml_paths: Sequence[str],
    overrides: Sequence[str],
    plan: Plan,
    jobs: int,
    overwrite: bool,
    report: Callable[[str], None],
) -> list[PointResult]:
    """Each point in its own ``invlab sweep --point K`` process, ``jobs`` at a time. A signal to
    this process is passed on to the running points (each leaves a resumable run)."""
    devices = _devices()
    cores = os.cpu_count() or 1
    n = len(plan.points)
    log_dir = plan.run_dir(0).parent / "sweep-logs" if n else Path("sweep-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def run(index: int, slot: int) -> PointResult:
        point, run_dir = plan.points[index], plan.run_dir(index)
        state, diffs = point_check(run_dir, plan.config(index))
        if state == "skipped":
            return PointResult(point, state, run_dir)
        if state == "stale" and not overwrite:
            return PointResult(point, state, run_dir, _stale_message(run_dir, diffs))
        env = dict(os.environ)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // jobs)))
        log = log_dir / f"{point.name}.log"
        cmd = point_command(sweep_yaml, yaml_paths, overrides, index, overwrite)
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            procs.append(proc)
            code = proc.wait()
        tail = log.read_text(errors="replace").strip().splitlines()[-20:]
        if code == EXIT_BUSY:
            return PointResult(point, "busy", run_dir, tail[-1] if tail else None)
        if code == 0 and (run_dir / "metrics.json").is_file():
            return PointResult(point, "done" if state == "stale" else state, run_dir)
        if not (run_dir / "error.txt").is_file() and code not in (130, 143):
            _record_failure(run_dir, "\n".join(tail))
        return PointResult(point, "failed", run_dir, tail[-1] if tail else f"exit code {code}")

    results: list[PointResult | None] = [None] * n
    with record_signals() as received, concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        try:
            free = list(range(jobs))
            pending: dict[concurrent.futures.Future, tuple[int, int]] = {}
            queue = list(range(n))
            while queue or pending:
                while queue and free:
                    index, slot = queue.pop(0), free.pop(0)
                    pending[pool.submit(run, index, slot)] = (index, slot)
                finished, _ = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in finished:
                    index, slot = pending.pop(future)
                    free.append(slot)
                    result = future.result()
                    results[index] = result
                    suffix = f": {result.error}" if result.error else ""
                    report(f"[{index + 1}/{n}] {result.point.name}: {result.status}{suffix}")
        except (SystemExit, KeyboardInterrupt):
            queue = []
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait()
            if received:
                name = signal.Signals(received[-1]).name
                raise Interrupted(
                    received[-1],
                    f"Stopped by {name}; the running points were stopped too and resume when "
                    f"the sweep is run again.",
                ) from None
            raise
    return [r for r in results if r is not None]


def summary(results: Sequence[PointResult]) -> str:
    """Counts per status, then the failed points with their error and run directory."""
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    line = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no points"
    lines = [f"{len(results)} points: {line}."]
    for r in results:
        if r.status == "failed":
            lines.append(f"  failed: {r.point.name} ({r.error}); see {r.run_dir / 'error.txt'}")
        elif r.status in ("stale", "busy"):
            lines.append(f"  {r.status}: {r.point.name}: {r.error}")
    return "\n".join(lines)


def slurm_script(
    sweep_yaml: str | Path,
    yaml_paths: Sequence[str],
    overrides: Sequence[str],
    *,
    time: str = "12:00:00",
    gpus: int = 1,
    cpus: int = 8,
) -> str:
    """An sbatch array script with one task per grid point. Each task runs
    ``invlab sweep ... --point $SLURM_ARRAY_TASK_ID``, which skips, resumes or starts its point,
    so a requeued or re-submitted array continues where it stopped."""
    points = _plan(sweep_yaml, yaml_paths, overrides).points
    name = Path(sweep_yaml).stem
    args = " ".join(shlex.quote(a) for a in [str(sweep_yaml), *map(str, yaml_paths), *overrides])
    listing = "\n".join(
        f"#   {i:3d}  {p.name}  {' '.join(p.overrides)}" for i, p in enumerate(points)
    )
    return f"""#!/bin/bash
#SBATCH --job-name=invlab-{name}
#SBATCH --array=0-{len(points) - 1}
#SBATCH --gres=gpu:{gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --requeue
#SBATCH --output=sweep-logs/%x-%a.out
# One array task per grid point of {sweep_yaml} ({len(points)} points):
{listing}
set -euo pipefail
mkdir -p sweep-logs
srun invlab sweep {args} --point "$SLURM_ARRAY_TASK_ID"
"""
