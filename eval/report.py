"""Invariance reports: flat scalars for loggers, a readable table, atomic JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from eval.runner import SCALAR_METRICS, TRANSFORMS
from train.files import atomic_write_text

COLUMNS = {
    "p_change": "P(top-1 change)",
    "mac": "MAC",
    "consistency": "consistency",
    "worst_case_accuracy": "worst-case acc",
}


def scalars(report: dict[str, Any], prefix: str = "invariance") -> dict[str, float]:
    """Means as ``<prefix>/<split>/<transform>/<metric>`` (and ``<prefix>/<split>/accuracy``)."""
    out: dict[str, float] = {}
    for split, block in report["splits"].items():
        out[f"{prefix}/{split}/accuracy"] = float(block["accuracy"]["mean"])
        for tr in TRANSFORMS:
            for metric in SCALAR_METRICS:
                if tr in block:
                    out[f"{prefix}/{split}/{tr}/{metric}"] = float(block[tr][metric]["mean"])
    return out


def _cell(stat: dict[str, Any]) -> str:
    mean, (lo, hi) = stat["mean"], stat["ci"]
    if any(math.isnan(v) for v in (mean, lo, hi)):
        return "n/a"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def format_table(report: dict[str, Any]) -> str:
    """One row per split x transform; each cell ``mean [lo, hi]`` (bootstrap CI over images)."""
    header = ["split", "transform", "accuracy", *COLUMNS.values()]
    rows = []
    for split, block in report["splits"].items():
        for tr in TRANSFORMS:
            if tr in block:
                cells = [_cell(block[tr][m]) for m in COLUMNS]
                rows.append([split, tr, _cell(block["accuracy"]), *cells])
    subsets = report.get("typicality", {}).get("subsets", {})
    for name, block in subsets.items():
        for tr in TRANSFORMS:
            if tr in block:
                cells = [_cell(block[tr][m]) for m in COLUMNS]
                rows.append([f"{name} (scored)", tr, _cell(block["accuracy"]), *cells])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    proto = report.get("protocol", {})
    title = (
        f"translate: protocol={proto.get('protocol')} trajectory={proto.get('trajectory')} "
        f"max_shift_px={proto.get('max_shift_px')}"
    )
    if proto.get("scale_protocol"):
        scales = proto.get("scales") or []
        span = f"{min(scales)}..{max(scales)}" if scales else "?"
        title += f" | scale: protocol={proto['scale_protocol']} scales={span}"
    title += f" | {100 * (proto.get('ci_level') or 0.95):.0f}% bootstrap CI over images"
    rule = "-" * len(line(header))
    return "\n".join([title, line(header), rule, *map(line, rows)])


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` atomically (temporary file in the same folder, then rename)."""
    return atomic_write_text(path, json.dumps(report, indent=2, allow_nan=True))
