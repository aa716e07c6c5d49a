"""Figures without pyplot: a ``matplotlib.figure.Figure`` with its own Agg canvas, one house
style, and the few drawing helpers every figure of a report shares.

No global backend switch and no pyplot figure registry (nothing to close, nothing that leaks
or depends on a display), so plotting works in worker processes, threads and notebooks alike.
matplotlib is imported on first use: modules that can plot stay cheap to import.

The style (:data:`STYLE`, applied by :func:`styled` only while a figure is drawn, so a user's
own rcParams stay untouched) is sized for print: figures are :data:`PAGE_WIDTH` or
:data:`COLUMN_WIDTH` inches wide, so the font sizes are the sizes on the page.
:func:`save_figure` writes a PNG and a PDF beside it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from invlab.files import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend
    from matplotlib.lines import Line2D

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
PAGE_WIDTH = 7.0  # inches: the text width of a page
DPI = 200  # PNG resolution of report figures
VECTOR = "pdf"  # the vector copy save_figure writes beside each PNG
CHANCE_STYLE = {"color": "0.45", "linestyle": (0, (4, 3)), "linewidth": 0.8, "zorder": 1}
SEED_POINT = {"markersize": 2.6, "alpha": 0.55, "markeredgewidth": 0.5, "zorder": 2}
MARKERS = "osD^vP*X<>"

# One style for every report figure: 8-pt text at print size, thin lines, no top/right spines,
# a light horizontal grid, frameless legends, TrueType fonts embedded in the PDF.
STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8.5,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.titlepad": 4,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.5,
    "lines.linewidth": 1.0,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 3,
    "ytick.major.size": 3,
    "legend.frameon": False,
    "legend.handletextpad": 0.4,
    "legend.columnspacing": 1.2,
    "image.cmap": "viridis",
    "pdf.fonttype": 42,
    "svg.fonttype": "none",
}

P = ParamSpec("P")
R = TypeVar("R")


def styled(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` (a function that draws and saves figures) under :data:`STYLE`; the caller's
    rcParams are restored afterwards."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float, dpi: float = 100, layout: str | None = None) -> Figure:
    """An empty figure of ``width x height`` inches, ready to draw and save. ``layout``
    ("constrained") makes room for titles, colour bars and legends outside the axes; without
    one, :func:`save_figure` lays the figure out tightly."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    if layout == "constrained":
        fig.get_layout_engine().set(w_pad=0.03, h_pad=0.03, wspace=0.04, hspace=0.04)
    FigureCanvasAgg(fig)
    return fig


def _render(fig: Figure, fmt: str, dpi: float | None) -> bytes:
    buffer = io.BytesIO()
    # no creation date: the same figure gives the same bytes
    metadata = {"CreationDate": None} if fmt == "pdf" else {"Date": None} if fmt == "svg" else {}
    fig.savefig(
        buffer, format=fmt, dpi=dpi if dpi is not None else "figure", metadata=metadata or None
    )
    return buffer.getvalue()


def save_figure(
    fig: Figure, path: str | Path, dpi: float | None = None, vector: str | None = VECTOR
) -> Path:
    """Write ``fig`` as a PNG at ``path`` (at ``dpi``, default the figure's) and, unless
    ``vector`` is None, as a ``vector`` file ("pdf" or "svg") beside it with the same stem.
    Both are rendered before either is written, and each write is atomic: an existing file is
    replaced only by a complete new one. Returns the PNG's path."""
    import matplotlib

    path = Path(path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    else:  # lay out once to see which tick labels collide at their final size
        fig.canvas.draw()
        slant_crowded_ticks(fig)
    with matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none"}):
        png = _render(fig, "png", dpi)
        copy = None
        if vector is not None and path.suffix.lower() != f".{vector}":
            copy = _render(fig, vector, dpi)
    written = atomic_write_bytes(path, png)
    if copy is not None:
        atomic_write_bytes(path.with_suffix(f".{vector}"), copy)
    return written


# ------------------------------------------------------------------------------ drawing helpers
def categorical_axis(ax: Axes, labels: Sequence[str], title: str | None = None) -> list[float]:
    """Put ``labels`` on evenly spaced x ticks (0, 1, ...) with no vertical grid (labels that
    would collide are slanted when the figure is saved). Returns the tick positions."""
    xs = [float(i) for i in range(len(labels))]
    ax.set_xticks(xs, list(labels))
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.grid(False, axis="x")
    if title is not None:
        ax.set_xlabel(title)
    return xs


def slant_crowded_ticks(fig: Figure, gap_pt: float = 3.0) -> None:
    """Slant the x tick labels of every axes whose neighbouring labels, as laid out now, come
    closer than ``gap_pt`` points (each label's end anchored at its tick)."""
    renderer = fig.canvas.get_renderer()
    gap = gap_pt * fig.dpi / 72
    for ax in fig.get_axes():
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
        if any(b.x0 - a.x1 < gap for a, b in zip(boxes, boxes[1:], strict=False)):
            for label in labels:
                label.set(rotation=25, ha="right", rotation_mode="anchor")


def _points(key: str) -> float:
    """A font size rcParam in points (names such as "small" resolved)."""
    import matplotlib
    from matplotlib.font_manager import FontProperties

    return float(FontProperties(size=matplotlib.rcParams[key]).get_size_in_points())


def suptitle(fig: Figure, *parts: str) -> Any:
    """The figure's title from ``parts`` (empty ones dropped), joined by "; " and broken into
    lines at the parts' boundaries (or, for a part too long alone, between words) so that no
    line is wider than the figure."""
    import textwrap

    limit = int(fig.get_figwidth() * 72 / (0.58 * _points("figure.titlesize")))
    lines: list[str] = []
    for part in (p for p in parts if p):
        if lines and len(lines[-1]) + 2 + len(part) <= limit:
            lines[-1] = f"{lines[-1]}; {part}"
        else:
            if lines:
                lines[-1] += ";"
            lines.extend(textwrap.wrap(part, limit) or [""])
    return fig.suptitle("\n".join(lines))


def interval_handle(label: str, color: Any = "0.3", marker: str = "o") -> Any:
    """A legend entry that looks like a marker with a vertical error bar."""
    from matplotlib.collections import LineCollection
    from matplotlib.container import ErrorbarContainer
    from matplotlib.lines import Line2D

    point = Line2D([], [], color=color, marker=marker, linestyle="")
    bar = LineCollection([], colors=[color], linewidths=1.0)
    return ErrorbarContainer((point, (), (bar,)), has_yerr=True, label=label)


def seed_handle(label: str = "single seed", color: Any = "0.3", marker: str = "o") -> Any:
    """A legend entry for a single seed's value (the small hollow point)."""
    from matplotlib.lines import Line2D

    style = {**SEED_POINT, "markersize": SEED_POINT["markersize"] + 0.8}
    return Line2D(
        [],
        [],
        color=color,
        marker=marker,
        markerfacecolor="none",
        linestyle="",
        label=label,
        **style,
    )


def chance_handle(num_classes: int) -> Line2D:
    """The legend entry of :func:`chance_line`."""
    from matplotlib.lines import Line2D

    return Line2D([], [], label=f"chance (1/{num_classes})", **CHANCE_STYLE)


def chance_line(
    ax: Axes, num_classes: int | None, axis: str = "y", label: bool = True
) -> Line2D | None:
    """A dashed line at chance accuracy (1 / ``num_classes``) across ``ax`` (horizontal for an
    accuracy y axis, vertical for ``axis="x"``); nothing when ``num_classes`` is unknown."""
    if not num_classes or num_classes < 2:
        return None
    level = 1.0 / num_classes
    name = f"chance (1/{num_classes})" if label else "_chance"
    if axis == "x":
        return ax.axvline(level, label=name, **CHANCE_STYLE)
    return ax.axhline(level, label=name, **CHANCE_STYLE)


def mean_and_seeds(
    ax: Axes,
    x: float,
    mean: float,
    interval: Sequence[float] | None,
    seeds: Sequence[float],
    color: Any,
    marker: str = "o",
    width: float = 0.4,
    star: bool = False,
) -> None:
    """One group's summary in a slot ``width`` wide centred at ``x``: the mean as a marker with
    its interval as an error bar, just left of the centre, and each seed's value as a small
    hollow point just right of it (side by side, so equal values stay visible). No error bar
    where the interval is missing or NaN (one seed)."""
    import math

    if seeds:
        step = 0.25 * width / max(1, len(seeds) - 1) if len(seeds) > 1 else 0.0
        first = x + 0.1 * width
        ax.plot(
            [first + step * i for i in range(len(seeds))],
            list(seeds),
            marker=marker,
            linestyle="",
            color=color,
            markerfacecolor="none",
            **SEED_POINT,
        )
    if math.isnan(mean):
        return
    err = None
    if interval is not None and not any(v is None or math.isnan(v) for v in interval):
        err = [[max(mean - interval[0], 0.0)], [max(interval[1] - mean, 0.0)]]
    ax.errorbar(
        [x - 0.15 * width],
        [mean],
        yerr=err,
        fmt="*" if star else marker,
        color=color,
        markersize=8 if star else 4,
        elinewidth=1.0,
        zorder=3,
    )


def legend_outside(
    fig: Figure,
    handles: Sequence[Any],
    where: str = "lower",
    ncol: int | None = None,
    title: str | None = None,
) -> Legend:
    """A figure legend outside every axes (``where``: "lower", below the axes, or "upper"), in
    as many columns (at most 6) as fit the figure's width; needs a constrained-layout figure."""
    place = {"loc": f"outside {where} center", "title": title}
    if ncol is not None:
        return fig.legend(handles=list(handles), ncol=ncol, **place)
    renderer = fig.canvas.get_renderer()
    for columns in range(min(6, len(handles)), 0, -1):
        legend = fig.legend(handles=list(handles), ncol=columns, **place)
        if columns == 1 or legend.get_window_extent(renderer).width <= 0.97 * fig.bbox.width:
            return legend
        legend.remove()
    raise AssertionError("unreachable")  # pragma: no cover
