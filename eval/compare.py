"""Side-by-side comparison of finished runs (an ablation's rows) from their ``metrics.json``:
one row per run and held-out split, every cell a mean with its bootstrap interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.report import cell, read_metrics, render_rows
from invlab.config import ConfigError
from invlab.figures import new_figure, save_figure

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


def save_comparison_plot(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars with interval whiskers: accuracy and P(top-1 change) per run and split."""
    splits = list(dict.fromkeys(s for r in runs for s in _splits(r)))
    panels = (("accuracy", None), ("P(top-1 change), translate", ("translate", "p_change")))
    fig = new_figure(max(6.0, 1.1 * len(runs) * max(1, len(splits)) / 2 + 3), 3.6)
    width = 0.8 / max(1, len(splits))
    xs = range(len(runs))
    for i, (title, key) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, split in enumerate(splits):
            stats = [_stat(r, split, key) for r in runs]
            means = [s["mean"] if s else 0.0 for s in stats]
            err = [
                [s["mean"] - s["ci"][0] if s else 0.0 for s in stats],
                [s["ci"][1] - s["mean"] if s else 0.0 for s in stats],
            ]
            pos = [x - 0.4 + width * (j + 0.5) for x in xs]
            ax.bar(pos, means, width=width, label=split, yerr=err, capsize=2)
        ax.set_xticks(list(xs), [str(r["run"]) for r in runs], rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
