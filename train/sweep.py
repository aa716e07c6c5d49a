"""Run a sweep's grid on this machine (W&B agents run it on many; ``--emit-slurm`` on a cluster).

The sweep file is the W&B sweep YAML of ``configs/sweeps/`` (``method: grid``): its
``parameters`` are invlab ``key=value`` overrides. Each grid point becomes a run named after the
values it sets. A point's run directory decides what happens to it:

- ``metrics.json`` exists: the point finished, it is **skipped**;
- ``checkpoints/last.ckpt`` exists but no ``metrics.json``: it was interrupted, it is
  **resumed** from that checkpoint (a resumed run equals an uninterrupted one);
- anything else: it is **done** now (a directory left without a checkpoint is replaced).

A point that raises is **failed**: its traceback goes to ``<run dir>/error.txt`` and the sweep
goes on; the summary lists every status and the CLI exits non-zero when any point failed.
``jobs > 1`` runs points in parallel processes (``invlab sweep --point K`` each), one device
each when the machine has several accelerators.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from invlab.config import Config, ConfigError
from invlab.files import atomic_write_text
from train.config import load_config

STATUSES = ("done", "resumed", "skipped", "failed", "planned")


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


def _record_failure(run_dir: Path, text: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(run_dir / "error.txt", text)


@dataclass
class PointResult:
    point: SweepPoint
    status: str
    run_dir: Path
    error: str | None = None


def _plan(
    sweep_yaml: str | Path, yaml_paths: Sequence[str], overrides: Sequence[str]
) -> tuple[list[SweepPoint], list[Config]]:
    """Every point with its validated config (all checked before the first run starts)."""
    points = grid_points(sweep_yaml)
    configs = [
        load_config(*yaml_paths, overrides=[*overrides, *p.overrides, f"name={p.name}"])
        for p in points
    ]
    return points, configs


def run_point(cfg: Config, fit_fn: Callable[..., Any] | None = None) -> tuple[str, str | None]:
    """Train one point as its run directory says (skip, resume or start); never raises for a
    failing run: returns ``(status, error text)``."""
    if fit_fn is None:
        from train.fit import fit as fit_fn
    run_dir = Path(cfg.out_dir) / cfg.name
    state = point_state(run_dir)
    if state == "skipped":
        return state, None
    try:
        if state == "resumed":
            fit_fn(cfg, resume=True)
        else:
            fit_fn(cfg, overwrite=run_dir.exists())
    except Exception:  # a failing point is recorded, the sweep goes on
        text = traceback.format_exc()
        _record_failure(run_dir, text)
        return "failed", text.strip().splitlines()[-1]
    return state, None


def run_sweep(
    sweep_yaml: str | Path,
    yaml_paths: Sequence[str] = (),
    overrides: Sequence[str] = (),
    *,
    dry_run: bool = False,
    jobs: int = 1,
    only: int | None = None,
    fit_fn: Callable[..., Any] | None = None,
    report: Callable[[str], None] = lambda line: None,
) -> list[PointResult]:
    """Run every grid point (or only point ``only``) as its run directory says.

    ``jobs > 1`` runs points in parallel ``invlab sweep --point K`` processes (``fit_fn`` is
    then not used). Returns one :class:`PointResult` per point, in grid order.
    """
    points, configs = _plan(sweep_yaml, yaml_paths, overrides)
    if only is not None:
        if not 0 <= only < len(points):
            raise ConfigError(
                f"--point {only} is outside the grid's {len(points)} points (0..{len(points) - 1})."
            )
        points, configs = [points[only]], [configs[only]]
    dirs = [Path(cfg.out_dir) / cfg.name for cfg in configs]
    if dry_run:
        results = [
            PointResult(p, "skipped" if point_state(d) == "skipped" else "planned", d)
            for p, d in zip(points, dirs, strict=True)
        ]
        for i, r in enumerate(results, start=1):
            report(
                f"[{i}/{len(results)}] {r.point.name}: {r.status} ({' '.join(r.point.overrides)})"
            )
        return results
    if jobs > 1 and only is None:
        return _run_parallel(sweep_yaml, yaml_paths, overrides, points, dirs, jobs, report)
    results = []
    for i, (point, cfg, run_dir) in enumerate(zip(points, configs, dirs, strict=True), start=1):
        state = point_state(run_dir)
        if state != "skipped":  # a finished point is reported once, below
            verb = "starting" if state == "done" else "resuming"
            report(f"[{i}/{len(points)}] {point.name}: {verb} ...")
        status, error = run_point(cfg, fit_fn)
        suffix = f": {error}" if error else ""
        report(f"[{i}/{len(points)}] {point.name}: {status}{suffix}")
        results.append(PointResult(point, status, run_dir, error))
    return results


def _devices() -> list[str]:
    """One entry per visible CUDA device (empty without CUDA): each parallel job gets one."""
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable torch.cuda: run on CPU
        return []


def point_command(
    sweep_yaml: str | Path, yaml_paths: Sequence[str], overrides: Sequence[str], index: int
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
    ]


def _run_parallel(
    sweep_yaml: str | Path,
    yaml_paths: Sequence[str],
    overrides: Sequence[str],
    points: list[SweepPoint],
    dirs: list[Path],
    jobs: int,
    report: Callable[[str], None],
) -> list[PointResult]:
    devices = _devices()
    cores = os.cpu_count() or 1
    log_dir = dirs[0].parent / "sweep-logs" if dirs else Path("sweep-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    slots = list(range(jobs))

    def run(index: int, slot: int) -> PointResult:
        point, run_dir = points[index], dirs[index]
        state = point_state(run_dir)
        if state == "skipped":
            return PointResult(point, state, run_dir)
        env = dict(os.environ)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // jobs)))
        log = log_dir / f"{point.name}.log"
        cmd = point_command(sweep_yaml, yaml_paths, overrides, index)
        with open(log, "w") as out:
            code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        if code == 0 and (run_dir / "metrics.json").is_file():
            return PointResult(point, state, run_dir)
        tail = log.read_text(errors="replace").strip().splitlines()[-20:]
        if not (run_dir / "error.txt").is_file():
            _record_failure(run_dir, "\n".join(tail))
        return PointResult(point, "failed", run_dir, tail[-1] if tail else f"exit code {code}")

    results: list[PointResult | None] = [None] * len(points)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        free = list(slots)
        pending: dict[concurrent.futures.Future, tuple[int, int]] = {}
        queue = list(range(len(points)))
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
                report(f"[{index + 1}/{len(points)}] {result.point.name}: {result.status}{suffix}")
    return [r for r in results if r is not None]


def summary(results: Sequence[PointResult]) -> str:
    """Counts per status, then the failed points with their error and run directory."""
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    line = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no points"
    lines = [f"{len(results)} points: {line}."]
    for r in results:
        if r.status == "failed":
            lines.append(f"  failed: {r.point.name} ({r.error}); see {r.run_dir / 'error.txt'}")
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
    points, _ = _plan(sweep_yaml, yaml_paths, overrides)
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
