"""The figure helpers and the report figures: no global backend switch, atomic PNG + PDF
writes, and figures that say what they show (titles, axes, chance, seeds, legends)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.text import Text

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


# ------------------------------------------------------------------------- the report figures
SEEDS = (0, 1, 2)
CLASSES = 4  # chance = 0.25


def _stat(mean: float, half: float = 0.02) -> dict:
    return {"mean": mean, "ci": [mean - half, mean + half]}


def _run(root: Path, shift: int, seed: int, preset: str = "translate") -> Path:
    """A finished run's metrics.json: two splits, known per-seed values, a 3x3 shift map."""
    run = root / f"{preset}-s{shift}-seed{seed}"
    run.mkdir(parents=True)
    splits = {}
    for k, split in enumerate(("typical", "far")):
        acc, p = 0.9 - 0.3 * k + 0.01 * seed, 0.1 + 0.1 * k - 0.01 * shift + 0.02 * seed
        translate = {
            "accuracy": _stat(acc),
            "p_change": _stat(p),
            "consistency": _stat(1 - p),
            "cosine_map": [[0.98, 0.99, 0.98], [0.99, 1.0, 0.99], [0.98, 0.99, 0.98]],
        }
        splits[split] = {
            "accuracy": _stat(acc),
            "translate": translate,
            "scale": {"p_change": _stat(p / 2)},
            "homogeneity": {"2": _stat(0.95 - 0.2 * k)},
        }
    curve = {
        "score": [0.1, 0.2, 0.3],
        "accuracy": [0.9, 0.6 + 0.01 * seed, 0.3],
        "translate": {"p_change": [0.05, 0.1, 0.2 + 0.01 * seed]},
    }
    metrics = {
        "name": run.name,
        "num_classes": CLASSES,
        "config": {
            "name": run.name,
            "seed": seed,
            "augment": {"max_shift_px": shift, "presets": [preset]},
        },
        "invariance": {
            "splits": splits,
            "protocol": {
                "n_images": {"typical": 50, "far": 50},
                "ci_level": 0.95,
                "bootstrap_unit": "instance (images showing the same instance together)",
            },
            "typicality": {
                "method": "features",
                "k": 5,
                "curve": curve,
                "curve_by_split": {"typical": curve, "far": curve},
                "pooled_splits": ["a"],
            },
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """Every figure eval.study / eval.compare save, by file name (drawn and saved as usual)."""
    import eval.compare
    import eval.study

    figures: dict[str, Figure] = {}

    def keep(fig: Figure, path: str | Path, *args: Any, **kwargs: Any) -> Path:
        figures[Path(path).name] = fig
        return save_figure(fig, path, *args, **kwargs)

    monkeypatch.setattr(eval.study, "save_figure", keep)
    monkeypatch.setattr(eval.compare, "save_figure", keep)
    return figures


def _check_layout(fig: Figure) -> None:
    """Legends cover no axes' data area; titles, legends and every text stay on the canvas and
    are at least 6 pt; every visible axes (not a colour bar) names its y axis."""
    fig.canvas.draw()
    canvas = fig.bbox
    legends = fig.legends + [ax.get_legend() for ax in fig.get_axes() if ax.get_legend()]
    assert legends, "a figure with several series has a legend"
    for legend in legends:
        box = _extent(legend, fig)
        for ax in fig.get_axes():
            assert not box.overlaps(_extent(ax, fig)), "the legend covers data"
        assert box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1 and box.y0 >= canvas.y0 - 1
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    for text in texts:
        assert text.get_fontsize() >= 6, text.get_text()
    title = fig._suptitle
    assert title is not None and title.get_text()
    box = _extent(title, fig)
    assert box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1, "the title is cut off"
    for ax in fig.get_axes():
        if ax.get_visible() and ax.get_label() != "<colorbar>":
            assert ax.get_ylabel(), f"no y label on {ax.get_title()!r}"


def _chance(ax: Any) -> list[Any]:
    return [ln for ln in ax.get_lines() if ln.get_label().startswith("chance")]


def _hollow(ax: Any) -> list[Any]:
    """The per-seed points on ``ax`` (small hollow markers)."""
    return [ln for ln in ax.get_lines() if ln.get_markerfacecolor() == "none"]


def test_report_figures_say_what_they_show(tmp_path: Path, captured: dict[str, Figure]) -> None:
    from eval.study import write_report

    for shift in (0, 4):
        for seed in SEEDS:
            _run(tmp_path / "runs", shift, seed)
    user = {"font.size": 13.0, "lines.linewidth": 3.0}
    with matplotlib.rc_context(user):
        result = write_report([tmp_path / "runs"], tmp_path / "rep")
        assert {k: matplotlib.rcParams[k] for k in user} == user  # the house style is undone
    pngs = [p for p in result["files"] if p.suffix == ".png"]
    assert {p.name for p in pngs} == {
        "by_augment_max_shift_px.png",
        "typicality_by_augment_max_shift_px.png",
        "typicality_within_by_augment_max_shift_px.png",
        "tradeoff.png",
        "homogeneity.png",
        "cosine_maps.png",
    }
    for png in pngs:  # a vector copy beside every PNG, of the same figure
        pdf = png.with_suffix(".pdf")
        assert pdf.read_bytes()[:5] == b"%PDF-" and png.read_bytes()[:4] == b"\x89PNG"
    for name, fig in captured.items():
        if name != "cosine_maps.png":
            _check_layout(fig)

    by = captured["by_augment_max_shift_px.png"]
    title = by._suptitle.get_text()
    assert "95% t-interval across 3 seeds" in title and "50 images per split" in title
    axes = [ax for ax in by.get_axes() if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == [
        "accuracy, translate",
        "P(top-1 change), translate",
        "consistency, translate",
        "P(top-1 change), scale",
    ]
    for ax in axes:  # two swept values: two evenly spaced ticks labelled with the values
        assert list(ax.get_xticks()) == [0.0, 1.0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "4"]
        assert ax.get_xlabel() == "augment.max_shift_px"
        assert not ax.collections or all(  # error bars, no interval bands
            type(c).__name__ == "LineCollection" for c in ax.collections
        )
    (chance,) = _chance(axes[0])
    assert list(chance.get_ydata()) == [1 / CLASSES, 1 / CLASSES]
    assert not any(_chance(ax) for ax in axes[1:])  # only where accuracy is plotted
    # each seed's value beside its group's mean: typical accuracy at shift 0 is 0.9 + 0.01 * seed
    seeds = [sorted(ln.get_ydata()) for ln in _hollow(axes[0])]
    assert [0.9, 0.91, 0.92] in [pytest.approx(s) for s in seeds]
    assert len(_hollow(axes[0])) == 4  # 2 splits x 2 values of the key

    typ = captured["typicality_by_augment_max_shift_px.png"]
    acc = typ.get_axes()[0]
    assert [t.get_text() for t in acc.get_xticklabels()] == ["1", "2", "3"]
    assert list(_chance(acc)[0].get_ydata()) == [1 / CLASSES, 1 / CLASSES]
    assert "across 3 seeds" in typ._suptitle.get_text()
    within = captured["typicality_within_by_augment_max_shift_px.png"]
    assert [ax.get_ylabel() for ax in within.get_axes()[:4]] == [
        "accuracy\ntypical",
        "P(top-1 change), translate\ntypical",
        "accuracy\nfar",
        "P(top-1 change), translate\nfar",
    ]
    assert "bins within each split (row)" in within._suptitle.get_text()

    trade = captured["tradeoff.png"]
    for ax in trade.get_axes():  # accuracy on x: chance is a vertical line
        (line,) = _chance(ax)
        assert list(line.get_xdata()) == [1 / CLASSES, 1 / CLASSES]
        assert len(_hollow(ax)) == 4 and all(len(ln.get_xdata()) == 3 for ln in _hollow(ax))
    homo = captured["homogeneity.png"]
    assert list(_chance(homo.get_axes()[0])[0].get_ydata()) == [1 / CLASSES, 1 / CLASSES]

    maps = captured["cosine_maps.png"]
    (bar,) = [ax for ax in maps.get_axes() if ax.get_label() == "<colorbar>"]
    assert bar.get_ylabel() == "feature cosine"
    assert "to the centre view" in maps._suptitle.get_text()
    assert "mean over 3 seeds" in maps._suptitle.get_text()


def test_categorical_values_get_one_tick_each(tmp_path: Path, captured: dict[str, Figure]) -> None:
    from eval.study import write_report

    for preset in ("flip", "translate", "scale"):
        for seed in SEEDS[: 2 if preset == "flip" else 3]:
            _run(tmp_path / "runs", 2, seed, preset)
    write_report([tmp_path / "runs"], tmp_path / "rep")
    fig = captured["by_augment_presets.png"]
    for ax in (ax for ax in fig.get_axes() if ax.get_visible()):
        assert list(ax.get_xticks()) == [0.0, 1.0, 2.0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["flip", "scale", "translate"]
    assert "2–3 seeds" in fig._suptitle.get_text()


def test_compare_plot_names_its_axes_and_whiskers(
    tmp_path: Path, captured: dict[str, Figure]
) -> None:
    from eval.compare import load_runs, save_comparison_plot

    runs = [_run(tmp_path, shift, 0) for shift in (0, 4)]
    path = save_comparison_plot(load_runs(runs), tmp_path / "cmp.png")
    assert path == tmp_path / "cmp.png" and (tmp_path / "cmp.pdf").is_file()
    fig = captured["cmp.png"]
    _check_layout(fig)
    title = fig._suptitle.get_text()
    assert "95% bootstrap interval over instances (whiskers)" in title
    assert "50 images per split" in title
    acc, change = fig.get_axes()
    assert acc.get_ylabel() == "accuracy" and change.get_ylabel().startswith("P(top-1 change)")
    assert [t.get_text() for t in acc.get_xticklabels()] == ["typical", "far"]
    assert list(_chance(acc)[0].get_ydata()) == [1 / CLASSES, 1 / CLASSES]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == [f"{r.name} (max_shift_px={s})" for r, s in zip(runs, (0, 4), strict=True)]


def test_homogeneity_is_plotted_at_each_models_own_pooling_window(
    tmp_path: Path, captured: dict[str, Figure]
) -> None:
    """Kernel-k pooling is bounded by the homogeneity of (k + 1)-windows: each group's points sit
    at its own window's value, for the pixels and for the pooling layer's input."""
    from eval.study import write_report

    for kernel in (2, 4):
        for seed in SEEDS:
            run = _run(tmp_path / "runs", kernel, seed)
            metrics = json.loads((run / "metrics.json").read_text())
            for k, block in enumerate(metrics["invariance"]["splits"].values()):
                # pixels: window w has homogeneity 1 - w / 10 (- 0.1 on the second split);
                # the layer's input: 1 - w / 20
                block["homogeneity"] = {str(w): _stat(1 - w / 10 - 0.1 * k) for w in (2, 3, 5)}
                block["homogeneity_input"] = {str(kernel + 1): _stat(1 - (kernel + 1) / 20)}
            metrics["invariance"]["protocol"]["homogeneity_layer"] = {"window": kernel + 1}
            (run / "metrics.json").write_text(json.dumps(metrics))
    write_report([tmp_path / "runs"], tmp_path / "rep")
    pixels, inputs = captured["homogeneity.png"], captured["homogeneity_input.png"]
    assert "each model's pooling window, k+1" in pixels.get_axes()[0].get_xlabel()
    assert "first pooling layer's input" in inputs.get_axes()[0].get_xlabel()
    xs = {round(x, 6) for ln in _hollow(pixels.get_axes()[0]) for x in ln.get_xdata()}
    # kernel 2 -> window 3 (0.7, 0.6), kernel 4 -> window 5 (0.5, 0.4); never the 2x2 value 0.8
    assert xs == {0.7, 0.6, 0.5, 0.4}
    xs = {round(x, 6) for ln in _hollow(inputs.get_axes()[0]) for x in ln.get_xdata()}
    assert xs == {0.85, 0.75}


def test_a_transform_nobody_evaluated_gets_no_panel(
    tmp_path: Path, captured: dict[str, Figure]
) -> None:
    from eval.study import write_report

    for shift in (0, 4):
        for seed in SEEDS[:2]:
            run = _run(tmp_path / "runs", shift, seed)
            metrics = json.loads((run / "metrics.json").read_text())
            for block in metrics["invariance"]["splits"].values():
                del block[
                    "scale"
                ]  # translation only, as in a study with eval.transforms=[translate]
            (run / "metrics.json").write_text(json.dumps(metrics))
    write_report([tmp_path / "runs"], tmp_path / "rep")
    fig = captured["by_augment_max_shift_px.png"]
    assert [ax.get_ylabel() for ax in fig.get_axes() if ax.get_visible()] == [
        "accuracy, translate",
        "P(top-1 change), translate",
        "consistency, translate",
    ]
