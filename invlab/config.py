"""The typed config schema every layer shares: one dataclass per section, ``ConfigError``,
the held-out split helpers and the plain-container conversions.

Loading (YAML + ``key=value`` overrides) and validation against the registries live in
``train.config``: this module imports nothing of the project's layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from invlab.files import atomic_write_text


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


# Vocabulary of the placement keys.
POSITIONS = ("gaussian", "uniform", "ring", "center")
BACKGROUNDS = ("flat", "noise", "texture")
APPEARANCES = ("colour", "classic")


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
