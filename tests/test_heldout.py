"""Held-out splits: one factor at a time, objects wholly in frame at every evaluated view,
disjoint instances (and honest reuse), margin-independent backgrounds, the classic appearance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invlab.config import ConfigError, PlacementConfig, changed_factors
from train.config import load_config
from train.data import build_datamodule
from train.data.background import draw_background, paint_background
from train.data.datamodule import allocate_instances
from train.data.render import Placement, composite, render_scene

S, M = 32, 4  # the default image size and margin: the geometry under test is the real one
SMALL = [
    "data.n_train=64",
    "data.n_val=40",
    "data.heldout.typical.n=60",
    "data.heldout.position.n=60",
    "data.heldout.scale.n=60",
    "data.heldout.background.n=60",
    "data.heldout.atypical.n=60",
    "data.download=false",
]


def _dm(*overrides: str):
    dm = build_datamodule(load_config("configs/default.yaml", overrides=[*SMALL, *overrides]))
    dm.setup()
    return dm


# ---------------------------------------------------------------------------- one factor
def test_default_splits_each_change_one_factor_and_atypical_combines_them() -> None:
    dm = _dm()
    d = dm.cfg.data
    assert dm.heldout_names == ["typical", "position", "scale", "background", "atypical"]
    assert {s: changed_factors(d, s) for s in dm.heldout_names} == {
        "typical": [],
        "position": ["position"],
        "scale": ["scale"],
        "background": ["background"],
        "atypical": ["position", "scale", "background"],
    }
    train = dm.split("train").scene
    # position: every object farther from the centre than training ever places one
    train_r = np.hypot(*train.offset.T)
    assert train_r.max() <= d.placement.max_offset_px + 1e-9
    for name in ("position", "atypical"):
        r = np.hypot(*dm.split(name).scene.offset.T)
        assert r.min() >= 3.5 - 1e-9 > train_r.max()
    for name in ("typical", "scale", "background"):  # the training position distribution
        assert np.hypot(*dm.split(name).scene.offset.T).max() <= d.placement.max_offset_px
    # scale: only the scale split and atypical leave the training range
    for name in dm.heldout_names:
        lo, hi = (0.65, 0.8) if name in ("scale", "atypical") else (0.9, 1.1)
        scale = dm.split(name).scene.scale
        assert scale.min() >= lo - 1e-9 and scale.max() <= hi + 1e-9
    # background: noise shows as pixel-to-pixel variation in the image corners
    corner = {
        n: dm.split(n).images[:, :, :4, :4].float().std((2, 3)).mean() for n in dm.heldout_names
    }
    for name in ("typical", "position", "scale"):
        assert corner[name] < 3
    for name in ("background", "atypical"):
        assert corner[name] > 15
    # what each split changes is recorded with the run
    info = dm.split_info()
    assert info["position"]["changes"] == ["position"] and info["typical"]["changes"] == []


def test_a_user_split_is_accepted_and_evaluated_by_default() -> None:
    dm = _dm("data.heldout.texture.n=20", "data.heldout.texture.background=texture")
    assert "texture" in dm.heldout_names and len(dm.split("texture")) == 20
    assert changed_factors(dm.cfg.data, "texture") == ["background"]


# -------------------------------------------------------------------------------- in frame
def _alpha(dm, name: str, scale_factor: float, canvas: int) -> torch.Tensor:
    """The objects' coverage on a ``canvas``-px canvas with the split's own placements."""
    data = dm.split(name)
    scene = data.scene
    pool = dm.source_of(name).heldout
    raster = int(np.ceil(dm.object_px * dm.placement(name).scale[1] * scale_factor))
    objects = pool.take(pool.instances(scene.positions, 0), max(raster, 2))
    place = Placement(scene.offset, scene.scale * scale_factor)
    bg = {"shift": torch.zeros(len(scene.scale)), "tint": torch.zeros(len(scene.scale), 3)}
    _, alpha = composite(objects, place, bg, canvas, dm.object_px, raster, return_alpha=True)
    return alpha[:, 0].double()


@pytest.mark.parametrize("name", ["typical", "position", "scale", "background", "atypical"])
def test_every_object_is_wholly_inside_the_window_at_every_evaluated_view(name: str) -> None:
    """Measured on the rendered coverage, not on the boxes the rule uses: the object's whole
    mass (rendered on a canvas far larger than any view) lies inside the model window at every
    shift of +-M px and at every scale up to data.frame_scale."""
    dm = _dm()
    big = S + 40
    pad = (big - S) // 2
    for factor in (1.0, 1.15):
        alpha = _alpha(dm, name, factor, big)
        total = alpha.sum((1, 2))
        assert (total > 1).all()
        shifts = [(0, 0)] if factor != 1.0 else [(d, e) for d in range(-M, M + 1) for e in (-M, M)]
        for dy, dx in shifts:  # content moves by (dy, dx): the window moves the other way
            top, left = pad - dy, pad - dx
            inside = alpha[:, top : top + S, left : left + S].sum((1, 2))
            torch.testing.assert_close(inside, total, rtol=1e-5, atol=1e-3)


def test_the_report_measures_the_share_of_views_in_frame() -> None:
    from eval import evaluate
    from models import build

    cut = [
        "data.keep_in_frame=false",
        "data.heldout.position.radius_px=[7,9]",
        "eval.n_images=60",
        "eval.n_bootstrap=100",
        "eval.transforms=[translate]",
        "model.widths=[4,8]",
    ]
    dm = _dm(*cut)
    net = build(dm.cfg.model, num_classes=dm.num_classes).eval()
    report = evaluate(net, dm, dm.cfg.eval, image_size=S, progress=False)
    frames = {s: report["splits"][s]["translate"]["in_frame"] for s in dm.heldout_names}
    assert frames["typical"] == {"views": 1.0, "images": 1.0}
    assert frames["position"]["views"] < 0.9 and frames["position"]["images"] < 0.5
    # the same split with the rule on is impossible, and the error names the numbers to change
    with pytest.raises(ConfigError, match=r"radius_px=\[7\.0, 9\.0\].*data.keep_in_frame"):
        _dm("data.heldout.position.radius_px=[7,9]")


# ----------------------------------------------------------------------------- instances
def test_allocate_instances_by_hand() -> None:
    pos, sizes = allocate_instances(10, {"a": 3, "b": 4})  # fits: contiguous blocks
    assert pos["a"].tolist() == [0, 1, 2] and pos["b"].tolist() == [3, 4, 5, 6]
    # 12 images for 10 instances: shares 5, 2.5, 2.5 -> 5, 3, 2 (largest remainder, in order)
    pos, sizes = allocate_instances(10, {"a": 6, "b": 3, "c": 3})
    assert sizes == {"a": 5, "b": 3, "c": 2}
    assert pos["a"].tolist() == [0, 1, 2, 3, 4, 0]
    assert pos["b"].tolist() == [5, 6, 7] and pos["c"].tolist() == [8, 9, 8]


def test_heldout_splits_use_disjoint_instances() -> None:
    dm = _dm("data.source=digits")
    seen: dict[str, set[int]] = {}
    for name in ["val", *dm.heldout_names]:
        seen[name] = set(dm.split(name).indices.tolist())
        assert len(seen[name]) == len(dm.split(name))  # no repeats: the pool is large enough
    names = list(seen)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert seen[a].isdisjoint(seen[b]), (a, b)
    assert not [n for n in dm.notes if "reuse" in n]


def test_instance_reuse_is_announced_and_disjoint_and_the_interval_widens() -> None:
    big = [f"data.heldout.{s}.n=200" for s in ("typical", "position", "scale", "background")]
    with pytest.warns(UserWarning, match="599 held-out instances"):
        dm = _dm("data.source=digits", "data.n_val=200", "data.heldout.atypical.n=200", *big)
    assert any("resample instances" in n for n in dm.notes)
    sets = {n: set(dm.split(n).indices.tolist()) for n in ["val", *dm.heldout_names]}
    assert sum(len(v) for v in sets.values()) <= 599
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert sets[a].isdisjoint(sets[b])
    assert all(len(v) < 200 for v in sets.values())  # every split repeats its own instances
    assert dm.split_info()["typical"]["n_instances"] == len(sets["typical"])


# ------------------------------------------------------------------------------ appearance
def test_texture_scale_does_not_depend_on_the_margin() -> None:
    """Mean |horizontal gradient| of the model window: equal for a 32-px training canvas and a
    40-px held-out canvas (a field stretched to the canvas would be 25% smoother at 40 px)."""
    rng = np.random.default_rng(0)

    def roughness(size: int) -> float:
        params = draw_background("texture", 400, size, rng, cell_px=32 / 5)
        bg = paint_background(params, torch.full((400,), 0.5), size)
        m = (size - 32) // 2
        window = bg[..., m : m + 32, m : m + 32]
        return float((window[..., 1:] - window[..., :-1]).abs().mean())

    ratio = roughness(40) / roughness(32)
    assert 0.95 < ratio < 1.05


def test_classic_appearance_is_white_on_black() -> None:
    dm = _dm("data.source=digits", "data.placement.appearance=classic")
    images = dm.split("train").images
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert int(images[:, :, 0, 0].max()) == 0  # black canvas
    assert int(images.flatten(1).max(1).values.min()) >= 200  # white strokes
    colour = _dm("data.source=digits").split("train").images
    assert not torch.equal(colour[:, 0], colour[:, 1])  # the default colourises


def test_scale_views_reuse_the_split_placements() -> None:
    dm = _dm()
    data = dm.split("position")
    again = render_scene(
        dm.source_of("position").heldout,
        data.scene,
        split="position",
        seed=0,
        placement=dm.placement("position"),
        canvas=S + 2 * M,
        object_px=dm.object_px,
        scale_factor=1.0,
        cell_px=S / 5,
    )
    assert torch.equal(again, data.images)


def test_truncated_gaussian_stays_within_max_offset() -> None:
    from train.data.placement import sample_offsets

    p = PlacementConfig(position="gaussian", sigma_px=2.0, max_offset_px=2.5)
    offsets = sample_offsets(p, 5000, np.random.default_rng(0))
    r = np.hypot(*offsets.T)
    assert r.max() <= 2.5 and r.mean() > 1.2  # truncated, not collapsed to the centre


def test_an_object_too_wide_for_every_position_redraws_its_scale_within_the_range() -> None:
    """A ring 5-6 px off-centre holds objects at scale 0.7 but not at 1.3 (shifts of 4 px): wide
    draws get a new (position, scale) from the split's own distribution instead of failing."""
    from train.data.placement import MAX_ROUNDS, FrameRule

    dm = _dm("data.heldout.position.radius_px=[5,6]", "data.heldout.position.scale=[0.7,1.3]")
    scene = dm.split("position").scene
    rule = FrameRule(S, M, float(dm.cfg.data.frame_scale))
    assert rule.inside(scene.offset, scene.extents).all()
    assert (scene.scale >= 0.7 - 1e-9).all() and (scene.scale <= 1.3 + 1e-9).all()
    r = np.hypot(*scene.offset.T)
    assert (r >= 5 - 1e-9).all() and (r <= 6 + 1e-9).all()
    rescaled = scene.redrawn > MAX_ROUNDS  # these needed a new scale
    assert rescaled.any() and (scene.redrawn >= 0).all()
    # the redrawn scales are the ones that fit: smaller than the widest scale ever kept
    assert scene.scale[rescaled].max() < 1.3
