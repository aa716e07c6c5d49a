"""The typed config schema every layer shares: one dataclass per section, ``ConfigError``,
the held-out split helpers and the plain-container conversions.

Each numeric and enumerated key declares the values it allows where it is defined
(``seed: int = field(0, ge=0)``, see :func:`field`); ``train.config`` checks them all.

Loading (YAML + ``key=value`` overrides) and validation against the registries live in
``train.config``: this module imports nothing of the project's layers.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf

from invlab.files import atomic_write_text


class ConfigError(ValueError):
    """A user-facing configuration mistake; the CLI prints it without a traceback (exit 2)."""


# ------------------------------------------------------------------------- declared constraints
CONSTRAINT = "invlab.constraint"  # the key of a field's metadata that holds its Constraint


@dataclass(frozen=True)
class Constraint:
    """The values a key allows (for a list or a mapping: each entry): bounds, a fixed vocabulary,
    finiteness. ``why`` says in a few words why, for the refusal message."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    finite: bool = True  # numbers: nan is never allowed, inf only with finite=False
    why: str = ""

    def admits(self, value: Any) -> bool:
        """Whether ``value`` (one number or one string) satisfies the constraint."""
        if self.choices is not None:
            return value in self.choices
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True  # a type mismatch is OmegaConf's to report
        if math.isnan(value) or (self.finite and math.isinf(value)):
            return False
        return not (
            (self.ge is not None and not value >= self.ge)
            or (self.gt is not None and not value > self.gt)
            or (self.le is not None and not value <= self.le)
            or (self.lt is not None and not value < self.lt)
        )

    def rule(self, integer: bool = False) -> str:
        """The allowed values in words: ``in 1..7``, ``>= 0``, ``in (0, 1)``, ``one of a, b``."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        lo = self.ge if self.ge is not None else self.gt
        hi = self.le if self.le is not None else self.lt
        if lo is not None and hi is not None:
            if integer and self.ge is not None and self.le is not None:
                return f"in {_num(lo)}..{_num(hi)}"
            left, right = "[" if self.ge is not None else "(", "]" if self.le is not None else ")"
            return f"in {left}{_num(lo)}, {_num(hi)}{right}"
        parts = [
            f"{op} {_num(bound)}"
            for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if bound is not None
        ]
        number = "an integer" if integer else "a finite number" if self.finite else "a number"
        return " ".join(parts) if parts else number


def _num(bound: float) -> str:
    """A bound as written in a config: ``4294967295``, ``0.5``."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


_NO_DEFAULT: Any = dataclasses.MISSING


def field(
    default: Any = _NO_DEFAULT,
    *,
    default_factory: Callable[[], Any] = _NO_DEFAULT,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
    finite: bool = True,
    why: str = "",
) -> Any:
    """A dataclass field whose allowed values are declared with it (``field(0, ge=0)``).

    OmegaConf structured configs check types but not ranges or vocabularies, so the schema
    carries them in the field's metadata; ``train.config`` checks every value against them."""
    declared = any(b is not None for b in (ge, gt, le, lt, choices)) or not finite or why
    metadata = {
        CONSTRAINT: Constraint(ge, gt, le, lt, tuple(choices) if choices else None, finite, why)
    }
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata=metadata if declared else None
    )


def constraint_of(f: dataclasses.Field) -> Constraint | None:
    """The constraint declared on a schema field (None when it declares none)."""
    return f.metadata.get(CONSTRAINT)


# --------------------------------------------------------------------------------------- data
# Vocabulary of the placement keys.
POSITIONS = ("gaussian", "uniform", "ring", "center")
BACKGROUNDS = ("flat", "noise", "texture", "mixed")
APPEARANCES = ("colour", "classic")


@dataclass
class PlacementConfig:
    """Where, how large, on what and how an object is rendered: the photographer's bias.

    position: ``gaussian`` (offset ~ N(0, sigma_px) per axis, truncated to a distance of at most
    ``max_offset_px`` from the centre), ``uniform`` (offset uniform in [-max_offset_px,
    max_offset_px] per axis), ``ring`` (distance from the centre uniform in ``radius_px``, angle
    uniform) or ``center`` (no offset).
    scale: the object's size factor is log-uniform in [lo, hi] (1.0 = ``data.object_size``).
    background: ``flat`` (one random grey level per image), ``noise`` (i.i.d. pixel noise),
    ``texture`` (smooth random texture of a fixed cell size in pixels) or ``mixed`` (``flat`` or
    ``noise``, half each: the factor-in-training control of the ``background`` split).
    appearance: ``colour`` (the source's own colours; intensity-only sources get a random stroke
    colour, backgrounds a random level) or ``classic`` (white objects on a black canvas, as in
    MNIST).
    """

    position: str = field("gaussian", choices=POSITIONS)
    sigma_px: float = field(1.5, ge=0)
    max_offset_px: float = field(4.0, ge=0)
    radius_px: list[float] = field(default_factory=lambda: [6.0, 10.0], ge=0)
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1], gt=0)
    background: str = field("flat", choices=BACKGROUNDS)
    appearance: str = field("colour", choices=APPEARANCES)


# Factors of a rendering, each a group of PlacementConfig keys: a held-out split that sets keys
# of one group changes that one factor (``source`` is a factor of its own).
FACTORS: dict[str, tuple[str, ...]] = {
    "position": ("position", "sigma_px", "max_offset_px", "radius_px"),
    "scale": ("scale",),
    "background": ("background",),
    "appearance": ("appearance",),
}


@dataclass
class HeldoutSplitConfig:
    """A held-out split: ``n`` images of held-out instances, rendered from the training placement
    (``data.placement``) except for the keys set here (null = as in training). Setting keys of one
    factor (position, scale, background, appearance, source) makes a single-factor split."""

    n: int = field(500, ge=0)
    source: Optional[str] = None  # another source with the same classes (null: data.source)
    # A folder of this split's own images, <root>/<class>/* with the training classes' names,
    # every image held out ("my atypical images are in this folder"): a split defined by data.
    root: Optional[str] = None
    position: Optional[str] = field(None, choices=POSITIONS)
    sigma_px: Optional[float] = field(None, ge=0)
    max_offset_px: Optional[float] = field(None, ge=0)
    radius_px: Optional[list[float]] = field(None, ge=0)
    scale: Optional[list[float]] = field(None, gt=0)
    background: Optional[str] = field(None, choices=BACKGROUNDS)
    appearance: Optional[str] = field(None, choices=APPEARANCES)


# A held-out split that may equal the training distribution without being ``typical``: the fixed
# rendering a study's arms share when their training distributions differ (the gap of a factor
# split is then read against it: ``invlab report --gap-to reference``).
REFERENCE = "reference"


def _default_heldout() -> dict[str, HeldoutSplitConfig]:
    return {
        "typical": HeldoutSplitConfig(),
        "atypical": HeldoutSplitConfig(
            position="ring", radius_px=[3.5, 5.0], scale=[0.65, 0.8], background="noise"
        ),
    }


@dataclass
class DataConfig:
    source: str = "shapes"
    root: str = "data"
    download: bool = True
    image_size: int = field(
        32,
        ge=8,
        why="objects of a few pixels cannot be told apart and the model trains at chance level "
        "(the studies use 32)",
    )
    # The object's nominal extent as a fraction of image_size.
    object_size: float = field(0.6, gt=0, why="an object of size 0 leaves blank images")
    render: bool = True  # False: use the source images as they are (resized to image_size)
    # render=false: the central fraction of an image the model sees (timm's crop_pct: the shorter
    # side is resized to image_size / crop_pct, then the centre is cropped). Below 1, held-out
    # images keep eval_margin_px of real pixels around that crop when it fits (the crop protocol
    # then shifts over real pixels, as Azulay & Weiss did); at 1 shifted views are padded.
    crop_pct: float = field(1.0, gt=0, le=1)
    eval_margin_px: int = field(4, ge=0)  # held-out renderings are image_size + 2 * margin wide
    # Objects stay wholly inside the model window at every evaluated view: shifted by up to
    # eval_margin_px, or rescaled by up to frame_scale. False: placements may cut objects.
    keep_in_frame: bool = True
    frame_scale: float = field(1.15, ge=1)
    n_train: int = field(5000, ge=1)
    n_val: int = field(500, ge=0)
    batch_size: int = field(128, ge=1)
    num_workers: int = field(0, ge=0)
    # Training batches sliced by index from the uint8 split held on the training device (no
    # DataLoader): auto (when it fits, see train.data.device_loader) | true | false. For a
    # training split rendered per batch (data.stream): where its objects are pasted, the
    # training device (auto, true) or the CPU in the DataLoader (false).
    on_device: str = field("auto", choices=("auto", "true", "false"))
    # Data made when a batch needs it, never a split in memory: data.render=false splits decoded
    # from their files by DataLoader workers; data.render=true training images rendered per batch
    # on the training device (held-out splits stay rendered in memory; the same pixels as ahead
    # of time). auto (when in memory the splits would exceed a quarter of the available RAM, or
    # 2 GiB without psutil; see train.data.stream) | true | false.
    stream: str = field("auto", choices=("auto", "true", "false"))
    # model: a pretrained timm model's own input (its pretrained_cfg: image_size, mean, std) where
    # no file or override sets these keys (train.preprocessing); config: the values below only.
    preprocessing: str = field("model", choices=("model", "config"))
    # Per-channel normalisation of images in [0, 1].
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5], ge=0, le=1)
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25], gt=0)
    # The training distribution (also that of `val` and the `typical` held-out split).
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    # Named held-out splits: `typical` (training distribution, held-out instances) plus any number
    # of splits that each change some factors; disjoint instances across splits.
    heldout: dict[str, HeldoutSplitConfig] = field(default_factory=_default_heldout)


# -------------------------------------------------------------------------------------- model
@dataclass
class AntialiasConfig:
    method: str = "none"  # none | blur | maxblur | aps | a registered method
    filt_size: int = field(4, ge=1, le=7)
    pad_mode: str = field("reflect", choices=("reflect", "replicate", "circular", "zeros"))
    skip_first: bool = False
    native: bool = False  # timm models: use timm's own aa_layer placement instead


@dataclass
class ModelConfig:
    name: str = "cnn"  # a registered built-in, "timm:<name>" or "tv:<name>"
    widths: list[int] = field(default_factory=lambda: [32, 64, 128], ge=1)
    depth: int = field(1, ge=1)  # conv blocks per stage
    downsample: str = "conv"  # conv | maxpool | avgpool | none | registered (between stages)
    down_kernel: int = field(3, ge=1)
    down_stride: int = field(2, ge=1, why="1 keeps the resolution; 0 is no stride")
    padding_mode: str = field("zeros", choices=("zeros", "reflect", "replicate", "circular"))
    norm: str = field("batch", choices=("batch", "none"))
    head: str = field("gap", choices=("gap", "flatten"))
    # timm/tv only, when asked: a 3x3 stride-1 stem without max-pool for 16-64 px images. Off by
    # default: a named architecture is never changed silently (pretrained weights included).
    small_input: bool = False
    pretrained: Optional[str] = None  # a local weights file (never downloaded)
    init_from: Optional[str] = None  # a checkpoint whose weights initialise the model
    # init_from: false allows missing/unexpected keys and shape mismatches beyond the classifier
    # head (all listed in the run's load_report.json).
    init_strict: bool = True
    # Parameter-name glob patterns (e.g. "stages.0.*") kept frozen: no gradient, and their
    # BatchNorm layers stay in eval mode (running statistics unchanged).
    freeze: list[str] = field(default_factory=list)
    channels_last: bool = False
    compile: bool = False  # torch.compile the network (state-dict keys unchanged)
    compile_backend: str = "inductor"  # torch.compile backend (e.g. aot_eager to debug)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm/torchvision
    antialias: AntialiasConfig = field(default_factory=AntialiasConfig)


# ------------------------------------------------------------------------------------ augment
@dataclass
class AugmentConfig:
    """Presets combine in order; each has one knob a sweep can vary."""

    presets: list[str] = field(default_factory=list)
    max_shift_px: int = field(4, ge=0)  # translate (exact); affine, heavy (bilinear)
    # translate: how the uncovered border is filled. `reflect` (default) mirrors the border, which
    # for rendered data is background of the same statistics; `zeros` paints black bars that
    # held-out images never show; `background` paints each image's median border colour.
    pad_fill: str = field("reflect", choices=("reflect", "zeros", "background"))
    subpixel_max_px: float = field(2.0, ge=0)  # subpixel_translate
    scale: list[float] = field(default_factory=lambda: [0.8, 1.2], gt=0)  # scale, affine
    degrees: float = field(15.0, ge=0, le=180)  # rotate, affine
    # crop, heavy: the fraction of the area a crop covers
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0], gt=0, le=1)
    jitter: float = field(0.2, ge=0)  # heavy: colour jiggle strength
    erasing_p: float = field(0.25, ge=0, le=1)  # heavy, erasing
    flip_p: float = field(0.5, ge=0, le=1)  # flip
    magnitude: int = field(9, ge=1, le=29)  # randaugment (trivialaugment draws it per image)
    num_ops: int = field(2, ge=1, le=15)  # randaugment
    # mixup, mixup_cutmix: an image keeps a weight ~ Beta(a, a) of itself (timm's recipes: 0.8)
    mixup_alpha: float = field(0.8, gt=0)
    # cutmix, mixup_cutmix: the area pasted from a partner is 1 - Beta(a, a) (timm's recipes: 1.0)
    cutmix_alpha: float = field(1.0, gt=0)
    mix_switch_p: float = field(0.5, ge=0, le=1)  # mixup_cutmix: P(cutmix) per image, else mixup
    same_on_batch: bool = False
    ops: list[dict[str, Any]] = field(default_factory=list)  # [{name: RandomAffine, ...}]


# -------------------------------------------------------------------------------------- optim
@dataclass
class EMAConfig:
    """An exponential moving average of the weights (Lightning's ``EMAWeightAveraging``),
    updated after every optimizer step: ``ema = decay * ema + (1 - decay) * weights``."""

    enabled: bool = False
    decay: float = field(0.999, gt=0, lt=1)


@dataclass
class OptimConfig:
    # A timm optimizer name (timm.optim.create_optimizer_v2: sgd, momentum, adamw, lamb, lars, ...),
    # checked by train.config against the names timm offers.
    optimizer: str = "sgd"
    lr: float = field(0.05, gt=0, finite=True)
    momentum: float = field(0.9, ge=0, lt=1)  # optimizers with momentum (sgd, lars, ...)
    nesterov: bool = True  # sgd only (timm's `momentum` is sgd without Nesterov)
    weight_decay: float = field(5e-4, ge=0)  # not on biases and norm parameters (timm's rule)
    label_smoothing: float = field(0.0, ge=0, le=1)  # also of mixed (mixup/cutmix) targets
    schedule: str = field("cosine", choices=("cosine", "step", "onecycle", "constant"))
    warmup_epochs: float = field(0.0, ge=0)
    # step: fractions of the training steps
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75], ge=0, le=1)
    gamma: float = field(0.1, gt=0)
    # Parameter-name glob pattern -> learning-rate multiplier (first matching pattern wins),
    # e.g. {"fc.*": 10.0}; one optimizer param group per multiplier.
    lr_mult: dict[str, float] = field(
        default_factory=dict, ge=0, why="0 freezes in effect; a negative multiplier climbs the loss"
    )
    ema: EMAConfig = field(default_factory=EMAConfig)


# --------------------------------------------------------------------------------------- eval
@dataclass
class TypicalityConfig:
    method: str = field("none", choices=("none", "pixels", "features"))
    k: int = field(5, ge=1)
    quantile: float = field(0.2, gt=0, le=0.5)  # typical = nearest q, atypical = farthest q
    n_bins: int = field(10, ge=1)
    pixel_size: int = field(8, ge=1)  # pixels: images downsampled to this size
    # features: of this checkpoint of an invlab run (one space, so the same typicality bins, for
    # every model a study compares); null: each evaluated model's own penultimate features.
    checkpoint: Optional[str] = None
    n_reference: int = field(50000, ge=1)  # training images used as the reference set (at most)


@dataclass
class EquivarianceConfig:
    """Per-layer shift equivariance (``eval.equivariance``): at the end of fit and in
    ``invlab eval``, on the first ``n_images`` of every evaluated split, circular shifts within
    ``±max_shift_px`` (the 2-D ``grid`` or the ``diagonal``). ``layers``: ``auto`` (the output
    of every downsampling stage, then the penultimate features), ``penultimate`` or module names
    of the network (``features.down1``)."""

    enabled: bool = False
    layers: list[str] = field(default_factory=lambda: ["auto"])
    max_shift_px: int = field(3, ge=1, why="a shift of 0 px leaves nothing to compare")
    trajectory: str = field("grid", choices=("grid", "diagonal"))
    n_images: int = field(200, ge=1)  # per split (the first n)
    # circular: torch.roll of the model window; crop: the window moved over the held-out split's
    # real margin (data.eval_margin_px >= max_shift_px), maps compared where they overlap.
    protocol: str = field("circular", choices=("circular", "crop"))


@dataclass
class EvalConfig:
    enabled: bool = True
    every_n_epochs: int = field(0, ge=0)  # 0: only at the end of fit
    splits: Optional[list[str]] = None  # null: every held-out split (data.heldout) with n > 0
    transforms: list[str] = field(
        default_factory=lambda: ["translate", "scale"], choices=("translate", "scale")
    )
    n_images: int = field(500, ge=1)  # per split (the first n)
    batch_size: int = field(2048, ge=1)  # views per forward pass
    protocol: str = field("crop", choices=("crop", "embed", "circular", "subpixel"))
    trajectory: str = field("diagonal", choices=("diagonal", "horizontal", "vertical", "grid"))
    max_shift_px: int = field(4, ge=0)
    subpixel_step: float = field(0.25, gt=0)
    # crop without margin: how the image is padded
    pad_mode: str = field("reflect", choices=("reflect", "replicate", "zeros"))
    fill: str = field("black", choices=("black", "mean", "inpaint"))  # embed
    # embed: null keeps the object scale (the central image_size - 2 * max_shift_px pixels are
    # pasted as they are); a fraction resizes the image to it (Azulay & Weiss; changes the scale).
    embed_size: Optional[float] = field(None, gt=0, le=1)
    scales: list[float] = field(
        default_factory=lambda: [0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15], gt=0
    )
    # render (re-render the object; needs data.render) | embed
    scale_protocol: str = field("render", choices=("render", "embed"))
    # Resamples of each bootstrap interval (train.config also wants two in each tail).
    n_bootstrap: int = field(
        1000,
        ge=100,
        why="with fewer resamples a percentile interval rests on one or two resamples in each "
        "tail, and 0 gives a zero-width interval",
    )
    ci_level: float = field(0.95, gt=0, lt=1)
    seed: int = field(0, ge=0)
    plots: bool = True
    # Local homogeneity (eval.homogeneity) of every evaluated split at these window sizes.
    homogeneity_windows: list[int] = field(
        default_factory=lambda: [2, 3, 4, 5], ge=2, why="a window needs two pixels to have a range"
    )
    typicality: TypicalityConfig = field(default_factory=TypicalityConfig)
    equivariance: EquivarianceConfig = field(default_factory=EquivarianceConfig)


# ------------------------------------------------------------------------------------- logger
@dataclass
class WandbConfig:
    # auto (online with credentials, else offline) | online | offline | disabled
    mode: str = field("auto", choices=("auto", "online", "offline", "disabled"))
    project: str = "invlab"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = False  # online only: upload checkpoints as artifacts
    # seconds to reach the server before falling back to offline
    init_timeout: float = field(30.0, gt=0)


@dataclass
class LoggerConfig:
    csv: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


def _default_trainer() -> dict[str, Any]:
    return {
        "max_epochs": 10,
        "accelerator": "auto",
        "devices": 1,
        "precision": "32-true",
        "log_every_n_steps": 10,
    }


@dataclass
class Config:
    name: str = "default"
    # Lightning's seed_everything takes 32-bit seeds (it replaces others by 0).
    seed: int = field(0, ge=0, le=2**32 - 1)
    out_dir: str = "runs"
    # Modules imported before validation: they register their own sources, models, presets, ...
    plugins: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict[str, Any] = field(default_factory=_default_trainer)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def leaf_type(hint: Any) -> tuple[Any, str | None, bool]:
    """An annotation as (type of one value, container, optional): ``Optional[list[float]]`` ->
    ``(float, "list", True)``, ``dict[str, float]`` -> ``(float, "dict", False)``."""
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        optional, hint = len(args) < len(get_args(hint)), args[0]
    origin = get_origin(hint)
    if origin is list:
        return (get_args(hint) or (Any,))[0], "list", optional
    if origin is dict:
        return get_args(hint)[1], "dict", optional
    return hint, None, optional


def schema_fields(
    cls: type = Config, prefix: str = ""
) -> Iterator[tuple[str, Any, dataclasses.Field]]:
    """Every leaf field of the schema as (dotted key, annotation, field), sections walked into;
    the fields of a mapping's sections (``data.heldout``) appear under ``<key>.*``."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        inner, container, _ = leaf_type(hint)
        if dataclasses.is_dataclass(inner):
            yield from schema_fields(inner, f"{key}.*." if container else f"{key}.")
        else:
            yield key, hint, f


def schema() -> DictConfig:
    """The full default config (every knob with its default)."""
    return OmegaConf.structured(Config)


def heldout_placement(data: DataConfig, split: str) -> PlacementConfig:
    """The placement of a held-out split: the training placement with the split's keys set."""
    values = {f.name: getattr(data.placement, f.name) for f in fields(PlacementConfig)}
    spec = data.heldout[split]
    for key in values:
        if spec[key] is not None:
            values[key] = spec[key]
    return PlacementConfig(
        **{k: list(v) if isinstance(v, (list, ListConfig)) else v for k, v in values.items()}
    )


def changed_factors(data: DataConfig, split: str) -> list[str]:
    """The factors (``FACTORS`` and ``source``) in which a held-out split differs from training.

    A key the position kind does not use (``radius_px`` of a gaussian) changes nothing."""
    train, placed = data.placement, heldout_placement(data, split)
    used = {
        "gaussian": ("position", "sigma_px", "max_offset_px"),
        "uniform": ("position", "max_offset_px"),
        "ring": ("position", "radius_px"),
        "center": ("position",),
    }[placed.position]

    def differs(key: str) -> bool:
        a, b = getattr(train, key), getattr(placed, key)
        a = list(a) if isinstance(a, (list, ListConfig)) else a
        b = list(b) if isinstance(b, (list, ListConfig)) else b
        return a != b

    changed = [
        name
        for name, keys in FACTORS.items()
        if any(differs(k) for k in keys if name != "position" or k in used)
    ]
    spec = data.heldout[split]
    if (spec.source is not None and spec.source != data.source) or spec.get("root"):
        changed.append("source")
    return changed


def heldout_splits(data: DataConfig) -> list[str]:
    """Held-out splits with images: ``typical`` first, ``atypical`` last, others in config order."""
    return [name for name in ordered_heldout(data) if data.heldout[name].n > 0]


def ordered_heldout(data: DataConfig) -> list[str]:
    """Every held-out split name: ``typical`` first, then ``reference``, ``atypical`` last,
    others in config order."""
    rank = {"typical": 0, REFERENCE: 1, "atypical": 3}
    return sorted(data.heldout, key=lambda name: rank.get(name, 2))


def eval_splits(cfg: Config) -> list[str]:
    """``eval.splits``, or every held-out split with images when it is null."""
    if cfg.eval.splits is None:
        return heldout_splits(cfg.data)
    return list(cfg.eval.splits)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys (lists and empty mappings stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def to_container(cfg: Any) -> dict[str, Any]:
    """Plain-dict form for checkpoints and loggers (never a DictConfig: see weights_only)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def as_config(data: dict[str, Any]) -> Config:
    """A stored plain-dict config (a checkpoint's) typed again as :class:`Config`, without the
    registry and range checks of ``train.config.load_config`` (it passed them when it was saved).
    """
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(schema(), OmegaConf.create(data))  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(f"Stored config does not fit this version's schema: {err}") from None


def save_config(cfg: Any, path: str | Path) -> Path:
    """The resolved config as YAML, written atomically."""
    return atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
