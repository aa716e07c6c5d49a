"""Loading and validating a config: YAML + ``key=value`` overrides merged onto the schema
(``invlab.config``), checked against the registries, value ranges and Lightning's Trainer.

``load_config(*yamls, overrides=[...])`` merges schema <- YAML files <- overrides and returns a
structured ``DictConfig`` (attribute access, type-checked assignment). Every mistake a user can
make in a config is raised as :class:`ConfigError` with a message that names the key and the fix.
"""

from __future__ import annotations

import functools
import inspect
import types
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    OmegaConfBaseException,
    ValidationError,
)

from invlab.config import (
    APPEARANCES,
    BACKGROUNDS,
    POSITIONS,
    Config,
    ConfigError,
    changed_factors,
    heldout_placement,
    schema,
)
from invlab.suggest import did_you_mean

# Allowed values of string-valued keys. Names of sources, models, augmentation presets,
# antialiasing methods and downsampling layers are checked against their registries
# (_check_registered, plug-ins included); kornia op names when the ops are built.
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
