"""The LightningModule: a classifier whose inputs stay uint8 until they reach the device.

On the device a batch becomes float in [0, 1], is augmented (training only), then normalised
inside ``forward``. So ``Classifier.forward`` takes unnormalised [0, 1] images: the same contract
the invariance evaluation uses for every model. The state dict holds ``net.*`` keys only.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import augment
import models
from invlab.config import Config, ConfigError, as_config, to_container
from invlab.suggest import close_matches
from train.finetune import freeze, lr_multipliers
from train.plugins import import_plugins

# timm optimizers that a plain training step on any machine cannot run, and why.
_NOT_OFFERED = {"adahessian": "needs second-order gradients (backward with create_graph=True)"}
_NOT_OFFERED_PREFIXES = {
    "bnb": "needs the bitsandbytes package and a CUDA device",
    "fused": "needs NVIDIA apex and a CUDA device",
}
LOOKAHEAD = "lookahead_"  # timm's prefix: wraps any offered optimizer in Lookahead


def _not_offered(name: str) -> str | None:
    """Why ``optim.optimizer`` refuses one of timm's names (None: it is offered)."""
    if name in _NOT_OFFERED:
        return _NOT_OFFERED[name]
    return next((why for pre, why in _NOT_OFFERED_PREFIXES.items() if name.startswith(pre)), None)


def optimizer_names() -> list[str]:
    """The optimizer names ``optim.optimizer`` accepts: timm's (``timm.optim.list_optimizers``)
    less those that need second-order gradients or optional CUDA packages; each may also be
    written ``lookahead_<name>``."""
    from timm.optim import list_optimizers

    return [n for n in list_optimizers() if _not_offered(n) is None]


def check_optimizer(name: str) -> None:
    """``ConfigError`` naming close matches unless ``name`` is an offered timm optimizer."""
    names = optimizer_names()
    base = name.removeprefix(LOOKAHEAD)
    if base in names:
        return
    if _not_offered(base) is not None:
        raise ConfigError(
            f"optim.optimizer={name!r} is one of timm's optimizers but {_not_offered(base)}: "
            f"choose another (e.g. sgd, adamw, lamb, lars)."
        )
    close = close_matches(base.lower(), names, n=3)
    others = f" (or {', '.join(repr(c) for c in close[1:])})" if len(close) > 1 else ""
    hint = f" Did you mean {close[0]!r}{others}?" if close else ""
    raise ConfigError(
        f"Unknown optimizer {name!r} for 'optim.optimizer'.{hint} Choose one of timm's "
        f"(lower case, optionally prefixed '{LOOKAHEAD}'): {', '.join(names)}."
    )


def param_groups(
    net: nn.Module, cfg_optim: Any, lr_mults: dict[str, float]
) -> list[dict[str, Any]]:
    """timm's weight-decay groups (no decay on biases, norm parameters and the model's
    ``no_weight_decay()`` names; frozen parameters left out), each split by learning-rate
    multiplier (``optim.lr_mult``): every group carries its ``lr`` and ``lr_mult``."""
    from timm.optim import param_groups_weight_decay

    skip = getattr(net, "no_weight_decay", set)()
    names = {id(p): n for n, p in net.named_parameters()}
    groups = []
    for base in param_groups_weight_decay(net, cfg_optim.weight_decay, no_weight_decay_list=skip):
        by_mult: dict[float, list[nn.Parameter]] = {}
        for p in base["params"]:
            by_mult.setdefault(lr_mults.get(names[id(p)], 1.0), []).append(p)
        for mult, params in sorted(by_mult.items()):
            groups.append({**base, "params": params, "lr": cfg_optim.lr * mult, "lr_mult": mult})
    return groups


def build_optimizer(
    net: nn.Module, cfg_optim: Any, lr_mults: dict[str, float]
) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` on :func:`param_groups`: ``optim.optimizer`` with
    ``optim.lr``, ``optim.weight_decay``, ``optim.momentum`` (optimizers with momentum) and
    ``optim.nesterov`` (``sgd``: torch's SGD, as before)."""
    from timm.optim import create_optimizer_v2

    o = cfg_optim
    extra = {"nesterov": o.nesterov} if o.optimizer.removeprefix(LOOKAHEAD) == "sgd" else {}
    return create_optimizer_v2(
        param_groups(net, o, lr_mults),
        opt=o.optimizer,
        lr=o.lr,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        **extra,
    )


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with non-persistent buffers (no state-dict keys)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _lr_lambda(cfg_optim: Any, total_steps: int, steps_per_epoch: int):
    """Multiplier per optimizer step: linear warm-up, then cosine / step / constant."""
    warmup = int(round(cfg_optim.warmup_epochs * steps_per_epoch))
    milestones = [int(m * total_steps) for m in cfg_optim.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg_optim.schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg_optim.schedule == "step":
            return cfg_optim.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return factor


class Classifier(L.LightningModule):
    """Image classifier for invariance studies; ``config`` is a plain dict or a ``Config``."""

    def __init__(
        self, config: dict[str, Any] | DictConfig, num_classes: int, init_weights: bool = True
    ) -> None:
        """``init_weights=False`` skips ``model.pretrained``/``init_from`` (the weights are about
        to be restored from a checkpoint, and the files they came from may be gone)."""
        super().__init__()
        # Typed again but not re-validated: the config passed load_config when the run started.
        cfg: Config = as_config(to_container(config))
        import_plugins(cfg.plugins)  # a checkpoint of a plug-in model needs its registration
        # Plain containers only: a DictConfig in hparams breaks weights_only checkpoint loading.
        # logger=False: loggers get the config once, from train.loggers (not again as "config").
        self.save_hyperparameters(
            {"config": to_container(cfg), "num_classes": num_classes}, logger=False
        )
        self.cfg = cfg
        self.num_classes = num_classes
        self.normalize = Normalize(list(cfg.data.mean), list(cfg.data.std))
        # init_from is loaded here, not by models.build, to keep its loading report.
        drop = {"init_from": None} if init_weights else {"init_from": None, "pretrained": None}
        self.net = models.build(OmegaConf.merge(cfg.model, drop), num_classes=num_classes)
        self.load_result: models.LoadResult | None = None
        if init_weights and cfg.model.init_from:
            self.load_result = models.load_weights(
                self.net,
                cfg.model.init_from,
                strict=cfg.model.init_strict,
                allow_head_mismatch=True,
            )
        self._frozen_norms = freeze(self.net, list(cfg.model.freeze))
        for norm in self._frozen_norms:  # Lightning keeps each submodule's mode as it finds it
            norm.eval()
        self._lr_groups = lr_multipliers(self.net, dict(cfg.optim.lr_mult))
        self.augment = augment.build(cfg.augment, num_classes=num_classes)
        self.eval_split_names: list[str] = []
        self.eval_prefix = ""  # test metrics are logged as <prefix><split>/accuracy
        if cfg.model.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if cfg.model.compile:  # in place: compiled on first call, state-dict keys unchanged
            self.net.compile(backend=cfg.model.compile_backend)

    @property
    def load_report(self) -> dict[str, Any] | None:
        """What ``model.init_from`` loaded (None without it) and which parameters
        ``model.freeze`` keeps frozen: ``load_report.json``."""
        if self.load_result is None:
            return None
        frozen = [n for n, p in self.net.named_parameters() if not p.requires_grad]
        return {
            "init_from": str(self.cfg.model.init_from),
            **self.load_result.as_dict(),
            "frozen": frozen,
        }

    def load_summary(self) -> str:
        """One line about ``model.init_from`` for the run's notes."""
        assert self.load_result is not None
        return f"Initialised from {self.cfg.model.init_from}: {self.load_result.summary()}"

    def train(self, mode: bool = True) -> Classifier:
        """``nn.Module.train``, except that BatchNorm layers of frozen parameters stay in eval."""
        super().train(mode)
        for norm in self._frozen_norms:
            norm.eval()
        return self

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, *args: Any, **kwargs: Any
    ) -> Classifier:
        """Rebuild from a checkpoint; its weights replace any ``init_from``/``pretrained``."""
        kwargs.setdefault("init_weights", False)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Logits for float images in [0, 1], shape [B, 3, H, W]."""
        if self.cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(self.normalize(x))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        if self.trainer is not None and self.trainer.training:
            if self.augment.mixes:  # mixup/cutmix: the targets become probabilities
                return self.augment.with_targets(x, labels)
            x = self.augment(x)
        return x, labels

    def on_train_epoch_start(self) -> None:
        # Distinct per rank (seed_everything gives all ranks one seed) and per epoch, so a run
        # resumed at an epoch boundary draws the same augmentations as an uninterrupted one.
        seed = self.cfg.seed * 1_000_003 + self.global_rank * 10_007 + self.current_epoch
        self.augment.reseed(seed)

    # ---------------------------------------------------------------------------- steps
    def _loss_acc(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Cross-entropy and accuracy. Targets are class indices, or probabilities [B, K] from
        a mixing preset: then soft-target cross-entropy, with label smoothing applied to the
        mixed targets (``(1 - eps) * targets + eps / K``, as timm's ``mixup_target``) and the
        accuracy of the class with the largest weight."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.optim.label_smoothing)
        if y.is_floating_point():
            y = y.argmax(dim=1)
        acc = (logits.argmax(dim=1) == y).float().mean()
        return loss, acc

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, acc = self._loss_acc(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", acc, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, acc = self._loss_acc(batch)
        n = batch[1].shape[0]
        self.log("val/loss", loss, batch_size=n, sync_dist=True)
        self.log("val/accuracy", acc, batch_size=n, sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0):
        loss, acc = self._loss_acc(batch)
        split = self.eval_split_names[dataloader_idx] if self.eval_split_names else "test"
        n = batch[1].shape[0]
        kw = {"batch_size": n, "sync_dist": True, "add_dataloader_idx": False}
        self.log(f"{self.eval_prefix}{split}/loss", loss, **kw)
        self.log(f"{self.eval_prefix}{split}/accuracy", acc, **kw)

    # ------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        opt = build_optimizer(self.net, o, self._lr_groups)
        param_groups = opt.param_groups
        total = int(self.trainer.estimated_stepping_batches)
        # Known once estimated_stepping_batches has loaded the train dataloader.
        batches = self.trainer.num_training_batches
        accumulate = self.trainer.accumulate_grad_batches
        steps_per_epoch = max(1, int(batches) // accumulate) if math.isfinite(batches) else total
        if o.schedule == "onecycle":
            if total < 4:
                raise ConfigError(f"optim.schedule=onecycle needs at least 4 steps, got {total}.")
            warm = o.warmup_epochs * steps_per_epoch if o.warmup_epochs > 0 else 0.3 * total
            # OneCycleLR needs at least one step in each phase.
            pct_start = min(max(warm, 2.0), total - 2.0) / total
            # Momentum is cycled too, where the optimizer has one (not adagrad, adafactor, ...).
            cycle = "momentum" in opt.defaults or "betas" in opt.defaults
            sched: Any = torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=[g["lr"] for g in param_groups],
                total_steps=total,
                pct_start=pct_start,
                cycle_momentum=cycle,
            )
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(o, total, steps_per_epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
