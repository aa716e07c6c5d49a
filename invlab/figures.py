"""Figures without pyplot: a ``matplotlib.figure.Figure`` with its own Agg canvas.

No global backend switch and no pyplot figure registry (nothing to close, nothing that leaks
or depends on a display), so plotting works in worker processes, threads and notebooks alike.
matplotlib is imported on first use: modules that can plot stay cheap to import.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from invlab.files import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float, dpi: float = 100) -> Figure:
    """An empty figure of ``width x height`` inches, ready to draw and save."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Lay out ``fig`` tightly and write it as a PNG (at ``dpi``, default the figure's),
    atomically: an existing file is replaced only by a complete new one."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi if dpi is not None else "figure")
    return atomic_write_bytes(path, buffer.getvalue())
