"""A pretrained model's own input: its ``pretrained_cfg`` fills what the config leaves unset.

timm's pretrained weights expect one input size, normalisation and resize interpolation
(``pretrained_cfg``, with any ``pretrained_cfg_overlay`` applied). With ``data.preprocessing:
model`` (the default) and ``model.pretrained=true`` on a ``timm:`` model, ``load_config`` sets
``data.image_size``, ``data.mean``, ``data.std`` and ``data.crop_pct`` from it wherever no YAML
file and no override set them; a value the config does set wins (an override), and the report
records which came from where (:func:`describe`). ``data.preprocessing: config`` uses the
config's values only. Models without a ``pretrained_cfg`` (built-ins, torchvision, local
weights files) are unchanged.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from invlab.config import flatten

KEYS = ("image_size", "mean", "std", "crop_pct")  # data.<key>, from the model's pretrained_cfg


def explicit_keys(*sources: DictConfig) -> set[str]:
    """The dotted keys the given YAML files and overrides set (a section set as a whole counts
    for every key under it)."""
    keys: set[str] = set()
    for src in sources:
        keys |= set(flatten(OmegaConf.to_container(src, resolve=False)))  # type: ignore[arg-type]
    return keys


def _set_by(key: str, explicit: set[str]) -> bool:
    return any(key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in explicit)


def model_preprocessing(cfg: Any) -> dict[str, Any] | None:
    """The input the model's pretrained weights expect (see ``models.external``), or None for a
    model without a ``pretrained_cfg`` or with ``data.preprocessing: config``."""
    from models.factory import from_hub

    if str(cfg.data.get("preprocessing", "model")) != "model":
        return None
    name = str(cfg.model.name)
    if not name.startswith("timm:") or not from_hub(cfg.model):
        return None
    from models.external import pretrained_preprocessing

    kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True)
    return pretrained_preprocessing(name.removeprefix("timm:"), dict(kwargs))  # type: ignore[arg-type]


def _model_value(pre: dict[str, Any], key: str) -> Any:
    if key == "image_size":
        return int(pre["input_size"][-1])
    return float(pre[key]) if key == "crop_pct" else list(pre[key])


def apply_model_preprocessing(cfg: DictConfig, explicit: set[str]) -> None:
    """Set ``data.image_size/mean/std/crop_pct`` from the model's ``pretrained_cfg`` where
    ``explicit`` (the keys the user's files and overrides set) does not hold them."""
    pre = model_preprocessing(cfg)
    if pre is None:
        return
    for key in KEYS:
        if not _set_by(f"data.{key}", explicit):
            cfg.data[key] = _model_value(pre, key)


def describe(cfg: Any) -> dict[str, Any] | None:
    """For the report: the model's own preprocessing, the values used, and which keys the
    config overrode (None when the model has no ``pretrained_cfg`` in use)."""
    pre = model_preprocessing(cfg)
    if pre is None:
        return None
    used = {
        "image_size": int(cfg.data.image_size),
        "mean": [float(v) for v in cfg.data.mean],
        "std": [float(v) for v in cfg.data.std],
        "crop_pct": float(cfg.data.crop_pct),
    }
    return {
        "source": f"timm pretrained_cfg of {str(cfg.model.name).removeprefix('timm:')}",
        "model": pre,
        "used": used,
        "overridden_by_config": [k for k in KEYS if not _same(used[k], _model_value(pre, k))],
        # images are resized with antialiased bilinear interpolation whatever the model's
        # pretrained_cfg says (recorded under "model")
        "resize": "bilinear (antialiased)",
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))
    return abs(a - b) < 1e-6 if isinstance(a, float) else a == b
