"""Typed configuration: dataclass schema, YAML + ``key=value`` loading, validation.

``load_config(*yamls, overrides=[...])`` merges schema <- YAML files <- overrides and returns a
structured ``DictConfig`` (attribute access, type-checked assignment). Every mistake a user can
make in a config is raised as :class:`ConfigError` with a message that names the key and the fix.
"""

from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    OmegaConfBaseException,
    ValidationError,
)

from train.files import atomic_write_text
from train.suggest import did_you_mean


class ConfigError(ValueError):
    """A user-facing configuration mistake; the CLI prints it without a traceback (exit 2)."""


# --------------------------------------------------------------------------------------- data
@dataclass
class PlacementConfig:
    """Where, how large, on what and how an object is rendered: the photographer's bias.

    position: ``gaussian`` (offset ~ N(0, sigma_px) per axis, truncated to a distance of at most
    ``max_offset_px`` from the centre), ``uniform`` (offset uniform in [-max_offset_px,
    max_offset_px] per axis), ``ring`` (distance from the centre uniform in ``radius_px``, angle
    uniform) or ``center`` (no offset).
    scale: the object's size factor is log-uniform in [lo, hi] (1.0 = ``data.object_size``).
    background: ``flat`` (one random grey level per image), ``noise`` (i.i.d. pixel noise) or
    ``texture`` (smooth random texture of a fixed cell size in pixels).
    appearance: ``colour`` (the source's own colours; intensity-only sources get a random stroke
    colour, backgrounds a random level) or ``classic`` (white objects on a black canvas, as in
    MNIST).
    """

    position: str = "gaussian"
    sigma_px: float = 1.5
    max_offset_px: float = 4.0
    radius_px: list[float] = field(default_factory=lambda: [6.0, 10.0])
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    background: str = "flat"
    appearance: str = "colour"


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

    n: int = 500
    source: Optional[str] = None  # another source with the same classes (null: data.source)
    position: Optional[str] = None
    sigma_px: Optional[float] = None
    max_offset_px: Optional[float] = None
    radius_px: Optional[list[float]] = None
    scale: Optional[list[float]] = None
    background: Optional[str] = None
    appearance: Optional[str] = None


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
    image_size: int = 32
    object_size: float = 0.6  # object's nominal extent as a fraction of image_size
    render: bool = True  # False: use the source images as they are (resized to image_size)
    eval_margin_px: int = 4  # held-out renderings are image_size + 2 * margin wide
    # Objects stay wholly inside the model window at every evaluated view: shifted by up to
    # eval_margin_px, or rescaled by up to frame_scale. False: placements may cut objects.
    keep_in_frame: bool = True
    frame_scale: float = 1.15
    n_train: int = 5000
    n_val: int = 500
    batch_size: int = 128
    num_workers: int = 0
    # Training batches sliced by index from the uint8 split held on the training device (no
    # DataLoader): auto (when it fits, see train.data.device_loader) | true | false.
    on_device: str = "auto"
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    # The training distribution (also that of `val` and the `typical` held-out split).
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    # Named held-out splits: `typical` (training distribution, held-out instances) plus any number
    # of splits that each change some factors; disjoint instances across splits.
    heldout: dict[str, HeldoutSplitConfig] = field(default_factory=_default_heldout)


# -------------------------------------------------------------------------------------- model
@dataclass
class AntialiasConfig:
    method: str = "none"  # none | blur | maxblur | aps | a registered method
    filt_size: int = 4
    pad_mode: str = "reflect"  # reflect | replicate | circular | zeros
    skip_first: bool = False
    native: bool = False  # timm models: use timm's own aa_layer placement instead


@dataclass
class ModelConfig:
    name: str = "cnn"  # a registered built-in, "timm:<name>" or "tv:<name>"
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    depth: int = 1  # conv blocks per stage
    downsample: str = "conv"  # conv | maxpool | avgpool | none | registered (between stages)
    down_kernel: int = 3
    down_stride: int = 2
    padding_mode: str = "zeros"  # zeros | reflect | replicate | circular
    norm: str = "batch"  # batch | none
    head: str = "gap"  # gap | flatten
    small_input: bool = True  # timm/tv: 3x3 stride-1 stem, no stem max-pool
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
    max_shift_px: int = 4  # translate (exact); affine, heavy (bilinear)
    # translate: how the uncovered border is filled. `reflect` (default) mirrors the border, which
    # for rendered data is background of the same statistics; `zeros` paints black bars that
    # held-out images never show; `background` paints each image's median border colour.
    pad_fill: str = "reflect"
    subpixel_max_px: float = 2.0  # subpixel_translate
    scale: list[float] = field(default_factory=lambda: [0.8, 1.2])  # scale, affine
    degrees: float = 15.0  # rotate, affine
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # crop, heavy
    jitter: float = 0.2  # heavy: colour jiggle strength
    erasing_p: float = 0.25  # heavy
    flip_p: float = 0.5  # flip
    magnitude: int = 9  # randaugment, 1..29 (trivialaugment draws it per image)
    num_ops: int = 2  # randaugment
    same_on_batch: bool = False
    ops: list[dict[str, Any]] = field(default_factory=list)  # [{name: RandomAffine, ...}]


# -------------------------------------------------------------------------------------- optim
@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    schedule: str = "cosine"  # cosine | step | onecycle | constant
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions
    gamma: float = 0.1
    # Parameter-name glob pattern -> learning-rate multiplier (first matching pattern wins),
    # e.g. {"fc.*": 10.0}; one optimizer param group per multiplier.
    lr_mult: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- eval
@dataclass
class TypicalityConfig:
    method: str = "none"  # none | pixels | features
    k: int = 5
    quantile: float = 0.2  # typical = nearest q, atypical = farthest q
    n_bins: int = 10
    pixel_size: int = 8  # pixels: images downsampled to this size
    n_reference: int = 50000  # training images used as the reference set (at most)


@dataclass
class EvalConfig:
    enabled: bool = True
    every_n_epochs: int = 0  # 0: only at the end of fit
    splits: Optional[list[str]] = None  # null: every held-out split (data.heldout) with n > 0
    transforms: list[str] = field(default_factory=lambda: ["translate", "scale"])
    n_images: int = 500  # per split (the first n)
    batch_size: int = 2048  # views per forward pass
    protocol: str = "crop"  # crop | embed | circular | subpixel
    trajectory: str = "diagonal"  # diagonal | horizontal | vertical | grid
    max_shift_px: int = 4
    subpixel_step: float = 0.25
    pad_mode: str = "reflect"  # crop without margin: reflect | replicate | zeros
    fill: str = "black"  # embed: black | mean | inpaint
    # embed: null keeps the object scale (the central image_size - 2 * max_shift_px pixels are
    # pasted as they are); a fraction resizes the image to it (Azulay & Weiss; changes the scale).
    embed_size: Optional[float] = None
    scales: list[float] = field(default_factory=lambda: [0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15])
    scale_protocol: str = "render"  # render (re-render the object; needs data.render) | embed
    n_bootstrap: int = 1000
    ci_level: float = 0.95
    seed: int = 0
    plots: bool = True
    # Local homogeneity (eval.homogeneity) of every evaluated split at these window sizes.
    homogeneity_windows: list[int] = field(default_factory=lambda: [2, 3, 4, 5])
    typicality: TypicalityConfig = field(default_factory=TypicalityConfig)


# ------------------------------------------------------------------------------------- logger
@dataclass
class WandbConfig:
    mode: str = "auto"  # auto (online with credentials, else offline) | online | offline | disabled
    project: str = "invlab"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = False  # online only: upload checkpoints as artifacts
    init_timeout: float = 30.0  # seconds to reach the server before falling back to offline


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
    seed: int = 0
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


# Allowed values of string-valued keys. Names of sources, models, augmentation presets,
# antialiasing methods and downsampling layers are checked against their registries
# (_check_registered, plug-ins included); kornia op names when the ops are built.
POSITIONS = ("gaussian", "uniform", "ring", "center")
BACKGROUNDS = ("flat", "noise", "texture")
APPEARANCES = ("colour", "classic")
CHOICES: dict[str, tuple[str, ...]] = {
    "data.placement.position": POSITIONS,
    "data.heldout.*.position": POSITIONS,
    "data.placement.background": BACKGROUNDS,
    "data.heldout.*.background": BACKGROUNDS,
    "data.placement.appearance": APPEARANCES,
    "data.heldout.*.appearance": APPEARANCES,
    "data.on_device": ("auto", "true", "false"),
    "model.padding_mode": ("zeros", "reflect", "replicate", "circular"),
    "model.norm": ("batch", "none"),
    "model.head": ("gap", "flatten"),
    "model.antialias.pad_mode": ("reflect", "replicate", "circular", "zeros"),
    "augment.pad_fill": ("reflect", "zeros", "background"),
    "optim.optimizer": ("sgd", "adamw"),
    "optim.schedule": ("cosine", "step", "onecycle", "constant"),
    "eval.protocol": ("crop", "embed", "circular", "subpixel"),
    "eval.trajectory": ("diagonal", "horizontal", "vertical", "grid"),
    "eval.pad_mode": ("reflect", "replicate", "zeros"),
    "eval.fill": ("black", "mean", "inpaint"),
    "eval.scale_protocol": ("render", "embed"),
    "eval.typicality.method": ("none", "pixels", "features"),
    "logger.wandb.mode": ("auto", "online", "offline", "disabled"),
}
LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "eval.transforms": ("translate", "scale"),
}
# Keys of earlier versions: a config that uses one is told where it went.
RENAMED = {
    "data.placement.train": "the training placement is 'data.placement' itself",
    "data.placement.atypical": "held-out placements are 'data.heldout.<split>' (e.g. "
    "data.heldout.atypical.position)",
    "data.n_typical": "use 'data.heldout.typical.n'",
    "data.n_atypical": "use 'data.heldout.atypical.n'",
    "data.atypical_source": "use 'data.heldout.<split>.source' (e.g. data.heldout.atypical.source)",
}
# Trainer arguments invlab sets itself from other sections.
MANAGED_TRAINER_KEYS = {
    "callbacks": "InvarianceMonitor and ModelCheckpoint are added by invlab",
    "logger": "use the `logger` section",
    "default_root_dir": "use `out_dir` and `name`",
}

MIN_IMAGE_SIZE = 8

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def schema() -> DictConfig:
    """The full default config (every knob with its default)."""
    return OmegaConf.structured(Config)


def _schema_type(full_key: str) -> Any:
    """The annotated type of a dotted key in the dataclass schema (None when unknown)."""
    node: Any = Config
    typ: Any = None
    for part in full_key.split("."):
        indexed = "[" in part
        part = part.split("[")[0]
        if get_origin(node) is dict:  # a named entry of a mapping (data.heldout.<split>)
            node = typ = get_args(node)[1]
            continue
        if not (isinstance(node, type) and is_dataclass(node)):
            return None
        hints = get_type_hints(node)
        if part not in hints:
            return None
        typ = hints[part]
        node = typ
        if indexed:  # `widths[1]`: the element type
            return (get_args(typ) or (None,))[0]
    return typ


def _type_name(typ: Any) -> str:
    if typ is None:
        return "a value of the schema's type"
    origin = get_origin(typ)
    if origin is list:
        (arg,) = get_args(typ) or (Any,)
        return f"a list of {getattr(arg, '__name__', str(arg))}"
    if origin is dict:
        return "a mapping"
    args = [a for a in get_args(typ) if a is not type(None)]
    if args:  # Optional[X]
        return f"{_type_name(args[0])} or null"
    return getattr(typ, "__name__", str(typ))


def _parent_keys(full_key: str) -> list[str]:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node: Any = Config
    for part in [p for p in parent.split(".") if p]:
        if get_origin(node) is dict:
            node = get_args(node)[1]
            continue
        hints = get_type_hints(node) if node is not None and is_dataclass(node) else {}
        node = hints.get(part)
    return [f.name for f in fields(node)] if node is not None and is_dataclass(node) else []


def _translate(err: OmegaConfBaseException, source: str) -> ConfigError:
    full_key = str(getattr(err, "full_key", "") or "")
    where = f" (in {source})" if source else ""
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and full_key:
        for old, new in RENAMED.items():
            if full_key == old or full_key.startswith(old + "."):
                return ConfigError(f"Config key '{full_key}'{where} was replaced: {new}.")
        leaf = full_key.rsplit(".", 1)[-1]
        valid = _parent_keys(full_key)
        hint = did_you_mean(leaf, valid)
        listing = f" Valid keys here: {', '.join(valid)}." if valid else ""
        return ConfigError(f"Unknown config key '{full_key}'{where}.{hint}{listing}")
    if isinstance(err, (ValidationError, ConfigTypeError)) and full_key:
        expected = _type_name(_schema_type(full_key))
        value = getattr(err, "value", None)
        shown = repr(value) if value is not None else "the given value"
        return ConfigError(
            f"Wrong type for config key '{full_key}'{where}: got {shown}, expected {expected}."
        )
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ConfigError(f"Invalid config{where}: {msg}")


def _resolve_yaml_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml", CONFIG_DIR / "experiments" / p):
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"Config file '{path}' not found. Give a path to a YAML file, or a name under "
        f"{CONFIG_DIR} (e.g. 'default' or 'experiments/<name>.yaml')."
    )


def _parse_overrides(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(
            f"Override '{bad[0]}' is not of the form key=value (e.g. data.n_train=2000 or "
            f"'model.widths=[16,32]')."
        )
    for override in overrides:
        try:
            OmegaConf.from_dotlist([override])
        except Exception as err:  # omegaconf and the YAML parser raise their own types
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(
                f"Could not parse override '{override}' ({first}). Write lists as '[a,b]' and "
                f"quote the whole argument in the shell (e.g. 'model.widths=[16,32]')."
            ) from None
    return OmegaConf.from_dotlist(list(overrides))


def _check_choices(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        if "*" in key:
            head, tail = key.split(".*.")
            parent = OmegaConf.select(cfg, head)
            keys = [f"{head}.{name}.{tail}" for name in parent] if parent is not None else []
        else:
            keys = [key]
        for k in keys:
            value = OmegaConf.select(cfg, k)
            if value is not None and value not in allowed:
                raise ConfigError(
                    f"Invalid value {value!r} for '{k}'.{did_you_mean(value, allowed)} "
                    f"Choose one of: {', '.join(allowed)}."
                )
    splits = ("train", "val", *cfg.data.heldout)
    for value in cfg.eval.splits or []:
        if value not in splits:
            raise ConfigError(
                f"Invalid entry {value!r} in 'eval.splits'.{did_you_mean(value, splits)} "
                f"Choose from: {', '.join(splits)} (held-out splits are defined in data.heldout)."
            )
    for key, allowed in LIST_CHOICES.items():
        for value in OmegaConf.select(cfg, key) or []:
            if value not in allowed:
                raise ConfigError(
                    f"Invalid entry {value!r} in '{key}'.{did_you_mean(value, allowed)} "
                    f"Choose from: {', '.join(allowed)}."
                )


def _check_ranges(cfg: DictConfig) -> None:
    d = cfg.data
    positive = {
        "data.image_size": d.image_size,
        "data.batch_size": d.batch_size,
        "data.n_train": d.n_train,
        "eval.batch_size": cfg.eval.batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"'{key}' must be positive, got {value}.")
    if d.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"'data.image_size' is {d.image_size} px: objects of a few pixels cannot be told "
            f"apart and the model trains at chance level. Use data.image_size >= "
            f"{MIN_IMAGE_SIZE} (the studies use 32)."
        )
    for key in ("n_val", "eval_margin_px", "num_workers"):
        if d[key] < 0:
            raise ConfigError(f"'data.{key}' must be >= 0, got {d[key]}.")
    _check_placement(d.placement, "data.placement")
    _check_on_canvas(d, d.placement, "data.placement")
    for split, spec in d.heldout.items():
        if spec.n < 0:
            raise ConfigError(f"'data.heldout.{split}.n' must be >= 0, got {spec.n}.")
        _check_placement(spec, f"data.heldout.{split}")
        _check_on_canvas(d, heldout_placement(d, split), f"data.heldout.{split}")
    for pattern, mult in cfg.optim.lr_mult.items():
        if not mult >= 0:
            raise ConfigError(
                f"'optim.lr_mult.{pattern}' must be >= 0 (0 freezes in effect), got {mult}."
            )
    changed = changed_factors(d, "typical") if "typical" in d.heldout else []
    if changed:
        raise ConfigError(
            f"'data.heldout.typical' is the training distribution with held-out instances, but "
            f"it changes {', '.join(changed)}. Remove those keys from data.heldout.typical and "
            f"define a new split (e.g. data.heldout.my_split) for that change."
        )
    scales = list(cfg.eval.scales)
    in_frame = d.keep_in_frame and "scale" in cfg.eval.transforms and scales
    if in_frame and max(scales) > d.frame_scale:
        raise ConfigError(
            f"eval.scales reaches {max(scales):g} but held-out objects are only kept in frame up "
            f"to data.frame_scale={d.frame_scale:g}: raise data.frame_scale to {max(scales):g} or "
            f"lower eval.scales (or allow cut objects with data.keep_in_frame=false)."
        )
    if d.frame_scale < 1:
        raise ConfigError(f"'data.frame_scale' must be >= 1, got {d.frame_scale}.")
    if len(d.mean) != 3 or len(d.std) != 3 or min(d.std) <= 0:
        raise ConfigError("'data.mean' and 'data.std' need 3 values each, std > 0.")
    if not 1 <= cfg.model.antialias.filt_size <= 7:
        raise ConfigError(
            f"'model.antialias.filt_size' must be in 1..7, got {cfg.model.antialias.filt_size}."
        )
    if cfg.optim.lr <= 0:
        raise ConfigError(f"'optim.lr' must be positive, got {cfg.optim.lr}.")
    if not 0 < cfg.eval.ci_level < 1:
        raise ConfigError(f"'eval.ci_level' must be in (0, 1), got {cfg.eval.ci_level}.")


def _check_placement(p: Any, where: str) -> None:
    scale, radius = p.scale, p.radius_px
    if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1]):
        raise ConfigError(f"'{where}.scale' must be [lo, hi] with 0 < lo <= hi, got {list(scale)}.")
    if radius is not None and (len(radius) != 2 or not 0 <= radius[0] <= radius[1]):
        raise ConfigError(
            f"'{where}.radius_px' must be [r0, r1] with 0 <= r0 <= r1, got {list(radius)}."
        )
    for key in ("sigma_px", "max_offset_px"):
        if p[key] is not None and p[key] < 0:
            raise ConfigError(f"'{where}.{key}' must be >= 0, got {p[key]}.")


def _check_on_canvas(d: Any, p: Any, where: str) -> None:
    """A ring whose inner radius puts every object outside the model's window."""
    if d.render is False or p.position != "ring" or p.radius_px is None:
        return
    half = d.image_size / 2
    reach = d.object_size * d.image_size * max(p.scale) / 2  # object half-extent at its largest
    if p.radius_px[0] - reach >= half:
        raise ConfigError(
            f"'{where}.radius_px' starts at {p.radius_px[0]:g} px from the centre, but objects "
            f"reach only {reach:g} px from their centre and the {d.image_size}-px model window "
            f"ends {half:g} px from it: every image would be empty background (at most an "
            f"object in a corner). Use radius_px below {half + reach:g} (e.g. [3.5, 5.0]) or a "
            f"larger data.image_size."
        )


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
    source = data.heldout[split].source
    if source is not None and source != data.source:
        changed.append("source")
    return changed


def heldout_splits(data: DataConfig) -> list[str]:
    """Held-out splits with images: ``typical`` first, ``atypical`` last, others in config order."""
    return [name for name in ordered_heldout(data) if data.heldout[name].n > 0]


def ordered_heldout(data: DataConfig) -> list[str]:
    """Every held-out split name: ``typical`` first, ``atypical`` last, others in config order."""
    rank = {"typical": 0, "atypical": 2}
    return sorted(data.heldout, key=lambda name: rank.get(name, 1))


def eval_splits(cfg: Config) -> list[str]:
    """``eval.splits``, or every held-out split with images when it is null."""
    if cfg.eval.splits is None:
        return heldout_splits(cfg.data)
    return list(cfg.eval.splits)


@functools.cache
def trainer_arguments() -> tuple[str, ...]:
    """The keyword arguments of ``lightning.pytorch.Trainer``."""
    import lightning.pytorch as L

    return tuple(p for p in inspect.signature(L.Trainer.__init__).parameters if p != "self")


@functools.cache
def _trainer_hints() -> dict[str, Any]:
    """Annotated types of ``lightning.pytorch.Trainer`` arguments ({} if they cannot be read)."""
    import lightning.pytorch as L

    try:
        return get_type_hints(L.Trainer.__init__)
    except Exception:  # forward references Lightning may add: then Lightning checks alone
        return {}


_PLAIN = {int: (int,), float: (int, float), bool: (bool,), str: (str,), type(None): (type(None),)}


def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether a YAML value fits a Trainer annotation; None when it cannot be told here."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        answers = [_accepts(arg, value) for arg in get_args(hint)]
        return True if True in answers else (None if None in answers else False)
    if origin is Literal:
        return value in get_args(hint)
    if hint in _PLAIN:
        # bool is an int in Python, never in a config.
        return isinstance(value, _PLAIN[hint]) and (hint is bool or not isinstance(value, bool))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        (item, *_) = get_args(hint) or (Any,)
        return not any(_accepts(item, v) is False for v in value)
    if origin is dict:
        return isinstance(value, (dict, DictConfig))
    return None  # objects (Accelerator, Strategy, ...): Lightning validates them


def _hint_name(hint: Any) -> str:
    """A Trainer annotation in words: ``Optional[int]`` -> "int or null"."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(_hint_name(a) for a in get_args(hint)))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(hint))
    if hint is type(None):
        return "null"
    if origin in (list, tuple):
        return "a list of " + " or ".join(_hint_name(a) for a in get_args(hint)[:1])
    if origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _check_trainer(cfg: DictConfig) -> None:
    valid = list(trainer_arguments())
    hints = _trainer_hints()
    for key in cfg.trainer:
        value = cfg.trainer[key]
        if key in hints and _accepts(hints[key], value) is False:
            raise ConfigError(
                f"Wrong type for 'trainer.{key}': got {value!r}, but Lightning's Trainer expects "
                f"{_hint_name(hints[key])}. Fix the value (see `lightning.pytorch.Trainer`)."
            )
        if key in MANAGED_TRAINER_KEYS:
            raise ConfigError(
                f"'trainer.{key}' is set by invlab: {MANAGED_TRAINER_KEYS[key]}. Remove it."
            )
        if key not in valid:
            raise ConfigError(
                f"Unknown Lightning Trainer argument 'trainer.{key}'.{did_you_mean(key, valid)} "
                f"See `lightning.pytorch.Trainer` for the accepted arguments."
            )


def _check_compile(cfg: DictConfig) -> None:
    if not cfg.model.compile:
        return
    import torch

    if cfg.model.compile_backend not in torch.compiler.list_backends(exclude_tags=()):
        common = torch.compiler.list_backends()  # without debugging backends
        raise ConfigError(
            f"Unknown 'model.compile_backend' {cfg.model.compile_backend!r}."
            f"{did_you_mean(cfg.model.compile_backend, common)} Choose one of: "
            f"{', '.join(common)} (torch.compiler.list_backends()), or model.compile=false."
        )


def _check_registered(cfg: DictConfig) -> None:
    """Names of registry entries (built-ins and plug-ins) exist in their registry."""
    import augment  # noqa: F401  (importing the packages registers the built-ins)
    import models  # noqa: F401
    import train.data  # noqa: F401
    from augment.registry import PRESETS
    from models.antialias_methods import ANTIALIAS_METHODS
    from models.downsampling import DOWNSAMPLERS
    from models.registry import MODELS, is_external
    from train.data.registry import SOURCES

    sources = {"data.source": cfg.data.source}
    for split, spec in cfg.data.heldout.items():
        sources[f"data.heldout.{split}.source"] = spec.source
    for key, name in sources.items():
        if name is not None:
            SOURCES.get(name, key)
    if not is_external(cfg.model.name):
        MODELS.get(cfg.model.name, "model.name")
    for name in cfg.augment.presets:
        PRESETS.get(name, "augment.presets")
    DOWNSAMPLERS.get(cfg.model.downsample, "model.downsample")
    if cfg.model.antialias.method != "none":
        ANTIALIAS_METHODS.get(cfg.model.antialias.method, "model.antialias.method")


def validate(cfg: DictConfig) -> DictConfig:
    """Checks beyond types: plug-ins import, registered names, allowed values, ranges, Trainer
    arguments."""
    from train.plugins import import_plugins

    import_plugins(cfg.plugins)
    _check_registered(cfg)
    if isinstance(cfg.data.on_device, str):  # YAML `true` arrives in a str field as "True"
        cfg.data.on_device = cfg.data.on_device.lower()
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_trainer(cfg)
    _check_compile(cfg)
    return cfg


def load_config(
    *yaml_paths: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> Config:
    """Merge schema <- ``base`` <- YAML files (in order) <- ``key=value`` overrides, validate.

    ``base`` is a stored plain-dict config (a checkpoint's). Returns a structured
    ``DictConfig`` typed as :class:`Config` for readers.
    """
    cfg = schema()
    if base is not None:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(base))
        except OmegaConfBaseException as err:
            raise _translate(err, "stored config") from None
    for path in yaml_paths:
        resolved = _resolve_yaml_path(path)
        try:
            loaded = OmegaConf.load(resolved)
        except Exception as err:  # yaml syntax errors come from several libraries
            raise ConfigError(f"Could not read YAML file '{resolved}': {err}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"YAML file '{resolved}' must hold a mapping at the top level.")
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as err:
            raise _translate(err, str(resolved)) from None
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, _parse_overrides(list(overrides)))
        except OmegaConfBaseException as err:
            raise _translate(err, "command-line overrides") from None
    assert isinstance(cfg, DictConfig)
    validate(cfg)
    return cfg  # type: ignore[return-value]


def to_container(cfg: Any) -> dict[str, Any]:
    """Plain-dict form for checkpoints and loggers (never a DictConfig: see weights_only)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def from_container(data: dict[str, Any]) -> Config:
    """Rebuild a validated config from the plain dict stored in a checkpoint or run dir."""
    return load_config(base=data)


def save_config(cfg: Any, path: str | Path) -> Path:
    """The resolved config as YAML, written atomically."""
    return atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
