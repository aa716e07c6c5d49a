"""Figures of an invariance report (``train.figures``: no pyplot, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.runner import SCALAR_METRICS, TRANSFORMS
from invlab.figures import new_figure, save_figure


def _x_axis(block: dict[str, Any], transform: str) -> tuple[list[float], str]:
    if transform == "scale":
        return list(block["scales"]), "scale"
    offsets = block["offsets"]
    dy = [o[0] for o in offsets]
    dx = [o[1] for o in offsets]
    if all(v == 0 for v in dy):
        return dx, "shift dx (px)"
    return dy, "shift (px)" if dx == dy else "shift dy (px)"


def _trajectory_figure(report: dict[str, Any], transform: str, path: Path) -> Path | None:
    """Accuracy, P(change) per step and feature cosine along the trajectory, one line per split."""
    splits = {s: b[transform] for s, b in report["splits"].items() if transform in b}
    for name, block in report.get("typicality", {}).get("subsets", {}).items():
        if transform in block:  # quantile subsets by typicality score
            splits[f"{name} (scored)"] = block[transform]
    if not splits or report["protocol"].get("trajectory") == "grid" and transform == "translate":
        return None
    fig = new_figure(13, 3.6)
    axes = fig.subplots(1, 3)
    for split, block in splits.items():
        x, label = _x_axis(block, transform)
        axes[0].plot(x, block["accuracy_by_view"], marker="o", label=split)
        steps = block.get("p_change_by_step")
        if steps:
            mid = [(a + b) / 2 for a, b in zip(x[:-1], x[1:], strict=True)]
            axes[1].plot(mid, steps, marker="o", label=split)
        cos = block.get("feature_cosine_by_view")
        if cos:
            axes[2].plot(x, cos, marker="o", label=split)
        for ax in axes:
            ax.set_xlabel(label)
    axes[0].set_ylabel("accuracy")
    axes[1].set_ylabel("P(top-1 change) between neighbours")
    axes[2].set_ylabel("feature cosine to reference view")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{transform}: {report['protocol'].get('protocol')} protocol")
    return save_figure(fig, path, dpi=110)


def _typicality_figure(report: dict[str, Any], path: Path) -> Path | None:
    typ = report.get("typicality")
    if not typ:
        return None
    curve = typ["curve"]
    transforms = [t for t in TRANSFORMS if t in curve]
    fig = new_figure(4.5 * (len(transforms) + 1), 3.6)
    axes = fig.subplots(1, len(transforms) + 1)
    x = list(range(1, len(curve["score"]) + 1))
    axes[0].plot(x, curve["accuracy"], marker="o")
    axes[0].set_ylabel("accuracy")
    for ax, tr in zip(axes[1:], transforms, strict=True):
        for metric in SCALAR_METRICS:
            ax.plot(x, curve[tr][metric], marker="o", label=metric)
        ax.set_title(tr)
        ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel(f"typicality bin ({typ['method']}: 1 = nearest to training)")
        ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=110)


def _cosine_maps(report: dict[str, Any], path: Path) -> Path | None:
    maps = {
        s: b["translate"]["cosine_map"]
        for s, b in report["splits"].items()
        if b.get("translate", {}).get("cosine_map") is not None
    }
    if not maps:
        return None
    shift = report["protocol"]["max_shift_px"]
    # One shared range from the lowest cosine to 1: post-ReLU features keep cosines near 1, and
    # a fixed 0..1 scale would hide the structure; shared so the splits compare by colour.
    low = min(min(min(row) for row in cmap) for cmap in maps.values())
    fig = new_figure(4.2 * len(maps), 3.8)
    axes = fig.subplots(1, len(maps), squeeze=False)
    for ax, (split, cmap) in zip(axes[0], maps.items(), strict=True):
        draw_cosine_map(ax, cmap, shift, low, f"{split}: feature cosine")
    return save_figure(fig, path, dpi=110)


def draw_cosine_map(ax: Any, cmap: Any, shift: float, low: float, title: str) -> None:
    """One shift map (feature cosine to the centre view over the 2-D grid of offsets within
    ``shift`` px) on ``ax`` with its colour bar, on the range ``low``..1 shared by its figure."""
    extent = (-shift - 0.5, shift + 0.5, shift + 0.5, -shift - 0.5)  # pixel-centred cells
    im = ax.imshow(cmap, extent=extent, vmin=min(low, 0.999), vmax=1, cmap="viridis")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("dx (px)", fontsize=8)
    ax.set_ylabel("dy (px)", fontsize=8)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def save_plots(
    report: dict[str, Any], out_dir: str | Path, prefix: str = "invariance"
) -> list[Path]:
    """Write the report's figures as PNGs into ``out_dir``; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _trajectory_figure(report, "translate", out / f"{prefix}_translate.png"),
        _trajectory_figure(report, "scale", out / f"{prefix}_scale.png"),
        _typicality_figure(report, out / f"{prefix}_typicality.png"),
        _cosine_maps(report, out / f"{prefix}_cosine_map.png"),
    ]
    return [p for p in written if p is not None]
