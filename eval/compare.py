"""Side-by-side comparison of finished runs (an ablation's rows) from their ``metrics.json``:
one row per run and held-out split, every cell a mean with its bootstrap interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.report import cell, read_metrics, render_rows
from invlab.config import ConfigError
from invlab.figures import (
    DPI,
    PAGE_WIDTH,
    categorical_axis,
    chance_handle,
    chance_line,
    legend_outside,
    new_figure,
    save_figure,
    styled,
    suptitle,
)

# (column title, path inside an invariance split block, signed); None: the split's accuracy.
COLUMNS: tuple[tuple[str, tuple[str, ...] | None, bool], ...] = (
    ("accuracy", None, False),
    ("P(chg) translate", ("translate", "p_change"), False),
    ("MAC translate", ("translate", "mac"), False),
    ("consistency", ("translate", "consistency"), False),
    ("P(chg) scale", ("scale", "p_change"), False),
    ("gap P(chg) translate", ("translate", "gap_to_typical", "p_change"), True),
    ("P(chg) if correct", ("translate", "given_correct", "p_change"), False),
)
# Config keys an ablation varies: shown when they differ between the runs compared.
ABLATION_KEYS = (
    "augment.presets",
    "augment.max_shift_px",
    "augment.pad_fill",
    "model.name",
    "model.downsample",
    "model.antialias.method",
    "model.antialias.filt_size",
    "data.source",
    "data.placement",
    "seed",
)


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def load_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One entry per run: its name, the ablation keys of its config, and its metrics."""
    runs = []
    for run in map(Path, run_dirs):
        path = run / "metrics.json" if run.is_dir() else run
        if not path.is_file():
            raise ConfigError(
                f"No metrics.json in '{run}'. Give run directories written by `invlab fit` "
                f"(e.g. runs/<name>), whose training finished."
            )
        metrics = read_metrics(path)
        config = metrics.get("config", {})
        runs.append(
            {
                "run": metrics.get("name", path.parent.name),
                "config": {k: _get(config, tuple(k.split("."))) for k in ABLATION_KEYS},
                "metrics": metrics,
            }
        )
    return runs


def _splits(run: dict[str, Any]) -> list[str]:
    inv = _get(run["metrics"], ("invariance", "splits")) or {}
    return list(inv) or [s for s in run["metrics"].get("splits", {}) if s != "val"]


def _stat(run: dict[str, Any], split: str, path: tuple[str, ...] | None) -> Any:
    inv = _get(run["metrics"], ("invariance", "splits", split))
    if path is None:  # accuracy: the invariance report's (with CI), else the test accuracy
        if inv and "accuracy" in inv:
            return inv["accuracy"]
        value = _get(run["metrics"], ("splits", split, "accuracy"))
        return None if value is None else {"mean": value, "ci": [value, value]}
    return _get(inv, path)


def format_comparison(runs: list[dict[str, Any]]) -> str:
    """A table: per run and held-out split, the config keys that differ between runs, then
    every metric column as ``mean [lo, hi]``."""
    varying = [k for k in ABLATION_KEYS if len({str(r["config"][k]) for r in runs}) > 1]
    columns = [
        c for c in COLUMNS if any(_stat(r, s, c[1]) is not None for r in runs for s in _splits(r))
    ]
    rows = []
    for r in runs:
        for split in _splits(r):
            rows.append(
                [
                    str(r["run"]),
                    *(str(r["config"][k]) for k in varying),
                    split,
                    *(cell(_stat(r, split, path), signed) for _, path, signed in columns),
                ]
            )
    header = ["run", *varying, "split", *(title for title, _, _ in columns)]
    return "\n".join(render_rows(header, rows))


def _run_label(run: dict[str, Any], varying: list[str]) -> str:
    """A run's name with the config keys that differ between the runs compared."""
    keys = [k for k in varying if k != "seed" or len(varying) > 1]
    shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={run['config'][k]}" for k in keys)
    return f"{run['run']} ({shown})" if shown else str(run["run"])


def _interval(runs: list[dict[str, Any]]) -> tuple[str, str]:
    """What the whiskers are: the runs' bootstrap level and unit, and their images per split."""
    protocols = [_get(r["metrics"], ("invariance", "protocol")) or {} for r in runs]
    levels = {p.get("ci_level") for p in protocols if p.get("ci_level") is not None}
    level = f"{100 * levels.pop():.0f}%" if len(levels) == 1 else ""
    counts = sorted({int(n) for p in protocols for n in (p.get("n_images") or {}).values()})
    images = ""
    if counts:
        span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        images = f"{span} images per split"
    unit = (
        "instances"
        if any("instance" in str(p.get("bootstrap_unit")) for p in protocols)
        else "images"
    )
    return f"mean and {level} bootstrap interval over {unit} (whiskers)".replace("  ", " "), images


@styled
def save_comparison_plot(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy and P(top-1 change) per held-out split (x, categories), one colour per run:
    each run's mean with its bootstrap interval as whiskers; chance level on the accuracy axis.
    Writes a PDF beside the PNG; returns the PNG's path."""
    from matplotlib.lines import Line2D

    splits = list(dict.fromkeys(s for r in runs for s in _splits(r)))
    varying = [k for k in ABLATION_KEYS if len({str(r["config"][k]) for r in runs}) > 1]
    panels = (
        ("accuracy", None),
        ("P(top-1 change), translate", ("translate", "p_change")),
    )
    classes = {r["metrics"].get("num_classes") for r in runs} - {None}
    chance = int(classes.pop()) if len(classes) == 1 else None
    fig = new_figure(PAGE_WIDTH, 2.9, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / max(1, len(runs))
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (ylabel, key) in zip(axes, panels, strict=True):
        xs = categorical_axis(ax, splits, "held-out split")
        for i, r in enumerate(runs):
            dx = (i - (len(runs) - 1) / 2) * width
            for x, split in zip(xs, splits, strict=True):
                s = _stat(r, split, key)
                if not s:
                    continue
                err = [[max(s["mean"] - s["ci"][0], 0.0)], [max(s["ci"][1] - s["mean"], 0.0)]]
                ax.errorbar([x + dx], [s["mean"]], yerr=err, fmt="o", color=colours[i], zorder=3)
        if key is None:
            chance_line(ax, chance)
        ax.set_ylabel(ylabel)
    handles: list[Any] = [
        Line2D([], [], color=c, marker="o", linestyle="", label=_run_label(r, varying))
        for c, r in zip(colours, runs, strict=True)
    ]
    if chance:
        handles.append(chance_handle(chance))
    legend_outside(fig, handles)
    interval, images = _interval(runs)
    suptitle(fig, f"Per run and held-out split: {interval}", images)
    return save_figure(fig, path)
