"""Property-based tests: the invariance metrics and the renderer keep their promises for any
input hypothesis draws (small sizes, few examples: seconds on a CPU)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from eval import metrics
from invlab.config import ConfigError, PlacementConfig
from train.config import load_config
from train.data.placement import FrameRule
from train.data.render import render_scene, render_split
from train.data.shapes import ShapePool

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------- metrics
@st.composite
def logits(draw, min_views: int = 2) -> torch.Tensor:
    """[N, T, C] logits; small integers, so that ties between classes and views are common."""
    n, t, c = draw(st.integers(1, 5)), draw(st.integers(min_views, 6)), draw(st.integers(2, 4))
    values = draw(st.lists(st.integers(-2, 2), min_size=n * t * c, max_size=n * t * c))
    return torch.tensor(values, dtype=torch.float32).reshape(n, t, c)


def _argmax(row: list[float]) -> int:
    return row.index(max(row))  # the first maximum, as torch.argmax


def _softmax(row: list[float]) -> list[float]:
    exp = [math.exp(v - max(row)) for v in row]
    return [e / sum(exp) for e in exp]


@FAST
@given(logits())
def test_p_change_by_hand_in_unit_interval_and_reversal_symmetric(z: torch.Tensor) -> None:
    got = metrics.p_change(z)
    for n, views in enumerate(z.tolist()):
        top = [_argmax(v) for v in views]
        changes = sum(a != b for a, b in zip(top[:-1], top[1:], strict=True))
        assert math.isclose(float(got[n]), changes / (len(top) - 1), abs_tol=1e-6)
    assert bool(((got >= 0) & (got <= 1)).all())
    assert torch.equal(metrics.p_change(z.flip(1)), got)  # the same pairs, walked backwards


@FAST
@given(logits())
def test_mac_by_hand_and_in_unit_interval(z: torch.Tensor) -> None:
    got = metrics.mac(z)
    for n, views in enumerate(z.tolist()):
        probs = [_softmax(v) for v in views]
        steps = [
            abs(p[_argmax(p)] - q[_argmax(p)]) for p, q in zip(probs[:-1], probs[1:], strict=True)
        ]
        assert math.isclose(float(got[n]), sum(steps) / len(steps), abs_tol=1e-5)
    assert bool(((got >= 0) & (got <= 1)).all())


@FAST
@given(logits(min_views=1), st.integers(2, 6))
def test_identical_views_never_change(z: torch.Tensor, t: int) -> None:
    same = z[:, :1].expand(-1, t, -1)
    assert torch.equal(metrics.p_change(same), torch.zeros(z.shape[0]))
    assert torch.equal(metrics.mac(same), torch.zeros(z.shape[0]))
    assert torch.equal(metrics.consistency(z[:, 0], z[:, 0]), torch.ones(z.shape[0]))
    f = torch.randn(z.shape[0], 1, 3).expand(-1, t, -1)
    assert torch.allclose(metrics.feature_cosine(f, f[:, 0]), torch.ones(z.shape[0], t))


@FAST
@given(logits(min_views=1), st.data())
def test_consistency_symmetric_and_correctness_bounds(z: torch.Tensor, data) -> None:
    n, t, c = z.shape
    other = z.flip(0)
    assert torch.equal(
        metrics.consistency(z[:, 0], other[:, 0]), metrics.consistency(other[:, 0], z[:, 0])
    )
    y = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    correct = metrics.correct_by_view(z, y)
    worst = metrics.worst_case_correct(z, y)
    assert bool((worst[:, None] <= correct).all())  # all views right -> each view right
    assert torch.allclose(metrics.accuracy_by_view(z, y).mean(), correct.mean())
    if t >= 2:  # an image whose prediction changes along the way cannot be right at every view
        changed = metrics.p_change(z) > 0
        assert bool((worst[changed] == 0).all())


@FAST
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=30),
    st.integers(0, 2**16),
    st.floats(-3, 3),
    st.floats(0.1, 4),
)
def test_bootstrap_ci_contains_the_mean_and_is_equivariant(
    values: list[float], seed: int, shift: float, factor: float
) -> None:
    x = torch.tensor(values, dtype=torch.float64)
    mean, lo, hi = metrics.bootstrap_ci(x, n_resamples=200, level=0.9, seed=seed)
    assert math.isclose(mean, sum(values) / len(values), abs_tol=1e-9)
    assert min(values) - 1e-9 <= lo <= mean + 1e-9 and mean - 1e-9 <= hi <= max(values) + 1e-9
    # A wider level never narrows the interval (same resamples).
    _, lo99, hi99 = metrics.bootstrap_ci(x, n_resamples=200, level=0.99, seed=seed)
    assert lo99 <= lo + 1e-12 and hi99 >= hi - 1e-12
    # Shifting and scaling the values moves the interval with them: the width is unchanged by a
    # shift and multiplied by the factor.
    m2, lo2, hi2 = metrics.bootstrap_ci(x * factor + shift, n_resamples=200, level=0.9, seed=seed)
    assert math.isclose(m2, mean * factor + shift, abs_tol=1e-9)
    assert math.isclose(lo2, lo * factor + shift, abs_tol=1e-9)
    assert math.isclose(hi2 - lo2, (hi - lo) * factor, abs_tol=1e-9)
    # Same seed, same interval.
    assert metrics.bootstrap_ci(x, n_resamples=200, level=0.9, seed=seed) == (mean, lo, hi)


@FAST
@given(st.floats(-5, 5), st.integers(1, 20), st.integers(0, 100))
def test_constant_values_have_a_zero_width_interval(value: float, n: int, seed: int) -> None:
    mean, lo, hi = metrics.bootstrap_ci(torch.full((n,), value, dtype=torch.float64), seed=seed)
    assert math.isclose(mean, value, abs_tol=1e-12) and math.isclose(lo, hi, abs_tol=1e-12)
    assert math.isclose(lo, value, abs_tol=1e-12)


@FAST
@given(
    st.lists(st.floats(0, 1), min_size=2, max_size=25),
    st.data(),
    st.integers(0, 2**16),
)
def test_grouped_bootstrap_means_stay_within_the_values(values: list[float], data, seed) -> None:
    groups = data.draw(st.lists(st.integers(0, 4), min_size=len(values), max_size=len(values)))
    x, g = torch.tensor(values, dtype=torch.float64), torch.tensor(groups)
    means = metrics.bootstrap_means(x, 100, seed, g)
    assert means.shape == (100,)
    assert bool((means >= min(values) - 1e-12).all() and (means <= max(values) + 1e-12).all())
    # Every resample of one group is that group's mean.
    one = metrics.bootstrap_means(x, 10, seed, torch.zeros(len(values), dtype=torch.long))
    assert torch.allclose(one, x.mean().expand(10))


@FAST
@given(
    st.lists(st.floats(-2, 2), min_size=2, max_size=20),
    st.lists(st.floats(-2, 2), min_size=2, max_size=20),
    st.floats(-2, 2),
    st.integers(0, 2**16),
)
def test_bootstrap_difference(a: list[float], b: list[float], c: float, seed: int) -> None:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    diff, lo, hi = metrics.bootstrap_diff_ci(ta, tb, n_resamples=200, seed=seed)
    assert math.isclose(diff, sum(a) / len(a) - sum(b) / len(b), abs_tol=1e-9)
    assert math.isclose(metrics.bootstrap_diff_ci(tb, ta, n_resamples=200, seed=seed)[0], -diff)
    # Against a constant the difference interval is the sample's own interval, moved by c.
    const = torch.full((len(b),), c, dtype=torch.float64)
    d2, lo2, hi2 = metrics.bootstrap_diff_ci(ta, const, n_resamples=200, seed=seed)
    _, lo1, hi1 = metrics.bootstrap_ci(ta, n_resamples=200, seed=seed)
    assert math.isclose(lo2, lo1 - c, abs_tol=1e-9) and math.isclose(hi2, hi1 - c, abs_tol=1e-9)


# ------------------------------------------------------------------------------ renderer
@st.composite
def scenes(draw, keep_in_frame: st.SearchStrategy[bool] = st.booleans()) -> dict:
    """A data config the config accepts: placement, image size, margin, object size, frame."""
    r0 = draw(st.floats(0.0, 6.0))
    lo = draw(st.floats(0.5, 1.2))
    frame_scale = draw(st.floats(1.0, 1.5))
    placement = {
        "position": draw(st.sampled_from(["gaussian", "uniform", "ring", "center"])),
        "sigma_px": draw(st.floats(0.0, 4.0)),
        "max_offset_px": draw(st.floats(0.0, 10.0)),
        "radius_px": [r0, draw(st.floats(r0, r0 + 3.0))],
        "scale": [lo, draw(st.floats(lo, 1.3))],
        "background": draw(st.sampled_from(["flat", "noise", "texture"])),
        "appearance": draw(st.sampled_from(["colour", "classic"])),
    }
    data = {
        "image_size": draw(st.integers(16, 32)),
        "eval_margin_px": draw(st.integers(0, 3)),
        "object_size": draw(st.floats(0.3, 0.6)),
        "keep_in_frame": draw(keep_in_frame),
        "frame_scale": frame_scale,
        "placement": placement,
    }
    return {"data": data, "seed": draw(st.integers(0, 2**16))}


def _config(drawn: dict):
    """The drawn data section through the config (a placement it refuses is not drawn)."""
    frame_scale = drawn["data"]["frame_scale"]
    try:
        return load_config(base={"data": drawn["data"], "eval": {"scales": [1.0, frame_scale]}})
    except ConfigError:
        reject()


N_IMAGES = 12


def _render(cfg, seed: int, n: int = N_IMAGES, placement: PlacementConfig | None = None):
    d = cfg.data
    frame = FrameRule(d.image_size, d.eval_margin_px, d.frame_scale) if d.keep_in_frame else None
    return render_split(
        ShapePool(seed, "heldout"),
        n,
        split="typical",
        seed=seed,
        placement=placement or d.placement,
        canvas=d.image_size + 2 * d.eval_margin_px,
        object_px=d.object_size * d.image_size,
        frame=frame,
    )


def _render_or_reject(cfg, seed: int, n: int = N_IMAGES):
    try:
        return _render(cfg, seed, n)
    except ConfigError:  # the frame rule found no in-frame position: a refusal, not a bug
        reject()


@FAST
@given(scenes())
def test_rendered_offsets_and_scales_keep_their_limits_and_seed(drawn: dict) -> None:
    cfg, seed = _config(drawn), drawn["seed"]
    p, d = cfg.data.placement, cfg.data
    images, labels, _, scene = _render_or_reject(cfg, seed)
    canvas = d.image_size + 2 * d.eval_margin_px
    assert images.shape == (N_IMAGES, 3, canvas, canvas) and labels.shape == (N_IMAGES,)
    # Offsets within the position's limits (also after frame-rule redraws).
    dist = np.hypot(scene.offset[:, 0], scene.offset[:, 1])
    eps = 1e-9
    if p.position == "gaussian":
        assert (dist <= p.max_offset_px + eps).all()
    elif p.position == "uniform":
        assert (np.abs(scene.offset) <= p.max_offset_px + eps).all()
    elif p.position == "ring":
        assert ((dist >= p.radius_px[0] - 1e-6) & (dist <= p.radius_px[1] + 1e-6)).all()
    else:
        assert (scene.offset == 0).all()
    # Scales within the range.
    assert (scene.scale >= p.scale[0] * (1 - eps)).all()
    assert (scene.scale <= p.scale[1] * (1 + eps)).all()
    # Deterministic for a seed, and image i does not depend on how many images are rendered.
    again, _, _, scene2 = _render(cfg, seed)
    assert torch.equal(images, again) and np.array_equal(scene.offset, scene2.offset)
    assert torch.equal(_render(cfg, seed, n=5)[0], images[:5])


@settings(FAST, max_examples=50)
@given(scenes(keep_in_frame=st.just(True)))
def test_objects_kept_in_frame_stay_inside_every_evaluated_view(drawn: dict) -> None:
    """Every object box, and every pixel of every object, stays inside the model window at every
    evaluated shift (window corners 0..2m of the canvas) and at the largest scale."""
    cfg, seed = _config(drawn), drawn["seed"]
    p, d = cfg.data.placement, cfg.data
    size, m = d.image_size, d.eval_margin_px
    _, _, _, scene = _render_or_reject(cfg, seed, n=64)  # many objects: some reach the edges
    boxes = scene.boxes()
    assert (boxes[:, [0, 2]] >= -size / 2 + m - 1e-6).all()
    assert (boxes[:, [1, 3]] <= size / 2 - m + 1e-6).all()
    # The same scene drawn as objects only (white on black) on a canvas wider by `extra` px per
    # side, so that a pixel outside the rendering would show: the pixels that objects touch.
    plain = dataclasses.replace(
        PlacementConfig(**_plain(p)), appearance="classic", background="flat"
    )
    extra = size // 2

    def occupied(scale_factor: float) -> tuple[np.ndarray, np.ndarray]:
        white = render_scene(
            ShapePool(seed, "heldout"),
            scene,
            split="typical",
            seed=seed,
            placement=plain,
            canvas=size + 2 * m + 2 * extra,
            object_px=d.object_size * size,
            scale_factor=scale_factor,
        )
        ink = white.amax(dim=(0, 1)) > 0
        return np.flatnonzero(ink.any(1).numpy()), np.flatnonzero(ink.any(0).numpy())

    rows, cols = occupied(1.0)  # inside every window shifted by up to m: [2m, S) of the canvas
    lo, hi = extra + 2 * m, extra + size
    assert rows.size and rows.min() >= lo and rows.max() < hi and cols.min() >= lo
    assert cols.max() < hi
    rows, cols = occupied(d.frame_scale)  # rescaled about each centre: inside the window
    lo, hi = extra + m, extra + m + size
    assert rows.min() >= lo and rows.max() < hi and cols.min() >= lo and cols.max() < hi


def _plain(p) -> dict:
    return {
        f.name: (list(p[f.name]) if f.name in ("radius_px", "scale") else p[f.name])
        for f in dataclasses.fields(PlacementConfig)
    }
