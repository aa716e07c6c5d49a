"""Invariance reports: flat scalars for loggers, a readable table, atomic JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from eval.runner import SCALAR_METRICS, TRANSFORMS
from invlab.config import ConfigError
from invlab.files import atomic_write_text

COLUMNS = {
    "accuracy": "accuracy",
    "p_change": "P(top-1 change)",
    "mac": "MAC",
    "consistency": "consistency",
    "worst_case_accuracy": "worst-case acc",
}


def scalars(report: dict[str, Any], prefix: str = "invariance") -> dict[str, float]:
    """Flat means for loggers: ``<prefix>/<split>/accuracy``, ``<prefix>/<split>/<transform>/
    <metric>``, ``.../given_correct/<metric>``, ``.../gap/<metric>`` (difference to typical),
    ``.../in_frame`` and ``<prefix>/<split>/homogeneity/<window>``."""
    out: dict[str, float] = {}
    for split, block in report["splits"].items():
        out[f"{prefix}/{split}/accuracy"] = float(block["accuracy"]["mean"])
        for tr in TRANSFORMS:
            if tr not in block:
                continue
            t = block[tr]
            key = f"{prefix}/{split}/{tr}"
            for metric in (*SCALAR_METRICS, "accuracy"):
                if metric in t:
                    out[f"{key}/{metric}"] = float(t[metric]["mean"])
            for metric, stat in (t.get("given_correct") or {}).items():
                if isinstance(stat, dict):
                    out[f"{key}/given_correct/{metric}"] = float(stat["mean"])
            for metric, stat in (t.get("gap_to_typical") or {}).items():
                if metric != "given_correct":
                    out[f"{key}/gap/{metric}"] = float(stat["mean"])
            if t.get("in_frame"):
                out[f"{key}/in_frame"] = float(t["in_frame"]["views"])
        for window, stat in (block.get("homogeneity") or {}).items():
            out[f"{prefix}/{split}/homogeneity/{window}"] = float(stat["mean"])
    return out


def cell(stat: dict[str, Any] | None, signed: bool = False) -> str:
    """``mean [lo, hi]`` (``+`` signs for differences); ``n/a`` when undefined."""
    if not stat:
        return "-"
    mean, (lo, hi) = stat["mean"], stat["ci"]
    if any(v is None or math.isnan(v) for v in (mean, lo, hi)):
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(mean)} [{f.format(lo)}, {f.format(hi)}]"


def render_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(header), "-" * len(line(header)), *map(line, rows)]


def _frame_cell(t: dict[str, Any]) -> str:
    frame = t.get("in_frame")
    return "-" if not frame else f"{100 * frame['views']:.1f}%"


def format_table(report: dict[str, Any]) -> str:
    """Three tables, one row per split x transform, each cell ``mean [lo, hi]``: the metrics
    (with the share of views whose object is wholly in frame), their differences to
    ``typical``, and the metrics on images classified correctly at the reference view."""
    proto = report.get("protocol", {})
    title = (
        f"translate: protocol={proto.get('protocol')} trajectory={proto.get('trajectory')} "
        f"max_shift_px={proto.get('max_shift_px')}"
    )
    if proto.get("scale_protocol"):
        scales = proto.get("scales") or []
        span = f"{min(scales)}..{max(scales)}" if scales else "?"
        title += f" | scale: protocol={proto['scale_protocol']} scales={span}"
    level = f"{100 * (proto.get('ci_level') or 0.95):.0f}%"
    title += f" | {level} bootstrap CI over instances"
    embed = proto.get("embed_object_scale") or {}
    if any(v != 1.0 for v in embed.values()):
        title += " | embed rescales objects by " + ", ".join(
            f"{k} {v:.2f}" for k, v in embed.items()
        )

    blocks = [(s, tr, b[tr]) for s, b in report["splits"].items() for tr in TRANSFORMS if tr in b]
    main = [[s, tr, *(cell(t.get(m)) for m in COLUMNS), _frame_cell(t)] for s, tr, t in blocks]
    subsets = report.get("typicality", {}).get("subsets", {})
    for name, block in subsets.items():
        for tr in TRANSFORMS:
            if tr in block:
                t = block[tr]
                main.append(
                    [f"{name} (scored)", tr, *(cell(t.get(m)) for m in COLUMNS), _frame_cell(t)]
                )
    out = [title, *render_rows(["split", "transform", *COLUMNS.values(), "in frame"], main)]

    gaps = [
        [s, tr, *(cell(t["gap_to_typical"].get(m), signed=True) for m in COLUMNS)]
        for s, tr, t in blocks
        if t.get("gap_to_typical")
    ]
    if gaps:
        out += ["", f"difference to typical (split - typical), {level} bootstrap CI"]
        out += render_rows(["split", "transform", *COLUMNS.values()], gaps)
    conditional = [
        [
            s,
            tr,
            str(t["given_correct"]["n_images"]),
            *(cell(t["given_correct"].get(m)) for m in list(COLUMNS)[1:]),
        ]
        for s, tr, t in blocks
        if t.get("given_correct")
    ]
    if conditional:
        out += ["", "on images classified correctly at the reference view (no shift, scale 1)"]
        out += render_rows(["split", "transform", "n", *list(COLUMNS.values())[1:]], conditional)
    return "\n".join(out)


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json``; ``ConfigError`` naming the file when it is not a JSON object."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"'{path}' is not valid JSON ({err}): the run's results are damaged. Re-create them "
            f"with `invlab eval` on its checkpoint, or leave that run out."
        ) from None
    if not isinstance(metrics, dict):
        raise ConfigError(f"'{path}' does not hold a JSON object of run results; leave it out.")
    return metrics


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` atomically (temporary file in the same folder, then rename)."""
    return atomic_write_text(path, json.dumps(report, indent=2, allow_nan=True))
