"""Side-by-side comparison of finished runs (an ablation's rows) from their ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train.config import ConfigError

# (column title, path into metrics.json); invariance metrics are means with a CI.
COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("acc typ", ("splits", "typical", "accuracy")),
    ("acc atyp", ("splits", "atypical", "accuracy")),
    ("P(chg) typ", ("invariance", "splits", "typical", "translate", "p_change")),
    ("P(chg) atyp", ("invariance", "splits", "atypical", "translate", "p_change")),
    ("MAC typ", ("invariance", "splits", "typical", "translate", "mac")),
    ("MAC atyp", ("invariance", "splits", "atypical", "translate", "mac")),
    ("cons typ", ("invariance", "splits", "typical", "translate", "consistency")),
    ("cons atyp", ("invariance", "splits", "atypical", "translate", "consistency")),
    ("scale P(chg) atyp", ("invariance", "splits", "atypical", "scale", "p_change")),
)
# Config keys an ablation varies: shown when they differ between the runs compared.
ABLATION_KEYS = (
    "augment.presets",
    "augment.max_shift_px",
    "model.name",
    "model.downsample",
    "model.antialias.method",
    "model.antialias.filt_size",
    "seed",
)


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def load_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per run: its name, the ablation keys of its config, and the compared metrics."""
    rows = []
    for run in map(Path, run_dirs):
        path = run / "metrics.json" if run.is_dir() else run
        if not path.is_file():
            raise ConfigError(
                f"No metrics.json in '{run}'. Give run directories written by `invlab fit` "
                f"(e.g. runs/<name>), whose training finished."
            )
        metrics = json.loads(path.read_text())
        config = metrics.get("config", {})
        row: dict[str, Any] = {"run": metrics.get("name", path.parent.name)}
        row["config"] = {k: _get(config, tuple(k.split("."))) for k in ABLATION_KEYS}
        for title, key_path in COLUMNS:
            value = _get(metrics, key_path)
            row[title] = value["mean"] if isinstance(value, dict) else value
        rows.append(row)
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """A table: the config keys that differ between runs, then every metric column."""
    varying = [k for k in ABLATION_KEYS if len({str(r["config"][k]) for r in rows}) > 1]
    metric_cols = [t for t, _ in COLUMNS if any(r[t] is not None for r in rows)]
    header = ["run", *varying, *metric_cols]
    table = [
        [
            str(r["run"]),
            *(str(r["config"][k]) for k in varying),
            *("-" if r[t] is None else f"{r[t]:.3f}" for t in metric_cols),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *table, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *map(line, table)])


def save_comparison_plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars: accuracy and P(top-1 change) on typical vs atypical, per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = (("accuracy", "acc typ", "acc atyp"), ("P(top-1 change)", "P(chg) typ", "P(chg) atyp"))
    fig = Figure(figsize=(max(6.0, 1.2 * len(rows) + 3), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    names = [str(r["run"]) for r in rows]
    xs = range(len(rows))
    for i, (title, typ, atyp) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for offset, key, label in ((-0.2, typ, "typical"), (0.2, atyp, "atypical")):
            values = [r[key] if r[key] is not None else 0.0 for r in rows]
            ax.bar([x + offset for x in xs], values, width=0.4, label=label)
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
