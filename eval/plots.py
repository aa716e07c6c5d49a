"""Figures of one run's invariance report (``invlab.figures``: no pyplot, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.runner import SCALAR_METRICS, TRANSFORMS
from invlab.figures import (
    DPI,
    PAGE_WIDTH,
    categorical_axis,
    chance_line,
    interval_handle,
    legend_outside,
    mean_and_seeds,
    new_figure,
    save_figure,
    styled,
    suptitle,
)

METRIC_LABELS = {
    "p_change": "P(top-1 change)",
    "mac": "mean abs. change of p(top-1)",
    "consistency": "consistency",
    "worst_case_accuracy": "worst-case accuracy",
}


def space(method: str, checkpoint: str | None = None) -> str:
    """A typicality method as the space its distances are measured in."""
    if method == "features" and checkpoint:
        return f"feature-space (of {Path(checkpoint).name}, the same for every model)"
    return {"features": "feature-space", "pixels": "pixel-space"}.get(method, method)


def _x_axis(block: dict[str, Any], transform: str) -> tuple[list[float], str]:
    if transform == "scale":
        return list(block["scales"]), "scale"
    offsets = block["offsets"]
    dy = [o[0] for o in offsets]
    dx = [o[1] for o in offsets]
    if all(v == 0 for v in dy):
        return dx, "shift dx (px)"
    return dy, "shift (px)" if dx == dy else "shift dy (px)"


def _images(report: dict[str, Any], splits: list[str] | None = None) -> str:
    """``500 images per split`` from the report's protocol block ('' when it has none)."""
    counts = report.get("protocol", {}).get("n_images") or {}
    values = sorted({int(n) for s, n in counts.items() if splits is None or s in splits})
    if not values:
        return ""
    span = str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"
    return f"{span} image{'s' if values[-1] != 1 else ''} per split"


def _num_classes(report: dict[str, Any], num_classes: int | None) -> int | None:
    return num_classes if num_classes is not None else report.get("num_classes")


@styled
def _trajectory_figure(
    report: dict[str, Any], transform: str, path: Path, num_classes: int | None = None
) -> Path | None:
    """Accuracy, P(change) per step and feature cosine along the trajectory, one line per split
    (each point a mean over the split's images)."""
    from matplotlib.lines import Line2D

    splits = {s: b[transform] for s, b in report["splits"].items() if transform in b}
    for name, block in report.get("typicality", {}).get("subsets", {}).items():
        if transform in block:  # quantile subsets by typicality score
            splits[f"{name} (scored)"] = block[transform]
    if not splits or report["protocol"].get("trajectory") == "grid" and transform == "translate":
        return None
    chance = _num_classes(report, num_classes)
    fig = new_figure(PAGE_WIDTH, 2.9, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    handles = []
    for i, (split, block) in enumerate(splits.items()):
        x, label = _x_axis(block, transform)
        style = {"color": f"C{i % 10}", "marker": "o", "markersize": 3}
        if "(scored)" in split:
            style["linestyle"] = "--"
        axes[0].plot(x, block["accuracy_by_view"], **style)
        steps = block.get("p_change_by_step")
        if steps:
            mid = [(a + b) / 2 for a, b in zip(x[:-1], x[1:], strict=True)]
            axes[1].plot(mid, steps, **style)
        cos = block.get("feature_cosine_by_view")
        if cos:
            axes[2].plot(x, cos, **style)
        handles.append(Line2D([], [], label=split, **style))
        for ax in axes:
            ax.set_xlabel(label)
    chance_line(axes[0], chance)
    if chance:
        handles.append(axes[0].get_lines()[-1])
    axes[0].set_ylabel("accuracy")
    axes[1].set_ylabel("P(top-1 change) per step")
    axes[2].set_ylabel("feature cosine to reference")
    if not any(b.get("feature_cosine_by_view") for b in splits.values()):
        axes[2].set_visible(False)
    legend_outside(fig, handles)
    protocol = report["protocol"]
    how = (
        f"{protocol.get('protocol')} protocol, {protocol.get('trajectory')} trajectory; "
        "reference: no shift"
        if transform == "translate"
        else f"{protocol.get('scale_protocol') or protocol.get('protocol')} protocol; "
        "reference: scale 1"
    )
    images = _images(report)
    suptitle(
        fig,
        f"{transform.capitalize()} ({how})",
        f"each point the mean over {images} at that view" if images else "mean per view",
    )
    return save_figure(fig, path)


@styled
def _typicality_figure(
    report: dict[str, Any], path: Path, num_classes: int | None = None
) -> Path | None:
    """Accuracy and every invariance metric against typicality bin (mean per bin)."""
    typ = report.get("typicality")
    if not typ:
        return None
    curve = typ["curve"]
    transforms = [t for t in TRANSFORMS if t in curve]
    fig = new_figure(PAGE_WIDTH, 2.7, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(transforms) + 1)
    labels = [str(b) for b in range(1, len(curve["score"]) + 1)]
    x = list(range(len(labels)))
    axes[0].plot(x, curve["accuracy"], marker="o", markersize=3, color="0.2")
    chance_line(axes[0], _num_classes(report, num_classes))
    axes[0].set_ylabel("accuracy")
    for ax, tr in zip(axes[1:], transforms, strict=True):
        for i, metric in enumerate(SCALAR_METRICS):
            ax.plot(
                x,
                curve[tr][metric],
                marker="o",
                markersize=3,
                color=f"C{i}",
                label=METRIC_LABELS.get(metric, metric),
            )
        ax.set_ylabel(f"{tr}: metric value")
    for ax in axes:
        categorical_axis(ax, labels, "typicality bin (1 = nearest)")
    handles, _ = axes[-1].get_legend_handles_labels()
    if axes[0].get_legend_handles_labels()[0]:
        handles += axes[0].get_legend_handles_labels()[0]
    legend_outside(fig, handles)
    pooled = len(typ.get("pooled_splits") or [])
    n = sum(int(v) for v in (report.get("protocol", {}).get("n_images") or {}).values())
    suptitle(
        fig,
        f"By typicality ({len(labels)} equal-count bins of the "
        f"{space(typ['method'], typ.get('checkpoint'))} distance "
        f"to the {typ.get('k')} nearest training images)",
        "mean per bin",
        f"{n} images pooled from {pooled} splits" if n and pooled else "",
    )
    return save_figure(fig, path)


@styled
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
    side = min(2.0, (PAGE_WIDTH - 0.9) / len(maps))
    fig = new_figure(side * len(maps) + 0.9, side + 0.7, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False, sharey=True)[0]
    image = None
    for i, (ax, (split, cmap)) in enumerate(zip(axes, maps.items(), strict=True)):
        image = draw_cosine_map(ax, cmap, shift, low, split, colorbar=False)
        if i:
            ax.set_ylabel("")
    fig.colorbar(image, ax=axes, shrink=0.9, label="feature cosine")
    images = _images(report, list(maps))
    suptitle(
        fig,
        f"Feature cosine of each shifted view to the centre view (±{shift:g} px grid)",
        f"mean over {images}" if images else "mean over images",
    )
    return save_figure(fig, path)


def draw_cosine_map(
    ax: Any, cmap: Any, shift: float, low: float, title: str, colorbar: bool = True
) -> Any:
    """One shift map (feature cosine to the centre view over the 2-D grid of offsets within
    ``shift`` px) on ``ax``, on the range ``low``..1 shared by its figure; with its own colour
    bar unless ``colorbar`` is False (the figure draws one for all). Returns the image."""
    extent = (-shift - 0.5, shift + 0.5, shift + 0.5, -shift - 0.5)  # pixel-centred cells
    im = ax.imshow(cmap, extent=extent, vmin=min(low, 0.999), vmax=1, cmap="viridis")
    ax.grid(False)
    ax.set_title(title)
    ax.set_xlabel("dx (px)")
    ax.set_ylabel("dy (px)")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, label="feature cosine")
    return im


EQUIVARIANCE_LABELS = {
    "cosine_distance": "cosine distance (1 − cos)",
    "l2": "normalised L2 distance",
}


def layer_label(name: str) -> str:
    """A module path as a tick label: its last two parts (``features.down1`` -> ``down1``)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[0] != "features" else ".".join(parts[1:])


def equivariance_subtitle(protocol: dict[str, Any]) -> str:
    """How the shifts were drawn and compared, for a figure's title."""
    return (
        f"circular shifts within ±{protocol.get('max_shift_px')} px "
        f"({protocol.get('trajectory')}); exact roll where the layer's stride divides the "
        "shift, else both maps upsampled (bilinear, circular)"
    )


@styled
def _equivariance_figure(report: dict[str, Any], path: Path) -> Path | None:
    """Distance against depth: one panel per metric, the layers in forward order as categories,
    one colour per split, each point the mean over images with its bootstrap interval."""
    from matplotlib.lines import Line2D

    block = report.get("equivariance")
    if not block or not block.get("splits"):
        return None
    layers, splits = list(block["layers"]), list(block["splits"])
    fig = new_figure(PAGE_WIDTH, 2.8, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(EQUIVARIANCE_LABELS))
    width = 0.8 / max(1, len(splits))
    for ax, (metric, ylabel) in zip(axes, EQUIVARIANCE_LABELS.items(), strict=True):
        xs = categorical_axis(ax, [layer_label(n) for n in layers], "layer (forward order)")
        for j, split in enumerate(splits):
            dx = (j - (len(splits) - 1) / 2) * width
            stats = [block["splits"][split].get(n, {}).get(metric) for n in layers]
            for x, stat in zip(xs, stats, strict=True):
                if stat:
                    mean_and_seeds(
                        ax, x + dx, stat["mean"], stat["ci"], [], f"C{j % 10}", width=width
                    )
            ax.plot(
                [x + dx - 0.15 * width for x in xs],
                [s["mean"] if s else float("nan") for s in stats],
                color=f"C{j % 10}",
                linewidth=0.7,
                alpha=0.6,
            )
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    protocol = block.get("protocol", {})
    level = protocol.get("ci_level", report.get("protocol", {}).get("ci_level"))
    what = f"{100 * level:.0f}% " if isinstance(level, (int, float)) else ""
    handles: list[Any] = [
        Line2D([], [], color=f"C{j % 10}", marker="o", linestyle="", label=s)
        for j, s in enumerate(splits)
    ]
    handles.append(interval_handle(f"mean ± {what}bootstrap interval over images"))
    legend_outside(fig, handles)
    suptitle(
        fig,
        "Shift equivariance by layer: distance between the features of the shifted image and "
        "the shifted features (penultimate: pooled features, shifted vs unshifted image)",
        equivariance_subtitle(protocol),
        _images({"protocol": protocol}),
    )
    return save_figure(fig, path)


@styled
def _equivariance_maps(report: dict[str, Any], path: Path) -> Path | None:
    """The cosine distance of every layer over the 2-D shift grid: one row per split, one column
    per layer, one shared colour range; None without a grid."""
    block = report.get("equivariance")
    if not block or block.get("protocol", {}).get("trajectory") != "grid":
        return None
    layers, splits = list(block["layers"]), list(block["splits"])
    maps = {
        (s, n): block["splits"][s][n]["map"]["cosine_distance"]
        for s in splits
        for n in layers
        if "map" in block["splits"][s].get(n, {})
    }
    if not maps:
        return None
    high = max(max(max(row) for row in m) for m in maps.values()) or 1e-6
    shift = block["protocol"]["max_shift_px"]
    side = min(1.5, (PAGE_WIDTH - 0.9) / len(layers))
    fig = new_figure(
        side * len(layers) + 0.9, side * len(splits) + 0.8, dpi=DPI, layout="constrained"
    )
    axes = fig.subplots(len(splits), len(layers), squeeze=False, sharex=True, sharey=True)
    extent = (-shift - 0.5, shift + 0.5, shift + 0.5, -shift - 0.5)
    image = None
    for r, split in enumerate(splits):
        for c, name in enumerate(layers):
            ax = axes[r][c]
            ax.grid(False)
            if (split, name) not in maps:
                ax.axis("off")
                continue
            image = ax.imshow(maps[split, name], extent=extent, vmin=0, vmax=high)
            if r == 0:
                ax.set_title(layer_label(name))
            if c == 0:
                ax.set_ylabel(f"{split}\ndy (px)")
            if r == len(splits) - 1:
                ax.set_xlabel("dx (px)")
    fig.colorbar(image, ax=axes, shrink=0.9, label="cosine distance")
    suptitle(
        fig,
        "Cosine distance at each shift, by layer (mean over images)",
        equivariance_subtitle(block["protocol"]),
    )
    return save_figure(fig, path)


def save_plots(
    report: dict[str, Any],
    out_dir: str | Path,
    prefix: str = "invariance",
    num_classes: int | None = None,
) -> list[Path]:
    """Write the report's figures into ``out_dir`` (each a PNG with a PDF beside it); returns
    the PNGs' paths. ``num_classes`` (else the report's own, when it records one) puts chance
    level on the accuracy axes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _trajectory_figure(report, "translate", out / f"{prefix}_translate.png", num_classes),
        _trajectory_figure(report, "scale", out / f"{prefix}_scale.png", num_classes),
        _typicality_figure(report, out / f"{prefix}_typicality.png", num_classes),
        _cosine_maps(report, out / f"{prefix}_cosine_map.png"),
        _equivariance_figure(report, out / f"{prefix}_equivariance.png"),
        _equivariance_maps(report, out / f"{prefix}_equivariance_maps.png"),
    ]
    return [p for p in written if p is not None]
