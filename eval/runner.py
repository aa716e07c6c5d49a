"""``evaluate``: invariance of a model to translations and rescalings, per held-out split.

For each chunk of images every view (the central crop, the translation trajectory, a random
pair of distinct offsets per image, the scale trajectory) goes through the model in one batch;
per-image values are gathered across ranks, then averaged with bootstrap confidence intervals
(over instances: images that reuse an instance are resampled together). Scale views are
re-renderings of the same scene at each scale (``eval.scale_protocol=render``) when the data is
a rendering datamodule, otherwise the embed protocol.

The report follows ``splits.<split>.<transform>.<metric> = {"mean", "ci"}``. Per transform,
``accuracy`` and ``worst_case_accuracy`` come from the protocol's own views (``accuracy`` at its
reference view: no shift, scale 1); ``given_correct`` repeats every metric on the images
classified correctly at that reference view (accuracy confounds stability); ``gap_to_typical``
gives, for every split but ``typical``, the difference to ``typical`` of every metric with a
bootstrap interval (independent samples); ``in_frame`` the fraction of views (and of images at
every view) with the object wholly inside the model window. Plus curves, ``homogeneity``,
``protocol`` (every parameter used) and ``typicality`` (when enabled).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from eval import homogeneity, metrics, typicality
from eval.distributed import GatherFn, gather_values, rank_and_world, shard_indices
from eval.typicality import PenultimateFeatures
from eval.views import (
    FILLS,
    PAD_MODES,
    PROTOCOLS,
    SCALE_PROTOCOLS,
    TRAJECTORIES,
    center_crop,
    distinct_pairs,
    in_frame,
    random_pair_offsets,
    rendered_scale_views,
    scale_embed_size,
    scale_views,
    to_float,
    trajectory,
    translate_views,
    translation_source,
)
from invlab.config import ConfigError

TRANSFORMS = ("translate", "scale")
SCALAR_METRICS = ("p_change", "mac", "consistency", "worst_case_accuracy")
# Per transform: accuracy at the protocol's reference view, then the invariance metrics.
TRANSFORM_METRICS = ("accuracy", *SCALAR_METRICS)
REFERENCE = "typical"  # the split every other split is compared with
LOCAL_PX = 2  # grid trajectories: "local" invariance = shifts of at most this many px per axis


@dataclass(frozen=True)
class EvalPlan:
    """The validated evaluation protocol derived from ``cfg.eval`` and the input size."""

    size: int
    transforms: tuple[str, ...]
    protocol: str
    trajectory: str
    max_shift: float
    step: float
    offsets: Tensor  # [T, 2] (dy, dx)
    pad_mode: str
    fill: str
    embed_size: float | None
    scales: tuple[float, ...]
    scale_protocol: str  # requested; ``render`` falls back to ``embed`` (see ``renders_scales``)
    seed: int

    @property
    def grid(self) -> bool:
        return self.trajectory == "grid"

    @property
    def anchor(self) -> int | None:
        """Index of the unshifted view in the trajectory (None if it is not on it)."""
        hit = (self.offsets == 0).all(1).nonzero()
        return int(hit[0]) if len(hit) else None

    @property
    def scale_anchor(self) -> int:
        """Index of the scale nearest to 1.0: the reference view of the scale curves."""
        return min(range(len(self.scales)), key=lambda i: abs(self.scales[i] - 1.0))


def _choice(key: str, value: str, allowed: tuple[str, ...] | Mapping[str, Any]) -> str:
    if value not in allowed:
        raise ConfigError(f"Invalid eval.{key}={value!r}; choose one of {', '.join(allowed)}.")
    return value


def make_plan(cfg_eval: Any, image_size: int) -> EvalPlan:
    """The evaluation's protocol, checked: every choice known, trajectory and scales usable."""
    method = _choice("typicality.method", str(cfg_eval.typicality.method), typicality.METHODS)
    reference = cfg_eval.typicality.get("checkpoint")
    if reference is not None and method != "features":
        raise ConfigError(
            f"eval.typicality.checkpoint={reference!r} gives the features of a reference model, "
            f"but eval.typicality.method={method}: set eval.typicality.method=features, or "
            f"eval.typicality.checkpoint=null."
        )
    if reference is not None:
        from models.checkpoint import require_file

        require_file(reference)
    for name in cfg_eval.transforms:
        _choice("transforms", name, TRANSFORMS)
    protocol = _choice("protocol", cfg_eval.protocol, PROTOCOLS)
    step = float(cfg_eval.subpixel_step) if protocol == "subpixel" else 1.0
    if step <= 0:
        raise ConfigError(f"eval.subpixel_step must be positive, got {cfg_eval.subpixel_step}.")
    if "translate" in cfg_eval.transforms and not cfg_eval.max_shift_px >= step:
        raise ConfigError(
            f"eval.max_shift_px={cfg_eval.max_shift_px} gives a trajectory of one view; set it "
            f"to at least {step:g} px."
        )
    if abs(round(cfg_eval.max_shift_px / step) * step - cfg_eval.max_shift_px) > 1e-6:
        raise ConfigError(
            f"eval.max_shift_px={cfg_eval.max_shift_px} must be a multiple of "
            f"eval.subpixel_step={step:g}."
        )
    scales = tuple(float(s) for s in cfg_eval.scales)
    if "scale" in cfg_eval.transforms and len(set(scales)) < 2:
        raise ConfigError(f"eval.scales needs at least two different scales, got {list(scales)}.")
    if cfg_eval.embed_size is not None and not 0 < cfg_eval.embed_size <= 1:
        raise ConfigError(
            f"eval.embed_size must be in (0, 1] or null (keep the object scale), got "
            f"{cfg_eval.embed_size}."
        )
    return EvalPlan(
        size=int(image_size),
        transforms=tuple(cfg_eval.transforms),
        protocol=protocol,
        trajectory=_choice("trajectory", cfg_eval.trajectory, TRAJECTORIES),
        max_shift=float(cfg_eval.max_shift_px),
        step=step,
        offsets=trajectory(cfg_eval.trajectory, float(cfg_eval.max_shift_px), step),
        pad_mode=_choice("pad_mode", cfg_eval.pad_mode, PAD_MODES),
        fill=_choice("fill", cfg_eval.fill, FILLS),
        embed_size=None if cfg_eval.embed_size is None else float(cfg_eval.embed_size),
        scales=scales,
        scale_protocol=_choice("scale_protocol", cfg_eval.scale_protocol, SCALE_PROTOCOLS),
        seed=int(cfg_eval.seed),
    )


# ------------------------------------------------------------------------------------- inputs
def image_chunks(images: Any, idx: Tensor, size: int) -> Iterator[Tensor]:
    """``images[idx]`` as uint8 chunks of ``size`` images, in order.

    ``images`` is a uint8 tensor ``[N, 3, H, W]`` (sliced), or a lazy split: any object with
    ``len``, ``shape`` and indexing, and optionally ``batches(indices, size)`` yielding the
    chunks itself (e.g. decoded by DataLoader workers from files), so that only a chunk or two
    is ever in memory.
    """
    batches = getattr(images, "batches", None)
    if callable(batches):
        yield from batches(idx, size)
        return
    for start in range(0, len(idx), size):
        yield images[idx[start : start + size]]


@dataclass
class _Split:
    images: Any  # uint8 [N, 3, H, W], or a lazy split (see image_chunks)
    labels: Tensor
    groups: Tensor | None = None  # the instance each image shows (bootstrap unit)
    scene: Any = None  # object placements of rendered splits (in-frame geometry)


def _as_split(item: Any, name: str) -> _Split:
    if hasattr(item, "images") and hasattr(item, "labels"):
        return _Split(
            item.images, item.labels, getattr(item, "indices", None), getattr(item, "scene", None)
        )
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        return _Split(*item)
    raise TypeError(
        f"Split {name!r} must be (images, labels[, instance ids]) or have .images/.labels."
    )


def _get_split(data: Any, name: str) -> _Split:
    if isinstance(data, Mapping):
        if name not in data:
            raise KeyError(f"Split {name!r} is missing; available: {', '.join(map(str, data))}.")
        return _as_split(data[name], name)
    return _as_split(data.split(name), name)  # a datamodule that has been set up


def split_names(data: Any, cfg_eval: Any) -> list[str]:
    """``eval.splits``, or (null) every held-out split of ``data``."""
    if cfg_eval.splits is not None:
        return list(cfg_eval.splits)
    if isinstance(data, Mapping):
        return [s for s in data if s not in ("train", "val")]
    return list(getattr(data, "heldout_names", ("typical", "atypical")))


def renders_scales(data: Any) -> bool:
    """True for a datamodule that can re-render its objects at other scales (``data.render``)."""
    cfg_data = getattr(getattr(data, "cfg", None), "data", None)
    return callable(getattr(data, "render_scales", None)) and bool(
        getattr(cfg_data, "render", False)
    )


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    if param is None:
        param = next(model.buffers(), None)
    return param.device if param is not None else torch.device("cpu")


# ---------------------------------------------------------------------------- per-image values
def _trajectory_values(z: Tensor, y: Tensor, grid: bool = False) -> dict[str, Tensor]:
    """p_change, mac, worst case and per-view correctness along a trajectory ``z [n, T, K]``."""
    out: dict[str, Tensor] = {}
    if grid:
        # 2-D grid: average over its rows (dx steps) and columns (dy steps) as 1-px trajectories.
        n, g = z.shape[0], math.isqrt(z.shape[1])
        zz = z.reshape(n, g, g, -1)
        rows, cols = zz.reshape(n * g, g, -1), zz.transpose(1, 2).reshape(n * g, g, -1)
        for key, fn in (("p_change", metrics.p_change), ("mac", metrics.mac)):
            out[key] = (fn(rows).view(n, g).mean(1) + fn(cols).view(n, g).mean(1)) / 2
    else:
        top1 = z.argmax(-1)
        out["p_change"] = metrics.p_change(z)
        out["mac"] = metrics.mac(z)
        out["change_by_step"] = (top1[:, 1:] != top1[:, :-1]).float()
    out["worst_case_accuracy"] = metrics.worst_case_correct(z, y)
    out["correct_by_view"] = metrics.correct_by_view(z, y)
    return out


def _cosine(f: Tensor | None, anchor: int | None) -> Tensor | None:
    if f is None or anchor is None:
        return None
    return metrics.feature_cosine(f, f[:, anchor])


class _SplitEvaluator:
    """Runs the views of one shard of images through the model, chunk by chunk."""

    def __init__(
        self,
        model: nn.Module,
        hook: PenultimateFeatures,
        plan: EvalPlan,
        device: torch.device,
        batch_size: int,
        score: Any = None,
        windows: tuple[int, ...] = (),
        first_down: _FirstDownInput | None = None,
    ) -> None:
        self.model, self.hook, self.plan, self.device = model, hook, plan, device
        self.score = score  # callable(images uint8, centre features) -> [n] typicality scores
        self.windows = windows  # local homogeneity of the central crops at these window sizes
        self.first_down = first_down  # the first downsampling layer's input, captured
        translate = len(plan.offsets) + 2 if "translate" in plan.transforms else 0
        scale = len(plan.scales) if "scale" in plan.transforms else 0
        self.views_per_image = 1 + translate + scale
        self.chunk = max(1, batch_size // self.views_per_image)

    def run(
        self,
        images: Any,
        idx: Tensor,
        labels: Tensor,
        pairs: Tensor,
        scale_pairs: Tensor,
        bar: Any,
        scale_renders: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-image values of ``images[idx]``, fetched a chunk at a time (see
        :func:`image_chunks`); ``labels``, ``pairs``, ``scale_pairs`` and ``scale_renders``
        [n, T, 3, H, W] (re-rendered scale views; None: the embed protocol builds them) are
        those of ``idx``."""
        parts: dict[str, list[Tensor]] = {}
        chunks = image_chunks(images, idx, self.chunk)
        for start, x in zip(range(0, len(idx), self.chunk), chunks, strict=True):
            sl = slice(start, start + self.chunk)
            renders = scale_renders[sl] if scale_renders is not None else None
            values = self._chunk(x, labels[sl], pairs[sl], scale_pairs[sl], renders)
            for key, v in values.items():
                parts.setdefault(key, []).append(v.cpu())
            bar.update(x.shape[0])
        return {key: torch.cat(v) for key, v in parts.items()}

    def _chunk(
        self,
        images: Tensor,
        labels: Tensor,
        pairs: Tensor,
        scale_pairs: Tensor,
        scale_renders: Tensor | None,
    ) -> dict[str, Tensor]:
        x = images.to(self.device, non_blocking=True)
        y = labels.to(self.device)
        batch = self._views(x, pairs, scale_renders)
        n, v = batch.shape[:2]
        z = self.model(batch.flatten(0, 1)).view(n, v, -1).float()
        feats = self.hook.pop()
        seen = self.first_down.pop() if self.first_down is not None else None
        f = feats.view(n, v, -1) if feats is not None else None
        out = {"accuracy": (z[:, 0].argmax(-1) == y).float()}
        if seen is not None:  # homogeneity where the first downsampling acts (centre views)
            w = self.first_down.window  # type: ignore[union-attr]
            centre = seen.view(n, v, *seen.shape[1:])[:, 0]
            out[f"{HOMOGENEITY_INPUT}/{w}"] = homogeneity.feature_homogeneity(centre, w)
        t0 = 1  # view 0 is the centre crop
        if "translate" in self.plan.transforms:
            t0 = self._translate_values(out, z, f, y, t0)
        if "scale" in self.plan.transforms:
            self._scale_values(out, z, f, y, t0, scale_pairs)
        if self.score is not None:
            out["typicality/score"] = self.score(x, f[:, 0] if f is not None else None)
        if self.windows:
            crops = center_crop(x, self.plan.size)
            matching = (self.first_down.window,) if self.first_down is not None else ()
            for k in sorted({*self.windows, *(w for w in matching if w <= self.plan.size)}):
                out[f"homogeneity/{k}"] = homogeneity.local_homogeneity(crops, k)
        return out

    def _views(self, x: Tensor, pairs: Tensor, scale_renders: Tensor | None) -> Tensor:
        """[n, views, 3, S, S] float: the centre crop, then the translation trajectory and its
        random pair, then the scale views."""
        plan = self.plan
        views = [to_float(center_crop(x, plan.size))[:, None]]
        if "translate" in plan.transforms:
            kw = dict(
                protocol=plan.protocol,
                size=plan.size,
                pad_mode=plan.pad_mode,
                fill=plan.fill,
                embed_size=plan.embed_size,
                max_shift=plan.max_shift,
            )
            views.append(translate_views(x, plan.offsets, **kw))
            views.append(translate_views(x, pairs, **kw))
        if "scale" in plan.transforms and scale_renders is not None:
            renders = scale_renders.to(self.device, non_blocking=True)
            views.append(rendered_scale_views(renders, plan.size))
        elif "scale" in plan.transforms:
            scales = list(plan.scales)
            views.append(
                scale_views(x, scales, size=plan.size, embed_size=plan.embed_size, fill=plan.fill)
            )
        return torch.cat(views, 1)

    def _translate_values(
        self, out: dict[str, Tensor], z: Tensor, f: Tensor | None, y: Tensor, t0: int
    ) -> int:
        """Trajectory metrics of views ``t0 .. t0 + T`` and consistency of the pair after them;
        returns the index of the first view after the pair."""
        t1 = t0 + len(self.plan.offsets)
        for key, val in _trajectory_values(z[:, t0:t1], y, self.plan.grid).items():
            out[f"translate/{key}"] = val
        out["translate/consistency"] = metrics.consistency(z[:, t1], z[:, t1 + 1])
        cos = _cosine(f[:, t0:t1] if f is not None else None, self.plan.anchor)
        if cos is not None:
            out["translate/cosine"] = cos
        return t1 + 2

    def _scale_values(
        self,
        out: dict[str, Tensor],
        z: Tensor,
        f: Tensor | None,
        y: Tensor,
        t0: int,
        scale_pairs: Tensor,
    ) -> None:
        t1 = t0 + len(self.plan.scales)
        zs = z[:, t0:t1]
        for key, val in _trajectory_values(zs, y).items():
            out[f"scale/{key}"] = val
        ar = torch.arange(z.shape[0], device=z.device)
        sp = scale_pairs.to(z.device)
        out["scale/consistency"] = metrics.consistency(zs[ar, sp[:, 0]], zs[ar, sp[:, 1]])
        cos = _cosine(f[:, t0:t1] if f is not None else None, self.plan.scale_anchor)
        if cos is not None:
            out["scale/cosine"] = cos


# --------------------------------------------------------------------------------- aggregation
def _ci(values: Tensor, cfg_eval: Any, groups: Tensor | None = None) -> dict[str, Any]:
    mean, lo, hi = metrics.bootstrap_ci(
        values, int(cfg_eval.n_bootstrap), float(cfg_eval.ci_level), int(cfg_eval.seed), groups
    )
    return {"mean": mean, "ci": [lo, hi]}


def _diff(
    a: Tensor, b: Tensor, cfg_eval: Any, groups_a: Tensor | None, groups_b: Tensor | None
) -> dict[str, Any]:
    diff, lo, hi = metrics.bootstrap_diff_ci(
        a,
        b,
        int(cfg_eval.n_bootstrap),
        float(cfg_eval.ci_level),
        int(cfg_eval.seed),
        groups_a,
        groups_b,
    )
    return {"mean": diff, "ci": [lo, hi]}


def _metric_values(values: dict[str, Tensor], plan: EvalPlan, tr: str) -> dict[str, Tensor]:
    """Per-image values of ``TRANSFORM_METRICS`` for one transform; ``accuracy`` is correctness
    at the protocol's reference view (no shift; the scale nearest 1)."""
    anchor = plan.anchor if tr == "translate" else plan.scale_anchor
    correct = values[f"{tr}/correct_by_view"]
    reference = correct[:, anchor] if anchor is not None else values["accuracy"]
    out = {"accuracy": reference}
    out.update({m: values[f"{tr}/{m}"] for m in SCALAR_METRICS})
    return out


def _sub(groups: Tensor | None, mask: Tensor) -> Tensor | None:
    return None if groups is None else groups[mask]


def _summary(
    values: dict[str, Tensor],
    plan: EvalPlan,
    cfg_eval: Any,
    curves: bool,
    groups: Tensor | None = None,
) -> dict:
    """Scalars with CIs (and curves when ``curves``) from gathered per-image values."""
    n = int(values["accuracy"].numel())
    distinct = n if groups is None else int(torch.unique(groups).numel())
    out: dict[str, Any] = {"n_images": n, "n_instances": distinct}
    out["accuracy"] = _ci(values["accuracy"], cfg_eval, groups)
    for tr in plan.transforms:
        per = _metric_values(values, plan, tr)
        block: dict[str, Any] = {m: _ci(per[m], cfg_eval, groups) for m in TRANSFORM_METRICS}
        correct = per["accuracy"] > 0.5
        block["given_correct"] = {"n_images": int(correct.sum())}
        for m in SCALAR_METRICS:
            block["given_correct"][m] = _ci(per[m][correct], cfg_eval, _sub(groups, correct))
        frame = values.get(f"{tr}/in_frame")
        block["in_frame"] = (
            None
            if frame is None
            else {
                "views": float(frame.double().mean()),
                "images": float(frame.all(1).double().mean()),
            }
        )
        if curves:
            block["accuracy_by_view"] = values[f"{tr}/correct_by_view"].double().mean(0).tolist()
            steps = values.get(f"{tr}/change_by_step")
            block["p_change_by_step"] = (
                steps.double().mean(0).tolist() if steps is not None else None
            )
            cos = values.get(f"{tr}/cosine")
            block["feature_cosine_by_view"] = (
                cos.double().mean(0).tolist() if cos is not None else None
            )
            if tr == "translate":
                block["offsets"] = plan.offsets.tolist()
                if plan.grid and cos is not None:
                    g = math.isqrt(len(plan.offsets))
                    block["cosine_map"] = cos.double().mean(0).view(g, g).tolist()
            else:
                block["scales"] = list(plan.scales)
        if tr == "translate" and plan.grid and values.get("translate/cosine") is not None:
            # Lee et al.: local (shifts within LOCAL_PX per axis) vs global (the whole grid)
            cos = values["translate/cosine"].double()
            local = plan.offsets.abs().amax(1) <= LOCAL_PX
            block["cosine_local"] = _ci(cos[:, local].mean(1), cfg_eval, groups)
            block["cosine_global"] = _ci(cos.mean(1), cfg_eval, groups)
        out[tr] = block
    return out


def add_gaps(
    report: dict[str, Any],
    per_split: dict[str, dict[str, Tensor]],
    groups: dict[str, Tensor | None],
    plan: EvalPlan,
    cfg_eval: Any,
) -> None:
    """``gap_to_typical`` blocks: every split's difference to ``typical`` for every metric (and
    every conditional metric), with a bootstrap interval over the two independent samples."""
    if REFERENCE not in per_split:
        return
    ref, ref_groups = per_split[REFERENCE], groups.get(REFERENCE)
    for split, values in per_split.items():
        if split == REFERENCE:
            continue
        g = groups.get(split)
        block = report["splits"][split]
        block["gap_to_typical"] = {
            "accuracy": _diff(values["accuracy"], ref["accuracy"], cfg_eval, g, ref_groups)
        }
        for tr in plan.transforms:
            a, b = _metric_values(values, plan, tr), _metric_values(ref, plan, tr)
            gap = {m: _diff(a[m], b[m], cfg_eval, g, ref_groups) for m in TRANSFORM_METRICS}
            ca, cb = a["accuracy"] > 0.5, b["accuracy"] > 0.5
            gap["given_correct"] = {
                m: _diff(a[m][ca], b[m][cb], cfg_eval, _sub(g, ca), _sub(ref_groups, cb))
                for m in SCALAR_METRICS
            }
            block[tr]["gap_to_typical"] = gap


def _typicality_report(
    per_split: dict[str, dict[str, Tensor]],
    groups: dict[str, Tensor | None],
    plan: EvalPlan,
    cfg_eval: Any,
    n_reference: int,
) -> dict[str, Any]:
    tcfg = cfg_eval.typicality
    keys = set.intersection(*(set(v) for v in per_split.values()))
    pooled = {k: torch.cat([v[k] for v in per_split.values()]) for k in sorted(keys)}
    pooled_groups = None
    if all(g is not None for g in groups.values()):  # instances of different splits differ
        pooled_groups = torch.cat(
            [g.long() + (i << 40) for i, g in enumerate(groups.values())]  # type: ignore[union-attr]
        )
    scores = pooled["typicality/score"]
    typical, atypical = typicality.quantile_masks(scores, float(tcfg.quantile))
    subsets = {}
    for name, mask in (("typical", typical), ("atypical", atypical)):
        sub = {k: v[mask] for k, v in pooled.items()}
        sub_groups = _sub(pooled_groups, mask)
        block = _summary(sub, plan, cfg_eval, curves=True, groups=sub_groups)
        block["score"] = _ci(sub["typicality/score"], cfg_eval, sub_groups)
        subsets[name] = block
    return {
        "method": str(tcfg.method),
        "k": int(tcfg.k),
        "quantile": float(tcfg.quantile),
        "n_bins": int(tcfg.n_bins),
        "pixel_size": int(tcfg.pixel_size) if tcfg.method == "pixels" else None,
        "checkpoint": tcfg.get("checkpoint"),
        "n_reference": n_reference,
        "pooled_splits": list(per_split),
        "score_by_split": {s: _ci(v["typicality/score"], cfg_eval) for s, v in per_split.items()},
        "subsets": subsets,
        "curve": _typicality_curve(pooled, plan, int(tcfg.n_bins)),
        # Bins within each split: pooled bins largely track the split the images come from.
        "curve_by_split": {
            s: _typicality_curve(v, plan, int(tcfg.n_bins)) for s, v in per_split.items()
        },
    }


def _typicality_curve(values: dict[str, Tensor], plan: EvalPlan, n_bins: int) -> dict[str, Any]:
    """Mean score, accuracy and every metric per equal-count typicality bin of these images."""
    idx, edges = typicality.bin_index(values["typicality/score"], n_bins)
    curve: dict[str, Any] = {
        "bin_edges": edges.tolist(),
        "n": torch.bincount(idx, minlength=n_bins).tolist(),
        "score": typicality.binned_mean(values["typicality/score"], idx, n_bins),
        "accuracy": typicality.binned_mean(values["accuracy"], idx, n_bins),
    }
    for tr in plan.transforms:
        curve[tr] = {
            m: typicality.binned_mean(values[f"{tr}/{m}"], idx, n_bins) for m in SCALAR_METRICS
        }
    return curve


# ----------------------------------------------------------------------------------- evaluate
def preflight(cfg_eval: Any, data: Any, image_size: int) -> EvalPlan:
    """Check the evaluation settings against the data in milliseconds, before any training.

    Raises ``ConfigError`` for what would otherwise only fail when the evaluation runs: unknown
    choices, a trajectory longer than the held-out margin, an empty split.
    """
    plan = make_plan(cfg_eval, image_size)
    for name in split_names(data, cfg_eval):
        images = _get_split(data, name).images
        if len(images) == 0:
            key = f"data.n_{name}" if name in ("train", "val") else f"data.heldout.{name}.n"
            raise ConfigError(
                f"eval.splits names '{name}', which has no images: set {key} > 0 or "
                f"remove it from eval.splits."
            )
        if "translate" in plan.transforms and plan.protocol in ("crop", "subpixel"):
            translation_source(images[:1], plan.size, plan.max_shift, plan.pad_mode)
        eq = cfg_eval.equivariance
        if eq.enabled and str(eq.get("protocol", "circular")) == "crop" and name != "train":
            margin = (int(images.shape[-1]) - plan.size) // 2
            if margin < int(eq.max_shift_px):
                raise ConfigError(
                    f"eval.equivariance.protocol=crop moves the model window over the held-out "
                    f"margin, but split '{name}' has {margin} px of it and "
                    f"eval.equivariance.max_shift_px={eq.max_shift_px}: set data.eval_margin_px "
                    f">= {eq.max_shift_px}, lower the shift, or use "
                    f"eval.equivariance.protocol=circular."
                )
    if cfg_eval.typicality.get("checkpoint") is not None:  # read once now, not after training
        typicality.reference_model(str(cfg_eval.typicality.checkpoint))
    return plan


def evaluate(
    model: nn.Module,
    data: Any,
    cfg_eval: Any,
    *,
    image_size: int,
    device: torch.device | str | None = None,
    progress: bool = True,
    train_images: Tensor | None = None,
    gather: GatherFn | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (float [0, 1] images -> logits) on ``cfg_eval.splits`` of ``data``.

    ``data``: a set-up datamodule (``data.split(name)``) or a mapping
    ``{split: (uint8 images [N, 3, H, W], labels [N])}``; empty splits are left out.
    ``train_images``: the typicality reference set (default: ``data``'s ``train`` split).
    ``gather``: all-gathers per-image tensors across ranks (see :mod:`eval.distributed`); rank
    ``r`` evaluates images ``r::world`` and the report equals a single-process run.
    Scale views follow ``cfg_eval.scale_protocol``: ``render`` re-renders each split's first
    ``n_images`` scenes at every scale when ``data`` is a datamodule with ``data.render`` true, and
    falls back to ``embed`` otherwise; ``protocol.scale_protocol`` records the one used.
    """
    plan = make_plan(cfg_eval, image_size)
    rank, world = rank_and_world(gather)
    splits = {name: _get_split(data, name) for name in split_names(data, cfg_eval)}
    render = plan.scale_protocol == "render" and renders_scales(data)
    scale_protocol = ("render" if render else "embed") if "scale" in plan.transforms else None
    counts = {s: min(int(cfg_eval.n_images), len(sp.labels)) for s, sp in splits.items()}
    original_device = _model_device(model)
    device = torch.device(device) if device is not None else original_device
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode(), PenultimateFeatures(model) as hook:
            score, n_reference = _typicality_scorer(
                model, hook, data, train_images, plan, cfg_eval, device
            )
            windows = _windows(cfg_eval, plan)
            first_down = _FirstDownInput(model) if windows else None
            runner = _SplitEvaluator(
                model, hook, plan, device, int(cfg_eval.batch_size), score, windows, first_down
            )
            try:
                per_split, padding = _run_splits(
                    runner, data, splits, counts, plan, scale_protocol, gather, progress
                )
            finally:
                if first_down is not None:
                    first_down.close()
    finally:
        model.train(was_training)
        model.to(original_device)
    report = _assemble_report(
        per_split, splits, counts, padding, plan, cfg_eval, world, scale_protocol, n_reference
    )
    if first_down is not None and first_down.layer is not None:
        report["protocol"]["homogeneity_layer"] = first_down.describe()
        w = first_down.window
        for s, values in per_split.items():
            block = report["splits"][s]
            for measure in ("homogeneity", HOMOGENEITY_INPUT):  # the pixels, the layer's input
                found = values.get(f"{measure}/{w}")
                if found is not None and str(w) not in block.get(measure, {}):
                    ci = _homogeneity_ci(found, cfg_eval, plan.seed)
                    merged = {**block.get(measure, {}), str(w): ci}
                    block[measure] = dict(sorted(merged.items(), key=lambda kv: int(kv[0])))
    return report


def _typicality_scorer(
    model: nn.Module,
    hook: PenultimateFeatures,
    data: Any,
    train_images: Tensor | None,
    plan: EvalPlan,
    cfg_eval: Any,
    device: torch.device,
) -> tuple[Any, int]:
    """``(score, n_reference)``: ``score(images uint8, centre features) -> [n]`` distances to the
    k-th nearest training image in the typicality space (None when typicality is off)."""
    tcfg = cfg_eval.typicality
    method = str(tcfg.method)
    if method == "none":
        return None, 0
    ref = train_images if train_images is not None else _get_split(data, "train").images
    n_ref = min(int(tcfg.n_reference), len(ref))
    own = tcfg.get("checkpoint") is None  # else one reference model's features for every model
    space = model if own else typicality.reference_model(str(tcfg.checkpoint)).to(device)
    embed = typicality.embedder(
        method,
        model=space,
        size=plan.size,
        pixel_size=int(tcfg.pixel_size),
        device=device,
        batch_size=int(cfg_eval.batch_size),
        hook=hook if own else None,
    )
    # In chunks of the embedder's own batch size: a lazy split is never whole in memory.
    chunks = image_chunks(ref, torch.arange(n_ref), int(cfg_eval.batch_size))
    reference = torch.cat([embed(chunk) for chunk in chunks])

    def score(x: Tensor, centre_features: Tensor | None) -> Tensor:
        q = centre_features if method == "features" and own else embed(x)
        return typicality.knn_distance(q, reference, int(tcfg.k))

    return score, n_ref


def _run_splits(
    runner: _SplitEvaluator,
    data: Any,
    splits: dict[str, _Split],
    counts: dict[str, int],
    plan: EvalPlan,
    scale_protocol: str | None,
    gather: GatherFn | None,
    progress: bool,
) -> tuple[dict[str, dict[str, Tensor]], dict[str, int]]:
    """Per-image values of every split (this rank's shard, gathered) and the crop padding used."""
    rank, world = rank_and_world(gather)
    gen = torch.Generator().manual_seed(plan.seed)
    padding: dict[str, int] = {}
    per_split: dict[str, dict[str, Tensor]] = {}
    total = sum(len(shard_indices(n, rank, world)) if n >= world else n for n in counts.values())
    with tqdm(total=total, desc="invariance", disable=not progress, leave=False) as bar:
        for name, sp in splits.items():
            images, labels, n = sp.images, sp.labels, counts[name]
            # Random pairs are drawn for all n images so every rank sees the same ones.
            pairs = random_pair_offsets(n, plan.max_shift, plan.step, gen)
            scale_pairs = distinct_pairs(n, max(len(plan.scales), 2), gen)
            if n == 0:
                continue
            # Fewer images than ranks: every rank evaluates all of them, no gather.
            sharded = gather is not None and world > 1 and n >= world
            idx = shard_indices(n, rank, world) if sharded else torch.arange(n)
            if plan.protocol in ("crop", "subpixel") and "translate" in plan.transforms:
                margin = (images.shape[-1] - plan.size) // 2
                padding[name] = 0 if margin > 0 else math.ceil(plan.max_shift)
            renders = None
            if scale_protocol == "render":  # every scale of the split, rendered once
                renders = data.render_scales(name, list(plan.scales), n)[idx]
            values = runner.run(
                images, idx, labels[idx], pairs[idx], scale_pairs[idx], bar, renders
            )
            if sharded:
                values = gather_values(values, idx, gather, n)
            values.update(_frame_values(sp.scene, n, plan, pairs, scale_protocol))
            per_split[name] = values
    return per_split, padding


def _assemble_report(
    per_split: dict[str, dict[str, Tensor]],
    splits: dict[str, _Split],
    counts: dict[str, int],
    padding: dict[str, int],
    plan: EvalPlan,
    cfg_eval: Any,
    world: int,
    scale_protocol: str | None,
    n_reference: int,
) -> dict[str, Any]:
    """The report: per-split summaries, the protocol, gaps to typical, homogeneity, typicality."""
    groups = {
        s: None if splits[s].groups is None else splits[s].groups[: counts[s]].cpu()
        for s in per_split
    }
    report: dict[str, Any] = {
        "splits": {
            s: _summary(v, plan, cfg_eval, curves=True, groups=groups[s])
            for s, v in per_split.items()
        },
        "protocol": _protocol_block(plan, cfg_eval, counts, padding, world, scale_protocol),
    }
    add_gaps(report, per_split, groups, plan, cfg_eval)
    windows = _windows(cfg_eval, plan)
    if windows:
        for s, values in per_split.items():
            report["splits"][s]["homogeneity"] = {
                str(k): _homogeneity_ci(values[f"homogeneity/{k}"], cfg_eval, plan.seed)
                for k in windows
            }
    if str(cfg_eval.typicality.method) != "none" and per_split:
        report["typicality"] = _typicality_report(per_split, groups, plan, cfg_eval, n_reference)
    return report


HOMOGENEITY_INPUT = "homogeneity_input"  # per split: of the first downsampling layer's input


class _FirstDownInput:
    """Captures the input of the network's first downsampling layer (see
    :func:`eval.equivariance.first_downsampling`) for its local homogeneity at the window the
    layer's kernel needs (``kernel + 1``, the window that bounds a pooled value's change under a
    1-px shift; 2 without a kernel): Mouton et al.'s argument applies where the downsampling
    acts, which after a stem is a feature map. The layer is found on the evaluation's first
    forward pass (hooks on every leaf module, removed once it is found), so the model sees no
    extra probe input."""

    def __init__(self, model: nn.Module) -> None:
        self.net = getattr(model, "net", model)
        self.layer: Any = None
        self.window = 2
        self.seen: Tensor | None = None
        self._net_input: Tensor | None = None
        self._handles = [self.net.register_forward_pre_hook(self._keep_net_input)]
        for name, module in self.net.named_modules():
            if name and next(module.children(), None) is None:
                self._handles.append(module.register_forward_hook(self._search(name)))

    def _keep_net_input(self, _module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self._net_input = inputs[0] if inputs else None

    def _search(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0] if inputs else None
            if self.layer is not None or not isinstance(x, Tensor):
                return
            from eval.equivariance import as_downsampling

            shape_out = tuple(output.shape) if isinstance(output, Tensor) else None
            layer = as_downsampling(name, module, tuple(x.shape), shape_out, x is self._net_input)
            if layer is None:
                return
            self.layer = layer
            self.window = (layer.kernel or 1) + 1
            self.seen = x
            for handle in self._handles:
                handle.remove()
            self._handles = [module.register_forward_pre_hook(self._capture)]

        return hook

    def _capture(self, _module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0] if inputs else None
        self.seen = x if isinstance(x, Tensor) and x.ndim == 4 else None

    def pop(self) -> Tensor | None:
        out, self.seen = self.seen, None
        if out is not None and min(out.shape[-2:]) < self.window:
            return None  # a map smaller than the window has no such windows
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def describe(self) -> dict[str, Any] | None:
        if self.layer is None:
            return None
        return {
            "layer": self.layer.name,
            "kernel": self.layer.kernel,
            "stride": self.layer.stride,
            "window": self.window,
            "input": "pixels" if self.layer.sees_pixels else "features",
        }


def _windows(cfg_eval: Any, plan: EvalPlan) -> tuple[int, ...]:
    """``eval.homogeneity_windows`` that fit the model window."""
    return tuple(int(k) for k in cfg_eval.homogeneity_windows if k <= plan.size)


def _homogeneity_ci(values: Tensor, cfg_eval: Any, seed: int) -> dict[str, Any]:
    """Mean local homogeneity of the images and its bootstrap interval over images (as
    ``homogeneity.homogeneity_report``, from values computed chunk by chunk)."""
    mean, lo, hi = metrics.bootstrap_ci(
        values, int(cfg_eval.n_bootstrap), float(cfg_eval.ci_level), seed
    )
    return {"mean": mean, "ci": [lo, hi]}


def _frame_values(
    scene: Any, n: int, plan: EvalPlan, pairs: Tensor, scale_protocol: str | None
) -> dict[str, Tensor]:
    """``<transform>/in_frame`` [n, views]: the object wholly inside the model window at each
    evaluated view (trajectory and pair views for translate), from the rendered scene's
    geometry; empty for images that were not rendered."""
    if scene is None:
        return {}
    offset = torch.as_tensor(scene.offset[:n], dtype=torch.float64)
    extents = torch.as_tensor(scene.extents[:n], dtype=torch.float64)
    out: dict[str, Tensor] = {}
    if "translate" in plan.transforms:
        views = len(plan.offsets) + 2
        if plan.protocol == "embed":
            keep = plan.size / 2 - (math.ceil(plan.max_shift) if plan.embed_size is None else 0)
            inside = in_frame(offset, extents, plan.size, window=keep).expand(n, views)
        else:
            inside = torch.cat(
                [
                    in_frame(offset, extents, plan.size, shifts=plan.offsets),
                    in_frame(offset, extents, plan.size, shifts=pairs[:n]),
                ],
                1,
            )
        out["translate/in_frame"] = inside
    if "scale" in plan.transforms:
        if scale_protocol == "render":
            factors = torch.tensor(plan.scales, dtype=torch.float64)
            out["scale/in_frame"] = in_frame(offset, extents, plan.size, factors=factors)
        else:
            inside = in_frame(offset, extents, plan.size)
            out["scale/in_frame"] = inside.expand(n, len(plan.scales))
    return out


def _embed_scale(plan: EvalPlan, scale_protocol: str | None) -> dict[str, float] | None:
    """The object scale the embed protocols produce (1.0: unchanged)."""
    out = {}
    if plan.protocol == "embed" and "translate" in plan.transforms:
        out["translate"] = 1.0 if plan.embed_size is None else plan.embed_size
    if scale_protocol == "embed":
        out["scale"] = scale_embed_size(plan.embed_size, list(plan.scales))
    return out or None


def _protocol_block(
    plan: EvalPlan,
    cfg_eval: Any,
    counts: dict[str, int],
    padding: dict[str, int],
    world: int,
    scale_protocol: str | None,
) -> dict[str, Any]:
    embeds = scale_protocol == "embed" or (
        plan.protocol == "embed" and "translate" in plan.transforms
    )
    return {
        "image_size": plan.size,
        "transforms": list(plan.transforms),
        "protocol": plan.protocol,
        "trajectory": plan.trajectory,
        "max_shift_px": plan.max_shift,
        "step_px": plan.step,
        "offsets_convention": "(dy, dx): content moves down/right by dy/dx px",
        "pad_mode": plan.pad_mode if any(padding.values()) else None,
        "padding_px": padding,
        "fill": plan.fill if embeds else None,
        "inpaint": "edge replication" if embeds and plan.fill == "inpaint" else None,
        "embed_size": plan.embed_size if embeds else None,
        "embed_object_scale": _embed_scale(plan, scale_protocol),
        "scales": list(plan.scales),
        "scale_protocol": scale_protocol,
        "scale_protocol_requested": plan.scale_protocol,
        "consistency": "one pair of distinct offsets (translate) or scales (scale) per image",
        "reference_view": "accuracy and given_correct use the view with no shift / scale 1",
        "gap_to_typical": "split minus typical; bootstrap of two independent samples",
        "bootstrap_unit": "instance (images showing the same instance are resampled together)",
        "n_images": counts,
        "n_bootstrap": int(cfg_eval.n_bootstrap),
        "ci_level": float(cfg_eval.ci_level),
        "seed": plan.seed,
        "world_size": world,
    }
