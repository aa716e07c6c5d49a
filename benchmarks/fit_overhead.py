"""Claim: fit's training step path runs at >= 0.9 of a hand-written PyTorch loop's images/s.

Both train the same model (``configs/default.yaml``), on the same uint8 training split, with the
same augmentation (``--augment``), SGD and cosine schedule, no evaluation. ``fit``'s path is the
Lightning Trainer with invlab's Classifier and datamodule (CSV logging every
``trainer.log_every_n_steps``); the hand-written loop is ``for x, y in batches: augment, forward,
backward, step``. Each runs with the DataLoader path (``data.on_device=false``) and the
device-resident path (``data.on_device=true``). A trial trains every variant in turn for
``--epochs`` epochs and times all but the first (warm-up); min / median / max over the trials.

    .venv/bin/python benchmarks/fit_overhead.py [--trials 3] [--epochs 2] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from _common import interleaved, machine, spread, synchronize
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

import augment
import models
from invlab.config import Config, to_container
from train.config import load_config
from train.data import build_datamodule
from train.module import Classifier, Normalize

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
QUICK = ["data.n_train=96", "data.n_val=16", "data.batch_size=32", "model.widths=[8,16]"] + [
    f"data.heldout.{s}.n=8" for s in ("typical", "position", "scale", "background", "atypical")
]


class EpochTimer(L.Callback):
    """Images and seconds of every training epoch after the first."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch > 0:
            self.images += len(batch[1])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        if trainer.current_epoch > 0:
            self.seconds += time.perf_counter() - self._start


def fit_rate(cfg: Config, dm: Any, workdir: str) -> float:
    """Images/s of Lightning's training loop as ``invlab fit`` configures it (no evaluation)."""
    L.seed_everything(cfg.seed, verbose=False)
    model = Classifier(cfg, num_classes=dm.num_classes)
    timer = EpochTimer()
    kwargs = to_container(cfg.trainer)
    trainer = L.Trainer(
        **kwargs,
        logger=CSVLogger(workdir, name="bench"),
        callbacks=[timer],
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=workdir,
    )
    trainer.fit(model, datamodule=dm)
    return timer.images / timer.seconds


def raw_rate(cfg: Config, images: torch.Tensor, labels: torch.Tensor, on_device: bool) -> float:
    """Images/s of a minimal loop with the same model, data, augmentation and optimizer (and
    ``model.channels_last``, ``model.compile`` and bf16 autocast as ``trainer.precision`` says)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    net = models.build(cfg.model, num_classes=int(labels.max()) + 1).to(device)
    if cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.model.compile:
        net.compile(backend=cfg.model.compile_backend)
    bf16 = str(cfg.trainer["precision"]).startswith("bf16")  # as Lightning's bf16-mixed
    normalize = Normalize(list(cfg.data.mean), list(cfg.data.std)).to(device)
    aug = augment.build(cfg.augment)
    o, bs, epochs = cfg.optim, int(cfg.data.batch_size), int(cfg.trainer["max_epochs"])
    opt = torch.optim.SGD(
        net.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
        weight_decay=o.weight_decay,
    )  # fmt: skip
    total = epochs * math.ceil(len(labels) / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    if on_device:
        x_all, y_all = images.to(device), labels.to(device)

        def batches():
            idx = torch.randperm(len(y_all), device=device)
            for i in idx.split(bs):
                yield x_all[i], y_all[i]
    else:
        loader = DataLoader(
            TensorDataset(images, labels), bs, shuffle=True, pin_memory=device.type == "cuda"
        )

        def batches():
            return iter(loader)

    seen, spent = 0, 0.0
    for epoch in range(epochs):
        synchronize(device)
        start = time.perf_counter()
        for x, y in batches():
            x = x.to(device, non_blocking=True).float().div_(255)
            y = y.to(device, non_blocking=True)
            x = normalize(aug(x))
            if cfg.model.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if epoch > 0:
                seen += len(y)
        synchronize(device)
        if epoch > 0:
            spent += time.perf_counter() - start
    return seen / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="per trial; the first is warm-up")
    parser.add_argument("--augment", default="translate,flip", help="augment.presets")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny data and model, one trial")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer`.*")
    trials = 1 if args.quick else args.trials
    overrides = [
        f"trainer.max_epochs={max(2, args.epochs)}",
        f"augment.presets=[{args.augment}]",
        "eval.enabled=false",
        "logger.wandb.mode=disabled",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *(QUICK if args.quick else []),
    ]
    cfgs = {p: load_config(DEFAULT_YAML, overrides=[*overrides, f"data.on_device={p}"])
            for p in ("false", "true")}  # fmt: skip
    dms = {p: build_datamodule(c) for p, c in cfgs.items()}
    for dm in dms.values():
        dm.setup("fit")
    train = dms["true"].split("train")
    cfg = cfgs["true"]
    print(machine())
    print(
        f"claim: fit's training step path >= 0.9 x a hand-written loop; default model "
        f"{list(cfg.model.widths)}, {len(train)} images of {cfg.data.image_size} px, batch "
        f"{cfg.data.batch_size}, augment {args.augment}; {trials} interleaved trial(s) of "
        f"{cfg.trainer['max_epochs']} epochs (first untimed); img/s min / median / max"
    )
    with tempfile.TemporaryDirectory() as workdir:
        rates = interleaved(
            {
                "fit, DataLoader": lambda: fit_rate(cfgs["false"], dms["false"], workdir),
                "raw loop, DataLoader": lambda: raw_rate(cfg, train.images, train.labels, False),
                "fit, on device": lambda: fit_rate(cfgs["true"], dms["true"], workdir),
                "raw loop, on device": lambda: raw_rate(cfg, train.images, train.labels, True),
            },
            trials,
        )
    print(f"{'variant':<24}{'img/s (min / median / max)':>30}")
    for name, r in rates.items():
        print(f"{name:<24}{spread(r):>30}")

    def ratio(a: str, b: str) -> str:
        per_trial = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        return f"{statistics.median(per_trial):.3f} (trials {spread(per_trial, '{:.3f}')})"

    print(f"fit / raw loop, DataLoader:       {ratio('fit, DataLoader', 'raw loop, DataLoader')}")
    print(f"fit / raw loop, on device:        {ratio('fit, on device', 'raw loop, on device')}")
    print(f"fit on device / fit DataLoader:   {ratio('fit, on device', 'fit, DataLoader')}")


if __name__ == "__main__":
    main()
