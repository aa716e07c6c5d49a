"""``build(cfg.model, num_classes)``: the one place a config becomes a network."""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from invlab.config import ConfigError, ModelConfig

from .antialias import antialias
from .external import adapt_small_input, create_timm, create_torchvision, timm_blurpool
from .registry import EXTERNAL_PREFIXES, list_models, model_entrypoint
from .weights import load_weights

log = logging.getLogger(__name__)

# The ModelConfig knobs a built-in entrypoint receives (plus model.kwargs).
ARCH_KEYS = ("widths", "depth", "downsample", "down_kernel", "down_stride", "padding_mode", "norm")


def model_config(cfg_model: Any = None, **overrides: Any) -> DictConfig:
    """A validated ``ModelConfig`` node from a DictConfig, dataclass, dict or None (defaults)."""
    cfg = OmegaConf.structured(ModelConfig)
    try:
        if cfg_model is not None:
            cfg = OmegaConf.merge(cfg, cfg_model)
        if overrides:
            cfg = OmegaConf.merge(cfg, overrides)
    except Exception as err:  # omegaconf validation errors
        raise ConfigError(f"Invalid model config: {err}") from None
    return cfg


HUB = "true"  # model.pretrained=true: the model library's own pretrained weights


def from_hub(cfg: DictConfig) -> bool:
    """``model.pretrained=true``: timm's (or torchvision's) own pretrained weights, loaded by that
    library (from its hub or cache, or a ``pretrained_cfg_overlay`` file in ``model.kwargs``)."""
    return str(cfg.pretrained or "").lower() == HUB


def create(cfg: DictConfig, num_classes: int, in_chans: int = 3) -> nn.Module:
    """The bare network of ``cfg.name`` (no antialiasing; weights only with
    ``model.pretrained=true``, through the model library's own loading)."""
    name: str = cfg.name
    kwargs = dict(OmegaConf.to_container(cfg.kwargs, resolve=True))  # type: ignore[arg-type]
    for key in ("pretrained", "weights", "pretrained_cfg"):
        if key in kwargs:
            raise ConfigError(
                f"model.kwargs.{key} is not allowed: say model.pretrained=true for the library's "
                f"own pretrained weights, or model.pretrained=<path> for a local weights file."
            )
    hub = from_hub(cfg)
    if hub and not name.startswith(EXTERNAL_PREFIXES):
        raise ConfigError(
            f"model.pretrained=true loads timm's or torchvision's own weights, but '{name}' is a "
            f"built-in model: give a weights file (model.pretrained=<path>) or model.init_from."
        )
    aa = cfg.antialias
    if aa.native and aa.method != "none":
        if not name.startswith("timm:"):
            raise ConfigError(
                "model.antialias.native=true applies to timm models only (their aa_layer); "
                f"'{name}' uses invlab's rewrite: set native=false."
            )
        if aa.method != "blur":
            raise ConfigError(
                f"model.antialias.native=true supports method=blur (timm's BlurPool2d), not "
                f"{aa.method!r}: set native=false."
            )
        kwargs["aa_layer"] = timm_blurpool(aa.filt_size, aa.pad_mode)
    if name.startswith("timm:"):
        model = create_timm(name.removeprefix("timm:"), num_classes, in_chans, kwargs, hub)
    elif name.startswith("tv:"):
        model = create_torchvision(name.removeprefix("tv:"), num_classes, in_chans, kwargs, hub)
    else:
        arch = {k: cfg[k] for k in ARCH_KEYS} | {"head": cfg.head}
        arch["widths"] = list(arch["widths"])
        entrypoint = model_entrypoint(name)
        try:
            model = entrypoint(num_classes=num_classes, in_chans=in_chans, **arch, **kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"Could not build model '{name}': {err}") from None
    if cfg.small_input and name.startswith(EXTERNAL_PREFIXES):
        adapt_small_input(model, name)
    return model


def _input_size(cfg: DictConfig) -> int:
    """Image size for dry runs (skip_first): ``model.kwargs.input_size`` or 32."""
    return int(cfg.kwargs.get("input_size", 32))


def build(cfg_model: Any, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Network from ``cfg.model``: create, antialias (``model.antialias``), then load
    ``model.pretrained`` and ``model.init_from`` (a classifier head of another size is skipped
    and logged; every other tensor must match).

    Built-ins receive the architecture knobs of ``cfg.model`` and ``cfg.model.kwargs``;
    ``timm:``/``tv:`` models receive ``cfg.model.kwargs`` and, with ``small_input``, get a 3x3
    stride-1 stem without max-pool (built-ins are small-input networks already).
    """
    cfg = model_config(cfg_model)
    model = create(cfg, num_classes, in_chans)
    aa = cfg.antialias
    if aa.method != "none" and not aa.native:
        antialias(model, aa.method, aa.filt_size, aa.pad_mode, aa.skip_first, _input_size(cfg))
    for key in ("pretrained", "init_from"):
        path = cfg[key]
        if path and not (key == "pretrained" and from_hub(cfg)):
            result = load_weights(model, path, strict=True, allow_head_mismatch=True)
            if result.skipped:
                log.info("model.%s: classifier head not loaded (%s)", key, result.skipped)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _n_params(model: nn.Module) -> str:
    params = list(model.parameters())
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in params):
        return "lazy"
    return f"{sum(p.numel() for p in params) / 1e6:.3f}M"


def describe(name_or_cfg: Any = None, num_classes: int = 10) -> str:
    """Readable text for ``invlab models [NAME]``.

    No name: the registered built-ins with their parameter count and summary. A name or a model
    config: its parameter count and the antialiasing plan (``model.antialias`` of the config, or
    ``blur`` with filter 4 for a bare name).
    """
    if name_or_cfg is None or name_or_cfg == "":
        rows = []
        for name in list_models():
            fn = model_entrypoint(name)
            summary = ((fn.__doc__ or "").strip().splitlines() or [""])[0].rstrip(".")
            rows.append((name, _n_params(create(model_config(name=name), num_classes)), summary))
        return (
            _table(rows, ("model", "params", "description"))
            + "\n\nAlso any timm model as 'timm:<name>' and torchvision model as 'tv:<name>' "
            "(random init; model.pretrained=true for the library's own weights, or a local file)."
        )
    if isinstance(name_or_cfg, str):
        cfg = model_config(name=name_or_cfg)
        method, filt, pad, skip = "blur", 4, "reflect", False
    else:
        cfg = model_config(name_or_cfg)
        aa = cfg.antialias
        method = aa.method if aa.method != "none" else "blur"
        filt, pad, skip = aa.filt_size, aa.pad_mode, aa.skip_first
    model = create(cfg, num_classes)
    plan = antialias(model, method, filt, pad, skip, _input_size(cfg), dry_run=True)
    head = (
        f"{cfg.name}: {type(model).__name__}, {_n_params(model)} parameters "
        f"({num_classes} classes, small_input={cfg.small_input})\n"
        f"antialias plan (method={method}, filt_size={filt}, pad_mode={pad}, skip_first={skip}):\n"
    )
    if not plan:
        return head + "  no strided conv or pooling layer: nothing to rewrite."
    return head + _table(plan, ("module", "layer", "rewrite"))
