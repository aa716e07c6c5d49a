"""Run a sweep's grid on this machine, one ``fit`` after another (W&B agents do it on many).

The sweep file is the W&B sweep YAML of ``configs/sweeps/`` (``method: grid``): its
``parameters`` are invlab ``key=value`` overrides. Each grid point becomes a run named after the
values it sets; points whose run already finished (``metrics.json`` exists) are skipped, so an
interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from train.config import Config, ConfigError, load_config


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


def run_sweep(
    sweep_yaml: str | Path,
    yaml_paths: Sequence[str] = (),
    overrides: Sequence[str] = (),
    *,
    dry_run: bool = False,
    fit_fn: Callable[[Config], Any] | None = None,
    report: Callable[[str], None] = lambda line: None,
) -> list[tuple[SweepPoint, str]]:
    """Fit every grid point not yet finished; returns ``(point, status)`` per point.

    Every point's config is built and validated before the first run starts. ``status`` is
    ``done`` (trained now), ``skipped`` (finished earlier) or ``planned`` (``dry_run``).
    """
    if fit_fn is None:
        from train.fit import fit as fit_fn
    points = grid_points(sweep_yaml)
    configs = [
        load_config(*yaml_paths, overrides=[*overrides, *p.overrides, f"name={p.name}"])
        for p in points
    ]
    results = []
    for i, (point, cfg) in enumerate(zip(points, configs, strict=True), start=1):
        finished = (Path(cfg.out_dir) / cfg.name / "metrics.json").is_file()
        status = "skipped" if finished else "planned" if dry_run else "done"
        report(f"[{i}/{len(points)}] {point.name}: {status} ({' '.join(point.overrides)})")
        if status == "done":
            fit_fn(cfg)
        results.append((point, status))
    return results
