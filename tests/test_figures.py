"""The figure helpers and the report figures: no global backend switch, atomic PNG + PDF
writes, and figures that say what they show (titles, axes, chance, seeds, legends)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from invlab.figures import new_figure, save_figure
from tests.conftest import REPO


def test_saved_png_has_the_requested_size_and_replaces_atomically(tmp_path: Path) -> None:
    fig = new_figure(2.0, 1.0, dpi=40)
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "a.png", dpi=50)
    assert imread(path).shape[:2] == (50, 100)  # 1 x 2 inches at 50 dpi
    assert imread(save_figure(fig, path)).shape[:2] == (40, 80)  # the figure's own dpi
    before, pdf_before = path.read_bytes(), path.with_suffix(".pdf").read_bytes()
    broken = new_figure(2.0, 1.0)
    broken.add_subplot().text(0, 0, "$\\unknowncommand$")  # mathtext fails while drawing
    with pytest.raises(ValueError):
        save_figure(broken, path)
    assert path.read_bytes() == before and path.with_suffix(".pdf").read_bytes() == pdf_before
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.pdf", "a.png"]


def test_importing_plotting_modules_leaves_the_users_backend_alone() -> None:
    """A notebook's or script's matplotlib backend stays what the user chose (here svg)."""
    code = (
        "import matplotlib, eval.plots, eval.study, eval.compare, augment.show, train.data.show; "
        "print(matplotlib.rcParams['backend'])"
    )
    env = {"PYTHONPATH": str(REPO), "MPLBACKEND": "svg"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().lower() == "svg"


def _extent(artist: Any, fig: Figure) -> Any:
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_legend_outside_picks_columns_that_fit() -> None:
    from matplotlib.lines import Line2D

    from invlab.figures import PAGE_WIDTH, legend_outside, new_figure

    fig = new_figure(PAGE_WIDTH, 2.5, layout="constrained")
    fig.subplots(1, 2)
    handles = [Line2D([], [], marker="o", label=f"group {i}: a longer label") for i in range(9)]
    legend = legend_outside(fig, handles)
    fig.canvas.draw()
    assert 1 < legend._ncols < 9
    assert _extent(legend, fig).width <= fig.bbox.width
