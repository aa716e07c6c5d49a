"""``evaluate``: invariance of a model to translations and rescalings, per held-out split.

For each chunk of images every view (the central crop, the translation trajectory, a random
offset pair per image, the scale trajectory) goes through the model in one batch; per-image
values are gathered across ranks, then averaged with bootstrap confidence intervals. Scale views
are re-renderings of the same scene at each scale (``eval.scale_protocol=render``, rendered once
per split) when the data is a rendering datamodule, otherwise the embed protocol. The report
follows the schema in the README, ``splits.<split>.<transform>.<metric> = {"mean", "ci"}``, plus
curves, ``protocol`` (every parameter used) and ``typicality`` (when enabled).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from eval import metrics, typicality
from eval.distributed import GatherFn, gather_values, rank_and_world, shard_indices
from eval.typicality import PenultimateFeatures
from eval.views import (
    FILLS,
    PAD_MODES,
    PROTOCOLS,
    SCALE_PROTOCOLS,
    TRAJECTORIES,
    center_crop,
    random_pair_offsets,
    rendered_scale_views,
    scale_views,
    to_float,
    trajectory,
    translate_views,
    translation_source,
)
from train.config import ConfigError

TRANSFORMS = ("translate", "scale")
SCALAR_METRICS = ("p_change", "mac", "consistency", "worst_case_accuracy")


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
    embed_size: float
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
    if "scale" in cfg_eval.transforms and len(scales) < 2:
        raise ConfigError(f"eval.scales needs at least two scales, got {list(scales)}.")
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
        embed_size=float(cfg_eval.embed_size),
        scales=scales,
        scale_protocol=_choice("scale_protocol", cfg_eval.scale_protocol, SCALE_PROTOCOLS),
        seed=int(cfg_eval.seed),
    )


# ------------------------------------------------------------------------------------- inputs
def _as_pair(item: Any, name: str) -> tuple[Tensor, Tensor]:
    if hasattr(item, "images") and hasattr(item, "labels"):
        return item.images, item.labels
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise TypeError(f"Split {name!r} must be (images, labels) or have .images/.labels.")


def _get_split(data: Any, name: str) -> tuple[Tensor, Tensor]:
    if isinstance(data, Mapping):
        if name not in data:
            raise KeyError(f"Split {name!r} is missing; available: {', '.join(map(str, data))}.")
        return _as_pair(data[name], name)
    return _as_pair(data.split(name), name)  # a datamodule that has been set up


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
    ) -> None:
        self.model, self.hook, self.plan, self.device = model, hook, plan, device
        self.score = score  # callable(images uint8, centre features) -> [n] typicality scores
        translate = len(plan.offsets) + 2 if "translate" in plan.transforms else 0
        scale = len(plan.scales) if "scale" in plan.transforms else 0
        self.views_per_image = 1 + translate + scale
        self.chunk = max(1, batch_size // self.views_per_image)

    def run(
        self,
        images: Tensor,
        labels: Tensor,
        pairs: Tensor,
        scale_pairs: Tensor,
        bar: Any,
        scale_renders: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-image values of ``images``; ``scale_renders`` [n, T, 3, H, W] are re-rendered
        scale views (None: the embed protocol builds them from ``images``)."""
        parts: dict[str, list[Tensor]] = {}
        for start in range(0, images.shape[0], self.chunk):
            sl = slice(start, start + self.chunk)
            renders = scale_renders[sl] if scale_renders is not None else None
            values = self._chunk(images[sl], labels[sl], pairs[sl], scale_pairs[sl], renders)
            for key, v in values.items():
                parts.setdefault(key, []).append(v.cpu())
            bar.update(images[sl].shape[0])
        return {key: torch.cat(v) for key, v in parts.items()}

    def _chunk(
        self,
        images: Tensor,
        labels: Tensor,
        pairs: Tensor,
        scale_pairs: Tensor,
        scale_renders: Tensor | None,
    ) -> dict[str, Tensor]:
        plan, x = self.plan, images.to(self.device, non_blocking=True)
        y = labels.to(self.device)
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
            views.append(
                scale_views(
                    x, list(plan.scales), size=plan.size, embed_size=plan.embed_size, fill=plan.fill
                )
            )
        batch = torch.cat(views, 1)
        n, v = batch.shape[:2]
        z = self.model(batch.flatten(0, 1)).view(n, v, -1).float()
        feats = self.hook.pop()
        f = feats.view(n, v, -1) if feats is not None else None

        out = {"accuracy": (z[:, 0].argmax(-1) == y).float()}
        t0 = 1
        if "translate" in plan.transforms:
            t1 = t0 + len(plan.offsets)
            zt = z[:, t0:t1]
            for key, val in _trajectory_values(zt, y, plan.grid).items():
                out[f"translate/{key}"] = val
            out["translate/consistency"] = metrics.consistency(z[:, t1], z[:, t1 + 1])
            cos = _cosine(f[:, t0:t1] if f is not None else None, plan.anchor)
            if cos is not None:
                out["translate/cosine"] = cos
            t0 = t1 + 2
        if "scale" in plan.transforms:
            t1 = t0 + len(plan.scales)
            zs = z[:, t0:t1]
            for key, val in _trajectory_values(zs, y).items():
                out[f"scale/{key}"] = val
            ar = torch.arange(n, device=z.device)
            sp = scale_pairs.to(z.device)
            out["scale/consistency"] = metrics.consistency(zs[ar, sp[:, 0]], zs[ar, sp[:, 1]])
            cos = _cosine(f[:, t0:t1] if f is not None else None, plan.scale_anchor)
            if cos is not None:
                out["scale/cosine"] = cos
        if self.score is not None:
            out["typicality/score"] = self.score(x, f[:, 0] if f is not None else None)
        return out


# --------------------------------------------------------------------------------- aggregation
def _ci(values: Tensor, cfg_eval: Any) -> dict[str, Any]:
    mean, lo, hi = metrics.bootstrap_ci(
        values, int(cfg_eval.n_bootstrap), float(cfg_eval.ci_level), int(cfg_eval.seed)
    )
    return {"mean": mean, "ci": [lo, hi]}


def _summary(values: dict[str, Tensor], plan: EvalPlan, cfg_eval: Any, curves: bool) -> dict:
    """Scalars with CIs (and curves when ``curves``) from gathered per-image values."""
    out: dict[str, Any] = {"n_images": int(values["accuracy"].numel())}
    out["accuracy"] = _ci(values["accuracy"], cfg_eval)
    for tr in plan.transforms:
        block: dict[str, Any] = {m: _ci(values[f"{tr}/{m}"], cfg_eval) for m in SCALAR_METRICS}
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
        out[tr] = block
    return out


def _typicality_report(
    per_split: dict[str, dict[str, Tensor]], plan: EvalPlan, cfg_eval: Any, n_reference: int
) -> dict[str, Any]:
    tcfg = cfg_eval.typicality
    pooled = {
        k: torch.cat([v[k] for v in per_split.values()]) for k in next(iter(per_split.values()))
    }
    scores = pooled["typicality/score"]
    typical, atypical = typicality.quantile_masks(scores, float(tcfg.quantile))
    idx, edges = typicality.bin_index(scores, int(tcfg.n_bins))
    subsets = {}
    for name, mask in (("typical", typical), ("atypical", atypical)):
        sub = {k: v[mask] for k, v in pooled.items()}
        block = _summary(sub, plan, cfg_eval, curves=True)
        block["score"] = _ci(sub["typicality/score"], cfg_eval)
        subsets[name] = block
    curve: dict[str, Any] = {
        "bin_edges": edges.tolist(),
        "score": typicality.binned_mean(scores, idx, int(tcfg.n_bins)),
        "accuracy": typicality.binned_mean(pooled["accuracy"], idx, int(tcfg.n_bins)),
    }
    for tr in plan.transforms:
        curve[tr] = {
            m: typicality.binned_mean(pooled[f"{tr}/{m}"], idx, int(tcfg.n_bins))
            for m in SCALAR_METRICS
        }
    return {
        "method": str(tcfg.method),
        "k": int(tcfg.k),
        "quantile": float(tcfg.quantile),
        "n_bins": int(tcfg.n_bins),
        "pixel_size": int(tcfg.pixel_size) if tcfg.method == "pixels" else None,
        "n_reference": n_reference,
        "pooled_splits": list(per_split),
        "score_by_split": {s: _ci(v["typicality/score"], cfg_eval) for s, v in per_split.items()},
        "subsets": subsets,
        "curve": curve,
    }


# ----------------------------------------------------------------------------------- evaluate
def preflight(cfg_eval: Any, data: Any, image_size: int) -> EvalPlan:
    """Check the evaluation settings against the data in milliseconds, before any training.

    Raises ``ConfigError`` for what would otherwise only fail when the evaluation runs: unknown
    choices, a trajectory longer than the held-out margin, an empty split.
    """
    plan = make_plan(cfg_eval, image_size)
    for name in cfg_eval.splits:
        images = data.split(name).images if hasattr(data, "split") else data[name][0]
        if len(images) == 0:
            raise ConfigError(
                f"eval.splits names '{name}', which has no images: set data.n_{name} > 0 or "
                f"remove it from eval.splits."
            )
        if "translate" in plan.transforms and plan.protocol in ("crop", "subpixel"):
            translation_source(images[:1], plan.size, plan.max_shift, plan.pad_mode)
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
    tcfg = cfg_eval.typicality
    method = str(tcfg.method)
    if method not in typicality.METHODS:
        raise ConfigError(
            f"Invalid eval.typicality.method={method!r}; choose one of "
            f"{', '.join(typicality.METHODS)}."
        )
    splits = {name: _get_split(data, name) for name in cfg_eval.splits}
    render = plan.scale_protocol == "render" and renders_scales(data)
    scale_protocol = ("render" if render else "embed") if "scale" in plan.transforms else None
    original_device = _model_device(model)
    device = torch.device(device) if device is not None else original_device
    was_training = model.training
    model.to(device).eval()

    padding: dict[str, int] = {}
    per_split: dict[str, dict[str, Tensor]] = {}
    n_reference = 0
    gen = torch.Generator().manual_seed(plan.seed)
    try:
        with torch.inference_mode(), PenultimateFeatures(model) as hook:
            score = None
            if method != "none":
                ref = train_images if train_images is not None else _get_split(data, "train")[0]
                ref = ref[: int(tcfg.n_reference)]
                n_reference = int(ref.shape[0])
                embed = typicality.embedder(
                    method,
                    model=model,
                    size=plan.size,
                    pixel_size=int(tcfg.pixel_size),
                    device=device,
                    batch_size=int(cfg_eval.batch_size),
                    hook=hook,
                )
                reference = embed(ref)

                def score(x: Tensor, centre_features: Tensor | None) -> Tensor:
                    q = centre_features if method == "features" else embed(x)
                    return typicality.knn_distance(q, reference, int(tcfg.k))

            runner = _SplitEvaluator(model, hook, plan, device, int(cfg_eval.batch_size), score)
            counts = {
                s: min(int(cfg_eval.n_images), int(im.shape[0])) for s, (im, _) in splits.items()
            }
            total = sum(
                len(shard_indices(n, rank, world)) if n >= world else n for n in counts.values()
            )
            with tqdm(total=total, desc="invariance", disable=not progress, leave=False) as bar:
                for name, (images, labels) in splits.items():
                    n = counts[name]
                    # Random pairs are drawn for all n images so every rank sees the same ones.
                    pairs = random_pair_offsets(n, plan.max_shift, plan.step, gen)
                    scale_pairs = torch.randint(0, len(plan.scales), (n, 2), generator=gen)
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
                        images[idx], labels[idx], pairs[idx], scale_pairs[idx], bar, renders
                    )
                    if sharded:
                        values = gather_values(values, idx, gather, n)
                    per_split[name] = values
    finally:
        model.train(was_training)
        model.to(original_device)

    report: dict[str, Any] = {
        "splits": {s: _summary(v, plan, cfg_eval, curves=True) for s, v in per_split.items()},
        "protocol": _protocol_block(plan, cfg_eval, counts, padding, world, scale_protocol),
    }
    if method != "none" and per_split:
        report["typicality"] = _typicality_report(per_split, plan, cfg_eval, n_reference)
    return report


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
        "scales": list(plan.scales),
        "scale_protocol": scale_protocol,
        "scale_protocol_requested": plan.scale_protocol,
        "consistency": "one pair of independent offsets (translate) or scales (scale) per image",
        "n_images": counts,
        "n_bootstrap": int(cfg_eval.n_bootstrap),
        "ci_level": float(cfg_eval.ci_level),
        "seed": plan.seed,
        "world_size": world,
    }
