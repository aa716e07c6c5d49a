"""Loading and validating a config: YAML + ``key=value`` overrides merged onto the schema
(``invlab.config``), checked against the registries, value ranges and Lightning's Trainer.

``load_config(*yamls, overrides=[...])`` merges schema <- YAML files <- overrides and returns a
structured ``DictConfig`` (attribute access, type-checked assignment). Every mistake a user can
make in a config is raised as :class:`ConfigError` with a message that names the key and the fix.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields, is_dataclass
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
    FACTORS,
    REFERENCE,
    Config,
    ConfigError,
    Constraint,
    changed_factors,
    constraint_of,
    heldout_placement,
    leaf_type,
    schema,
)
from invlab.suggest import did_you_mean

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


# ------------------------------------------------------------------ declared constraints
def _shown(value: Any) -> str:
    """A value as a user would write it in an override: ``[2,3]``, ``0.5``, ``'adam'``."""
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _default_of(f: Any) -> Any:
    """A schema field's default (None when it has none)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _refusal(key: str, value: Any, c: Constraint, integer: bool, f: Any, entry: bool) -> str:
    """The message for a value outside its declared constraint: key, value, allowed, fix."""
    if c.choices is not None:
        hint = did_you_mean(str(value), c.choices)
        if entry:
            return f"Invalid entry {value!r} in '{key}'.{hint} Choose from: {', '.join(c.choices)}."
        return f"Invalid value {value!r} for '{key}'.{hint} Choose one of: {', '.join(c.choices)}."
    rule = c.rule(integer)
    finite = isinstance(value, float) and not math.isfinite(value)
    must = f"a finite number {rule}" if finite else rule
    why = f": {c.why}" if c.why else ""
    default = _default_of(f)
    example = f" (default: {key}={_shown(default)})" if default not in (None, {}, []) else ""
    if entry:
        return (
            f"Invalid entry {_shown(value)} in '{key}': every entry must be {must}{why}. "
            f"Fix that entry{example}."
        )
    return (
        f"'{key}' must be {must}, got {_shown(value)}{why}. Set {key} to a value {rule}{example}."
    )


def _declared_values(
    node: Any, cls: type, prefix: str
) -> Iterator[tuple[str, Any, Any, Any, bool]]:
    """Every (key, value, field, leaf type, is an entry) of a config section whose schema field
    declares a constraint: sections and mappings of sections walked into, list and mapping
    entries one by one, null values of optional fields left out."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        key, value = f"{prefix}{f.name}", node[f.name]
        leaf, container, _ = leaf_type(hints[f.name])
        if value is None:
            continue
        if is_dataclass(leaf):
            if container == "dict":
                for name in value:
                    yield from _declared_values(value[name], leaf, f"{key}.{name}.")
            elif container == "list":
                for i, item in enumerate(value):
                    yield from _declared_values(item, leaf, f"{key}[{i}].")
            else:
                yield from _declared_values(value, leaf, f"{key}.")
            continue
        if constraint_of(f) is None:
            continue
        if container == "list":
            yield from ((key, v, f, leaf, True) for v in value)
        elif container == "dict":
            yield from ((f"{key}.{name}", value[name], f, leaf, False) for name in value)
        else:
            yield key, value, f, leaf, False


def _check_declared(cfg: DictConfig) -> None:
    """Every value against the constraint its schema field declares (``invlab.config.field``)."""
    for key, value, f, leaf, entry in _declared_values(cfg, Config, ""):
        c = constraint_of(f)
        assert c is not None
        if not c.admits(value):
            raise ConfigError(_refusal(key, value, c, leaf is int, f, entry))


# --------------------------------------------------------------------------- cross-key rules
def _check_interval(value: Any, key: str, floor: str) -> None:
    """A ``[lo, hi]`` pair with lo <= hi (each entry's own range is declared in the schema)."""
    if value is not None and (len(value) != 2 or not value[0] <= value[1]):
        raise ConfigError(f"'{key}' must be [lo, hi] with {floor} lo <= hi, got {list(value)}.")


def _check_placement(p: Any, where: str) -> None:
    _check_interval(p.scale, f"{where}.scale", "0 <")
    _check_interval(p.radius_px, f"{where}.radius_px", "0 <=")


def _check_heldout_factors(d: Any) -> None:
    """``typical`` changes no factor; every other held-out split changes at least one, except
    ``reference``: a fixed rendering that the arms of a study share while their training
    distributions differ, so it equals training in one arm and not in another.

    A split without images (n=0) is never rendered: it passes unless its name is a near miss of
    another split's (``typcal.n=0`` meant to empty ``typical``). Configs empty the splits of a
    YAML they do not load that way, so an empty split of an unrelated name is left alone."""
    changed = changed_factors(d, "typical") if "typical" in d.heldout else []
    if changed:
        raise ConfigError(
            f"'data.heldout.typical' is the training distribution with held-out instances, but "
            f"it changes {', '.join(changed)}. Remove those keys from data.heldout.typical and "
            f"define a new split (e.g. data.heldout.my_split) for that change."
        )
    keys = [k for group in FACTORS.values() for k in group] + ["source"]
    if not d.render:  # images used as they are: only another source can make a split differ
        for split in d.heldout:
            rendered = [f for f in changed_factors(d, split) if f != "source"]
            if rendered and d.heldout[split].n > 0:
                raise ConfigError(
                    f"Held-out split 'data.heldout.{split}' changes {', '.join(rendered)}, but "
                    f"with data.render=false images are used as they are: nothing re-renders "
                    f"them, so the split would show the same kind of images as 'typical' under "
                    f"another name. Define it by data (data.heldout.{split}.root=<a folder of "
                    f"your images, one sub-folder per class> or data.heldout.{split}.source="
                    f"<another source with the same classes>), empty it "
                    f"(data.heldout.{split}.n=0), or set data.render=true."
                )
    for split in d.heldout:
        if split in ("typical", REFERENCE) or changed_factors(d, split):
            continue
        others = [s for s in d.heldout if s != split] or ["typical"]
        hint = did_you_mean(split, others)
        if d.heldout[split].n == 0 and not hint:
            continue
        unused = [k for k in keys if d.heldout[split][k] is not None]
        note = (
            f" (it sets {', '.join(unused)}, which equal training or are not used by "
            f"position={heldout_placement(d, split).position})"
            if unused
            else ""
        )
        raise ConfigError(
            f"Held-out split 'data.heldout.{split}' changes no factor against training{note}: it "
            f"would be a second 'typical' (the training distribution with other instances).{hint} "
            f"The typical split is data.heldout.typical; a split of another name changes one "
            f"factor, e.g. data.heldout.{split}.background=noise (keys: {', '.join(keys)})."
        )


def _check_eval_splits(cfg: DictConfig) -> None:
    splits = ("train", "val", *cfg.data.heldout)
    for value in cfg.eval.splits or []:
        if value not in splits:
            raise ConfigError(
                f"Invalid entry {value!r} in 'eval.splits'.{did_you_mean(value, splits)} "
                f"Choose from: {', '.join(splits)} (held-out splits are defined in data.heldout)."
            )


def _check_object_size(d: Any) -> None:
    """A rendered object smaller than a pixel leaves blank images."""
    if d.render is False:
        return
    lows = [d.placement.scale[0]] + [
        heldout_placement(d, split).scale[0] for split in d.heldout if d.heldout[split].n > 0
    ]
    smallest = d.object_size * d.image_size * min(lows)
    if smallest < 1:
        raise ConfigError(
            f"Objects would be {smallest:.2g} px wide at their smallest (data.object_size="
            f"{d.object_size:g} of data.image_size={d.image_size}, scale {min(lows):g}): smaller "
            f"than a pixel, every image would be blank background. Raise data.object_size "
            f"(the default is 0.6) or the scales."
        )


def _check_bootstrap(e: Any) -> None:
    """Each tail of a bootstrap interval rests on at least two resamples."""
    tail = e.n_bootstrap * (1 - e.ci_level) / 2
    if tail < 2:
        need = math.ceil(4 / (1 - e.ci_level) - 1e-9)
        raise ConfigError(
            f"eval.n_bootstrap={e.n_bootstrap} leaves {tail:.2g} resamples in each tail of a "
            f"{100 * e.ci_level:g}% interval (eval.ci_level={e.ci_level:g}): its bounds would "
            f"rest on single resamples. Raise eval.n_bootstrap to at least {need} or lower "
            f"eval.ci_level."
        )


def _check_cross_keys(cfg: DictConfig) -> None:
    """Rules that relate several keys (each key's own range is declared in the schema)."""
    d = cfg.data
    _check_placement(d.placement, "data.placement")
    _check_on_canvas(d, d.placement, "data.placement")
    for split, spec in d.heldout.items():
        _check_placement(spec, f"data.heldout.{split}")
        _check_on_canvas(d, heldout_placement(d, split), f"data.heldout.{split}")
    _check_heldout_factors(d)
    _check_eval_splits(cfg)
    _check_object_size(d)
    scales = list(cfg.eval.scales)
    in_frame = d.keep_in_frame and "scale" in cfg.eval.transforms and scales
    if in_frame and max(scales) > d.frame_scale:
        raise ConfigError(
            f"eval.scales reaches {max(scales):g} but held-out objects are only kept in frame up "
            f"to data.frame_scale={d.frame_scale:g}: raise data.frame_scale to {max(scales):g} or "
            f"lower eval.scales (or allow cut objects with data.keep_in_frame=false)."
        )
    if len(d.mean) != 3 or len(d.std) != 3:
        raise ConfigError("'data.mean' and 'data.std' need 3 values each, std > 0.")
    o = cfg.optim
    if o.optimizer.removeprefix("lookahead_") == "sgd" and o.nesterov and o.momentum == 0:
        raise ConfigError(
            "optim.nesterov=true needs momentum, but optim.momentum=0: set optim.momentum "
            "(e.g. 0.9) or optim.nesterov=false."
        )
    _check_bootstrap(cfg.eval)


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


# Trainer settings with which a run ends without a result: (key, refused value test, why + fix).
QUICK_CHECK = "trainer.max_epochs=1 data.n_train=256 eval.n_images=64"
NO_RESULT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "fast_dev_run": (
        lambda v: v is True or (type(v) is int and v > 0),
        "runs a few batches without checkpoints and writes a metrics.json that looks like a "
        f"finished run. Remove it; for a quick check use {QUICK_CHECK}",
    ),
    "limit_train_batches": (
        lambda v: v == 0,
        "trains on no batch, so the run would report untrained weights. Remove it, or give a "
        "number of batches (>= 1) or a fraction of them (in (0, 1])",
    ),
    "max_epochs": (
        lambda v: v == 0,
        "trains for no epoch, so the run would report untrained weights. Use "
        "trainer.max_epochs >= 1",
    ),
    "max_steps": (
        lambda v: v == 0,
        "trains for no step, so the run would report untrained weights. Use trainer.max_steps "
        ">= 1, or -1 (no limit: trainer.max_epochs decides)",
    ),
    "limit_test_batches": (
        lambda v: v == 0,
        "evaluates no held-out batch, so metrics.json would have no held-out accuracy. Remove "
        "it (data.heldout.<split>.n=0 leaves a split out)",
    ),
    "enable_checkpointing": (
        lambda v: v is False,
        "leaves no checkpoints/last.ckpt, the weights metrics.json reports and that --resume, "
        "invlab eval and finetune read. Remove it (invlab writes last.ckpt and the best one)",
    ),
}


def _check_trainer_result(cfg: DictConfig) -> None:
    """Refuse Trainer settings that make a run end without a result."""
    for key, (refused, why) in NO_RESULT.items():
        value = cfg.trainer.get(key)
        if value is not None and not isinstance(value, str) and refused(value):
            raise ConfigError(f"'trainer.{key}={_shown(value)}' {why}.")


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
    from train.module import check_optimizer

    check_optimizer(cfg.optim.optimizer)  # timm's names


def validate(cfg: DictConfig) -> DictConfig:
    """Checks beyond types: plug-ins import, registered names, the values each key declares in
    the schema, rules across keys, Trainer arguments."""
    from train.plugins import import_plugins

    import_plugins(cfg.plugins)
    _check_registered(cfg)
    for key in ("on_device", "stream"):  # YAML `true` arrives in a str field as "True"
        if isinstance(cfg.data[key], str):
            cfg.data[key] = cfg.data[key].lower()
    _check_declared(cfg)
    _check_cross_keys(cfg)
    _check_trainer(cfg)
    _check_trainer_result(cfg)
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
    sources: list[DictConfig] = []  # what the user's files and overrides set
    for path in yaml_paths:
        resolved = _resolve_yaml_path(path)
        try:
            loaded = OmegaConf.load(resolved)
        except Exception as err:  # yaml syntax errors come from several libraries
            raise ConfigError(f"Could not read YAML file '{resolved}': {err}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"YAML file '{resolved}' must hold a mapping at the top level.")
        sources.append(loaded)
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as err:
            raise _translate(err, str(resolved)) from None
    if overrides:
        parsed = _parse_overrides(list(overrides))
        sources.append(parsed)
        try:
            cfg = OmegaConf.merge(cfg, parsed)
        except OmegaConfBaseException as err:
            raise _translate(err, "command-line overrides") from None
    assert isinstance(cfg, DictConfig)
    if base is None:  # a stored config already holds the values its run used
        from train.preprocessing import apply_model_preprocessing, explicit_keys

        try:
            apply_model_preprocessing(cfg, explicit_keys(*sources))
        except OmegaConfBaseException as err:
            raise _translate(err, "the model's pretrained_cfg") from None
    validate(cfg)
    return cfg  # type: ignore[return-value]
