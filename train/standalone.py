"""Evaluate a saved model (our Lightning checkpoint, or timm/torchvision weights) as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from eval.report import write_json
from eval.runner import evaluate
from invlab.config import ConfigError, to_container
from invlab.provenance import collect_provenance
from models.checkpoint import lightning_state, require_file
from train.preprocessing import describe as describe_preprocessing


def default_device() -> torch.device:
    """The machine's accelerator when there is one (whatever its type), else the CPU."""
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def evaluate_checkpoint(
    checkpoint: str | Path | None,
    cfg: Any,
    out_dir: str | Path,
    *,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Build the model of ``cfg`` from ``checkpoint``, evaluate it, write the report and plots.

    ``checkpoint=None``: the model's own pretrained weights (``model.pretrained``). A Lightning
    checkpoint of ours (``state_dict`` keys ``net.*``) loads strictly into
    ``train.module.Classifier``; any other file is loaded into its ``net`` by
    ``models.load_weights`` (timm/torchvision weights for ``cfg.model.name``). Writes
    ``<out_dir>/invariance.json`` (with the ``config`` used; with ``eval.equivariance.enabled``
    also the per-layer profile under ``equivariance``) and the figures; returns the report,
    with its ``provenance``.
    """
    import models
    from train.data import build_datamodule
    from train.module import Classifier

    path = require_file(checkpoint) if checkpoint is not None else None
    # Read (and any problem reported) before the data is built.
    loaded = lightning_state(path) if path is not None else None
    dm = build_datamodule(cfg)
    dm.setup()
    if path is None:  # the library's own pretrained weights (model.pretrained)
        clf = Classifier(cfg, num_classes=dm.num_classes)
    elif loaded is not None:
        state, num_classes = loaded
        if num_classes is not None and int(num_classes) != dm.num_classes:
            raise ConfigError(
                f"Checkpoint '{path}' has {num_classes} classes but data.source="
                f"{cfg.data.source!r} has {dm.num_classes}; evaluate it on a source with the "
                f"same classes."
            )
        # The weights come from `checkpoint`: a fine-tuned run's init_from may be gone.
        clf = Classifier(cfg, num_classes=dm.num_classes, init_weights=False)
        clf.load_state_dict(state, strict=True)
    else:
        clf = Classifier(cfg, num_classes=dm.num_classes, init_weights=False)
        models.load_weights(clf.net, path)

    device = device if device is not None else default_device()
    report = evaluate(
        clf,
        dm,
        cfg.eval,
        image_size=int(cfg.data.image_size),
        device=device,
        progress=progress,
    )
    if cfg.eval.equivariance.enabled:  # the per-layer profile on the same splits
        from eval.equivariance import profile_splits

        report["equivariance"] = profile_splits(
            clf.to(device), dm, list(report["splits"]), cfg.eval, int(cfg.data.image_size)
        )
    report["checkpoint"] = str(path) if path is not None else f"pretrained: {cfg.model.name}"
    pre = describe_preprocessing(cfg)
    if pre is not None:  # a pretrained model's own input, and what the config overrode
        report["preprocessing"] = pre
    # The config that produced these numbers, so `invlab report` can group this evaluation
    # (e.g. eval.protocol=circular) with the runs it belongs to.
    report["config"] = to_container(cfg)
    # Step and epoch are read from the file when it is a Lightning checkpoint.
    report["provenance"] = collect_provenance(
        device=device, checkpoint=path.resolve() if path is not None else None
    )
    out = Path(out_dir)
    write_json(report, out / "invariance.json")
    if cfg.eval.plots:
        from eval.plots import save_plots

        save_plots(report, out, num_classes=dm.num_classes)
    return report
