"""``invlab export``: a checkpoint's model weights as plain safetensors plus a JSON of its config.

The weights carry no key prefix, so ``timm.create_model(**json["timm"]["kwargs"])`` — that is
``pretrained=True``, ``num_classes=N`` and a ``pretrained_cfg_overlay`` holding the file, the
number of classes, the input size and the normalisation the model was trained with — loads
those of a ``timm:`` model built without invlab's rewrites (``model.small_input`` off, no
antialias rewrite), and ``timm.data.resolve_data_config`` then gives invlab's mean/std instead
of ImageNet's. ``invlab eval OUT.safetensors`` reads the JSON to evaluate the model as itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save

from invlab.config import ConfigError
from invlab.files import atomic_write_bytes, atomic_write_text

from .checkpoint import CheckpointError, lightning_state, read_config, require_file, strip_prefixes


def sidecar_path(out: str | Path) -> Path:
    """The JSON written next to ``out``: ``model.safetensors`` -> ``model.json``."""
    return Path(out).with_suffix(".json")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix != ".safetensors":
        raise ConfigError(
            f"Export target '{out}' must end in .safetensors (e.g. "
            f"{out.with_suffix('.safetensors')})."
        )
    for path in (out, sidecar_path(out)):
        if path.exists() and not overwrite:
            raise ConfigError(
                f"'{path}' already exists. Choose another output path, or replace it with "
                f"--overwrite."
            )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(
            f"Cannot write '{out}': {parent} is not a writable folder. Choose another output path."
        )


def read_sidecar(weights: str | Path) -> dict[str, Any] | None:
    """The JSON ``invlab export`` wrote beside ``weights`` (None when there is none)."""
    path = sidecar_path(weights)
    if Path(weights).suffix != ".safetensors" or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"'{path}' (written beside {weights}) is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(
            f"'{path}' is not the JSON that `invlab export` writes (no 'model' block). Remove it, "
            f"or pass the model config explicitly."
        )
    return data


def sidecar_config(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The config keys an export's JSON fixes: the model and its input (size, mean, std)."""
    data = {k: v for k, v in (sidecar.get("input") or {}).items() if k != "note" and v is not None}
    return {"model": sidecar["model"], "data": data}


def _timm_arguments(
    model: dict[str, Any], out: Path, num_classes: int, data: dict[str, Any]
) -> dict[str, Any]:
    """``timm.create_model`` arguments that load the exported weights, or why there are none."""
    name = str(model.get("name", ""))
    if not name.startswith("timm:"):
        return {"loadable": False, "why": f"'{name}' is not a timm model"}
    aa = model.get("antialias") or {}
    rewrites = []
    if model.get("small_input"):
        rewrites.append("model.small_input=true rewrote the stem")
    if aa.get("method", "none") != "none":
        rewrites.append("model.antialias changed the layers")
    if rewrites:
        return {"loadable": False, "why": "; ".join(rewrites)}
    overlay: dict[str, Any] = {"file": str(out.resolve()), "num_classes": num_classes}
    if data.get("image_size"):
        overlay["input_size"] = [3, int(data["image_size"]), int(data["image_size"])]
    for key in ("mean", "std"):  # else timm would normalise with ImageNet's statistics
        if data.get(key):
            overlay[key] = [float(v) for v in data[key]]
    return {
        "loadable": True,
        "model_name": name.removeprefix("timm:"),
        "kwargs": {
            **dict(model.get("kwargs") or {}),
            "num_classes": num_classes,
            "pretrained": True,
            "pretrained_cfg_overlay": overlay,
        },
    }


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write the model weights of an ``invlab fit`` checkpoint to ``out`` (safetensors, keys as in
    the bare network) and its model config to ``out`` with suffix ``.json``; returns both paths.

    Everything is checked before anything is written; both files are written atomically.
    """
    ckpt, out = require_file(checkpoint), Path(out)
    _check_out(out, overwrite)
    config = read_config(ckpt)
    loaded = lightning_state(ckpt)
    if config is None or loaded is None:
        raise CheckpointError(
            f"'{ckpt}' is not a checkpoint written by `invlab fit` (no stored config and 'net.*' "
            "weights), so there is no model config to export. Give runs/<name>/checkpoints/"
            "last.ckpt (a bare weights file needs no export)."
        )
    state, num_classes = loaded
    weights = {
        strip_prefixes(k.removeprefix("net.")): v.detach().cpu().contiguous().clone()
        for k, v in state.items()
    }
    data = config.get("data") or {}
    sidecar = {
        "weights": out.name,
        "checkpoint": str(ckpt.resolve()),
        "num_classes": num_classes,
        "model": config.get("model"),
        "input": {
            "image_size": data.get("image_size"),
            "mean": data.get("mean"),
            "std": data.get("std"),
            "note": "float RGB in [0, 1], normalised with (x - mean) / std before the network",
        },
        "timm": _timm_arguments(config.get("model") or {}, out, int(num_classes or 0), data),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # Serialised in memory, then written like every other file (atomic, the user's umask).
    atomic_write_bytes(out, save(weights, metadata={"format": "pt"}))
    json_path = atomic_write_text(sidecar_path(out), json.dumps(sidecar, indent=2) + "\n")
    return out, json_path
