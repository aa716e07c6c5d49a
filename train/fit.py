"""``fit(cfg) -> FitResult``: the training entry point as a plain function (the CLI wraps it).

Run directory ``<out_dir>/<name>/``: ``config.yaml``, ``checkpoints/{last,best-*}.ckpt``,
``csv/metrics.csv``, ``reports/`` (invariance JSON and plots, augmentation samples),
``metrics.json``, and ``wandb/`` for offline W&B runs.

``checkpoints/last.ckpt`` always holds the newest weights (those ``metrics.json`` reports and
``--resume`` continues); ``checkpoints/best-epochNNN.ckpt`` the best by ``val/accuracy``.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from eval.report import write_json
from invlab.config import Config, ConfigError, save_config, to_container
from invlab.provenance import checkpoint_position, collect_provenance, relative_path
from train.data import build_datamodule
from train.divergence import StopOnNonFiniteLoss
from train.ema import EMAWeights
from train.loggers import build_loggers, close_loggers
from train.module import Classifier
from train.preprocessing import describe as describe_preprocessing
from train.rundir import DirLock, inside, run_directory
from train.signals import Interrupted, record_signals


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict[str, Any]
    last_checkpoint: Path
    best_checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)

    def accuracy(self, split: str) -> float:
        return float(self.metrics["splits"][split]["accuracy"])


class LastCheckpoint(ModelCheckpoint):
    """Writes ``<dirpath>/last.ckpt`` at the end of every training epoch and when training ends.

    Lightning's own ``ModelCheckpoint`` (``monitor=None``, one file named "last", saved in
    ``on_train_epoch_end``, after that epoch's validation) plus a save in ``on_train_end`` should
    training end without one. Needed because Lightning 2.6's ``save_last=True`` rewrites
    ``last.ckpt`` only together with a new best checkpoint. Put it after the best
    ``ModelCheckpoint`` so that ``last.ckpt`` holds that callback's updated state.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            save_on_train_epoch_end=True,  # also after epochs without validation
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # Skipped when no step was taken since this callback's last save (the usual case).
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


def _checkpoint_block(path: Path | None, run_dir: Path) -> dict[str, Any] | None:
    """``{"path" (relative to run_dir), "global_step", "epoch"}`` read from a checkpoint file."""
    if path is None or not path.is_file():
        return None
    step, epoch = checkpoint_position(path)
    return {"path": relative_path(path, run_dir), "global_step": step, "epoch": epoch}


def global_rank() -> int:
    """This process's rank as Lightning reads it from the launcher's environment (0 alone)."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def prepare_run_dir(
    cfg: Config, *, resume: bool, overwrite: bool, model: nn.Module | None = None
) -> tuple[Path, Path | None, DirLock | None]:
    """Claim the run directory: ``(run_dir, checkpoint to resume or None, the lock held)``.

    Everything is checked before anything is written: the name, the checkpoint to resume (it
    exists and fits ``model``), and that ``--overwrite`` would not delete an input of this run.
    The lock is then taken (a second writer is refused), and only then is an earlier run
    replaced. Under DDP every rank runs ``fit``; only rank 0 checks, locks, replaces or creates
    the directory (the other ranks must not delete its files).
    """
    if resume and overwrite:
        raise ConfigError("Choose one of --resume and --overwrite, not both.")
    run_dir = run_directory(cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    if global_rank() != 0:
        _make_dir(run_dir)
        return run_dir, last if resume else None, None
    # Read-only checks first (nothing written if they fail), again once the lock is held.
    _check_claim(cfg, run_dir, resume=resume, overwrite=overwrite, model=model)
    _make_dir(run_dir.parent)  # out_dir, which holds the lock file
    lock = DirLock(run_dir).acquire()
    try:
        _check_claim(cfg, run_dir, resume=resume, overwrite=overwrite, model=None)
        if resume:
            return run_dir, last, lock
        if _holds_run(run_dir):
            shutil.rmtree(run_dir)
        _make_dir(run_dir)
    except BaseException:
        lock.release()
        raise
    return run_dir, None, lock


def _holds_run(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").exists() or (run_dir / "checkpoints").exists()


def _check_claim(
    cfg: Config, run_dir: Path, *, resume: bool, overwrite: bool, model: nn.Module | None
) -> None:
    """Whether this run may take ``run_dir`` as asked; reads only."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        # Lightning's ckpt_path="last" silently starts from scratch when nothing is found.
        if not last.exists():
            raise ConfigError(
                f"Cannot resume: no checkpoint at {last}. Check `out_dir` and `name`, or start "
                f"a new run without --resume."
            )
        if model is not None:
            check_resumable(last, model)
    elif _holds_run(run_dir):
        if not overwrite:
            raise ConfigError(
                f"Run directory {run_dir} already holds a run. Choose another name (name=...), "
                f"continue it with --resume, or replace it with --overwrite."
            )
        _check_inputs_outside(cfg, run_dir)


def _check_inputs_outside(cfg: Config, run_dir: Path) -> None:
    """``--overwrite`` deletes ``run_dir``: never when this run reads a file inside it."""
    for key in ("init_from", "pretrained"):
        value = cfg.model[key]
        if value and run_dir.exists() and inside(value, run_dir):
            raise ConfigError(
                f"--overwrite would delete {run_dir}, which holds this run's input "
                f"model.{key}={value}. Give the new run another name (name=...)."
            )


def check_resumable(checkpoint: Path, model: nn.Module) -> None:
    """The checkpoint's weights fit ``model`` exactly (same keys and shapes), read before
    anything of the run is touched; else a ConfigError listing the differences."""
    import torch

    try:
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ConfigError(f"Cannot resume: {checkpoint} cannot be read ({err}).") from None
    state = stored.get("state_dict", {}) if isinstance(stored, dict) else {}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} -> {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [
            f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape", shapes),
            )
            if items
        ]
        raise ConfigError(
            f"Cannot resume {checkpoint}: its weights do not fit the configured model ("
            f"{'; '.join(parts)}). Resume with the run's own model settings (drop the model.* "
            f"overrides), or start a new run under another name."
        )


def _make_dir(run_dir: Path) -> None:
    """``mkdir -p`` with a ConfigError naming ``out_dir`` when the file system refuses."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"Cannot create the run directory {run_dir}: {err.strerror or err}. Set out_dir=... "
            f"to a writable folder (it is created if missing)."
        ) from None


def check_trainer(trainer_kwargs: dict[str, Any]) -> None:
    """Let Lightning judge the ``trainer`` settings (accelerator, devices, strategy, precision)
    on a throwaway Trainer, before the run dir or a W&B run exists: ``ConfigError`` if it objects.
    """
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its "GPU available" lines come again with the real one
    try:
        L.Trainer(**trainer_kwargs, logger=False, enable_checkpointing=False)
    except (MisconfigurationException, ImportError, TypeError, ValueError, RuntimeError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(
            f"Lightning rejected the trainer settings: {text} Fix the trainer.* keys (e.g. "
            f"trainer.accelerator=auto, trainer.devices=1) or see `invlab config` for the values."
        ) from None
    finally:
        quiet.setLevel(level)


def check_schedule(cfg: Config, n_train: int, trainer_kwargs: dict[str, Any]) -> None:
    """``optim.schedule=onecycle`` needs at least 4 optimizer steps (one in each phase): checked
    from the data and the trainer settings before the run dir exists (the module checks the
    exact count again once Lightning knows it)."""
    if cfg.optim.schedule != "onecycle":
        return
    batches = math.ceil(n_train / int(cfg.data.batch_size))
    limit = trainer_kwargs.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    per_epoch = batches // int(trainer_kwargs.get("accumulate_grad_batches") or 1)
    epochs = trainer_kwargs.get("max_epochs")
    steps = per_epoch * (1000 if epochs is None or epochs < 0 else int(epochs))
    max_steps = trainer_kwargs.get("max_steps")
    if max_steps is not None and max_steps > 0:
        steps = min(steps, int(max_steps))
    if steps < 4:
        raise ConfigError(
            f"optim.schedule=onecycle needs at least 4 optimizer steps, but this run makes {steps} "
            f"({n_train} training images, data.batch_size={cfg.data.batch_size}, "
            f"trainer.max_epochs={epochs}). Train longer (trainer.max_epochs), use a smaller "
            f"data.batch_size, or choose optim.schedule=cosine."
        )


def _augment_summary(cfg: Config) -> dict[str, Any]:
    """What training augmentation did, for reports (the fill decides what borders looked like)."""
    a = cfg.augment
    shifts = "translate" in a.presets
    return {
        "presets": list(a.presets),
        "ops": [dict(op) for op in a.ops],
        "max_shift_px": int(a.max_shift_px) if shifts else None,
        "pad_fill": str(a.pad_fill) if shifts else None,
    }


def _augment_samples(model: Classifier, dm: Any, run_dir: Path, loggers: list[Any]) -> None:
    """Save (and log to W&B) a grid of original vs augmented training images."""
    cfg = model.cfg
    if not (cfg.augment.presets or cfg.augment.ops):
        return
    from augment import show

    images = dm.split("train").images[:8]
    path = show.save_grid(images, model.augment, run_dir / "reports" / "augment_samples.png")
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key="augment/samples", images=[str(path)])


def fit(
    cfg: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> FitResult:
    """Train ``cfg``, evaluate accuracy (and invariance) on val and the held-out splits, save it.

    ``resume`` continues ``<run_dir>/checkpoints/last.ckpt``; ``overwrite`` replaces an existing
    run directory; ``callbacks`` are added to invlab's own.
    """
    with record_signals() as received:
        try:
            dm, trainer_kwargs = _check_before_writing(cfg)
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            # Built before the run dir: init_from, model.freeze and optim.lr_mult are checked.
            model = Classifier(cfg, num_classes=dm.num_classes)
            run_dir, ckpt_path, lock = prepare_run_dir(
                cfg, resume=resume, overwrite=overwrite, model=model
            )
            try:
                return _fit_in(
                    cfg, dm, trainer_kwargs, model, run_dir, ckpt_path, resume, callbacks
                )
            finally:
                if lock is not None:
                    lock.release()
        except (SystemExit, KeyboardInterrupt):
            if received:
                raise Interrupted(received[-1], _interrupted_note(cfg, received[-1])) from None
            raise


def _interrupted_note(cfg: Config, signum: int) -> str:
    """What a stopped run left: where it can be resumed from."""
    name = signal.Signals(signum).name
    last = run_directory(cfg) / "checkpoints" / "last.ckpt"
    if last.is_file():
        step, epoch = checkpoint_position(last)
        return (
            f"Stopped by {name}; no metrics.json was written. {last} holds the last finished "
            f"epoch (epoch {epoch}, step {step}): continue with --resume (a sweep resumes it)."
        )
    return f"Stopped by {name} before the first epoch finished; nothing to resume."


def _fit_in(
    cfg: Config,
    dm: Any,
    trainer_kwargs: dict[str, Any],
    model: Classifier,
    run_dir: Path,
    ckpt_path: Path | None,
    resume: bool,
    callbacks: Sequence[L.Callback],
) -> FitResult:
    """Train and evaluate in a claimed run directory; loggers are closed whatever happens."""
    notes = [*dm.notes, *_write_run_header(cfg, run_dir, model)]
    loggers, logger_notes = build_loggers(cfg, run_dir, rank=global_rank(), resume=resume)
    notes += logger_notes
    status = "failed"
    try:
        _log_parameter_counts(model, loggers)
        run = _RunCallbacks.build(cfg, dm, run_dir, callbacks, with_lr=bool(loggers))
        trainer = L.Trainer(
            **trainer_kwargs,
            default_root_dir=str(run_dir),
            logger=loggers or False,
            callbacks=run.all,
        )
        if trainer.is_global_zero:
            _save_samples(model, dm, run_dir, loggers)
        splits, accuracies = _train_and_test(trainer, model, dm, ckpt_path, resume)
        if run.ema is not None:  # the same splits once more, with the raw weights
            with run.ema.raw_weights(model):
                accuracies.update(_test(trainer, model, dm, splits, prefix=RAW_PREFIX))
        metrics = _metrics(cfg, dm, trainer, run, splits, accuracies)
        if trainer.is_global_zero:
            write_json(metrics, run_dir / "metrics.json")
            _log_final(loggers, metrics, trainer.global_step)
        status = "success"
    except (KeyboardInterrupt, SystemExit):
        status = "interrupted"
        raise
    finally:
        close_loggers(loggers, status)
    return FitResult(run_dir, metrics, run.last, run.best, notes)


def _check_before_writing(cfg: Config) -> tuple[Any, dict[str, Any]]:
    """Data (every split rendered), evaluation and trainer settings, before anything is written."""
    run_directory(cfg)  # the name, before the data is built
    dm = build_datamodule(cfg)
    dm.setup("fit")
    if cfg.eval.enabled:
        from eval.runner import preflight

        preflight(cfg.eval, dm, cfg.data.image_size)
    trainer_kwargs = to_container(cfg.trainer)
    if cfg.data.n_val == 0:
        trainer_kwargs.setdefault("limit_val_batches", 0)
    check_trainer(trainer_kwargs)
    check_schedule(cfg, len(dm.split("train").labels), trainer_kwargs)
    return dm, trainer_kwargs


def _write_run_header(cfg: Config, run_dir: Path, model: Classifier) -> list[str]:
    """``config.yaml`` and ``load_report.json`` (rank 0); the notes about what was loaded."""
    if global_rank() != 0:
        return []
    save_config(cfg, run_dir / "config.yaml")
    if model.load_report is None:
        return []
    write_json(model.load_report, run_dir / "load_report.json")
    return [f"{model.load_summary()}; details in {run_dir / 'load_report.json'}."]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameters (``model.freeze`` changes the second)."""
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def _log_parameter_counts(model: Classifier, loggers: list[Any]) -> None:
    counts = parameter_counts(model.net)
    for logger in loggers:
        logger.log_hyperparams({"parameters": counts})


@dataclass
class _RunCallbacks:
    """invlab's callbacks of one run, in the order they must run."""

    checkpoint: ModelCheckpoint
    last: Path
    monitor: Any
    all: list[Any]
    ema: EMAWeights | None = None

    @property
    def best(self) -> Path | None:
        return Path(self.checkpoint.best_model_path) if self.checkpoint.best_model_path else None

    @classmethod
    def build(
        cls,
        cfg: Config,
        dm: Any,
        run_dir: Path,
        extra: Sequence[L.Callback],
        with_lr: bool,
    ) -> _RunCallbacks:
        ckpt_dir = run_dir / "checkpoints"
        checkpoint = ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-epoch{epoch:03d}",
            auto_insert_metric_name=False,
            monitor="val/accuracy" if cfg.data.n_val > 0 else None,
            mode="max",
            save_top_k=1,
        )
        # Order matters: last.ckpt is written after the best callback updated its state, and
        # the EMA callback puts the average in place before the monitor's final evaluation.
        callbacks: list[Any] = [
            StopOnNonFiniteLoss(ckpt_dir / "last.ckpt"),
            checkpoint,
            LastCheckpoint(ckpt_dir),
        ]
        ema = None
        if cfg.optim.ema.enabled:
            ema = EMAWeights(cfg.optim.ema.decay, checkpoint=ckpt_dir / "last.ckpt")
            callbacks.append(ema)
        callbacks += extra
        monitor = None
        if cfg.eval.enabled:
            from eval.callback import InvarianceMonitor

            context = {"data": dm.split_info(), "augment": _augment_summary(cfg)}
            if ema is not None:
                context["weights"] = "ema"  # the raw weights' report says "raw"
            monitor = InvarianceMonitor(
                cfg.eval,
                image_size=cfg.data.image_size,
                out_dir=run_dir,
                checkpoint=ckpt_dir / "last.ckpt",
                context=context,
                other_weights=None if ema is None else {"raw": ema.raw_weights},
            )
            callbacks.append(monitor)
        if with_lr:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return cls(checkpoint, ckpt_dir / "last.ckpt", monitor, callbacks, ema)


def _save_samples(model: Classifier, dm: Any, run_dir: Path, loggers: list[Any]) -> None:
    from train.data.show import save_split_grid

    path = save_split_grid(dm, run_dir / "reports" / "data_samples.png")
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key="data/samples", images=[str(path)])
    _augment_samples(model, dm, run_dir, loggers)


def _train_and_test(
    trainer: L.Trainer, model: Classifier, dm: Any, ckpt_path: Path | None, resume: bool
) -> tuple[list[str], dict[str, float]]:
    """Fit, then test the final weights on val and every held-out split with images."""
    with warnings.catch_warnings():
        # Expected here: uint8 batches move to the device, then the module augments them.
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer`.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning internals on new torch
        if resume:  # expected: the run's own checkpoints directory
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        trainer.fit(model, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)

    splits = [s for s in ("val", *dm.heldout_names) if len(dm.split(s).labels) > 0]
    return splits, _test(trainer, model, dm, splits)


RAW_PREFIX = "raw/"  # optim.ema: the raw weights' test metrics are logged as raw/<split>/...


def _test(
    trainer: L.Trainer, model: Classifier, dm: Any, splits: list[str], prefix: str = ""
) -> dict[str, float]:
    """Accuracy (and loss) of the model's current weights on ``splits``, logged and returned
    as ``<prefix><split>/accuracy``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer`.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        model.eval_split_names, model.eval_prefix = splits, prefix
        try:
            results = trainer.test(
                model, dataloaders=[dm.eval_dataloader(s) for s in splits], verbose=False
            )
        finally:
            model.eval_prefix = ""
    merged: dict[str, float] = {}
    for r in results:
        merged.update(r)
    return merged


def _metrics(
    cfg: Config,
    dm: Any,
    trainer: L.Trainer,
    run: _RunCallbacks,
    splits: list[str],
    accuracies: dict[str, float],
) -> dict[str, Any]:
    """``metrics.json``: final accuracies, checkpoints, invariance report, config, provenance."""
    run_dir = run.last.parent.parent
    metrics: dict[str, Any] = {
        "name": cfg.name,
        "splits": {s: {"accuracy": accuracies[f"{s}/accuracy"]} for s in splits},
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "num_classes": dm.num_classes,
        "data": dm.split_info(),
        "config": to_container(cfg),  # results keep the config that produced them
    }
    pre = describe_preprocessing(cfg)
    if pre is not None:  # a pretrained model's own input, and what the config overrode
        metrics["preprocessing"] = pre
    # The accuracies above are those of the final weights, which last.ckpt holds.
    metrics["checkpoint"] = _checkpoint_block(run.last, run_dir)
    metrics["best_checkpoint"] = _checkpoint_block(run.best, run_dir)
    if metrics["best_checkpoint"] is not None:
        score = run.checkpoint.best_model_score
        metrics["best_checkpoint"]["monitor"] = run.checkpoint.monitor
        metrics["best_checkpoint"]["score"] = None if score is None else float(score)
    if run.monitor is not None and run.monitor.final_report is not None:
        metrics["invariance"] = run.monitor.final_report
    if run.ema is not None:
        _weights_blocks(metrics, run, splits, accuracies)
    block = metrics["checkpoint"] or {}
    metrics["provenance"] = collect_provenance(
        device=trainer.strategy.root_device,
        checkpoint=run.last,
        global_step=block.get("global_step"),
        epoch=block.get("epoch"),
        relative_to=run_dir,
    )
    return metrics


def _weights_blocks(
    metrics: dict[str, Any], run: _RunCallbacks, splits: list[str], accuracies: dict[str, float]
) -> None:
    """``optim.ema``: the top-level ``splits`` and ``invariance`` are the EMA weights' (those the
    checkpoints' ``state_dict`` holds, ``weights: "ema"``); ``ema`` says how they were averaged
    and ``raw`` holds the same evaluation of the raw weights at the end of training."""
    assert run.ema is not None
    metrics["weights"] = "ema"
    metrics["ema"] = {
        "decay": run.ema.decay,
        "updates": run.ema.updates,
        "splits": {s: dict(metrics["splits"][s]) for s in splits},
    }
    raw: dict[str, Any] = {
        "splits": {s: {"accuracy": accuracies[f"{RAW_PREFIX}{s}/accuracy"]} for s in splits}
    }
    report = None if run.monitor is None else run.monitor.other_report("raw")
    if report is not None:
        raw["invariance"] = report
    metrics["raw"] = raw


def _log_final(loggers: list[Any], metrics: dict[str, Any], step: int) -> None:
    final = {f"final/{s}/accuracy": v["accuracy"] for s, v in metrics["splits"].items()}
    for s, v in (metrics.get("raw") or {}).get("splits", {}).items():
        final[f"final/{RAW_PREFIX}{s}/accuracy"] = v["accuracy"]
    columns, rows = headline_rows(metrics)
    for logger in loggers:
        logger.log_metrics(final, step=step)
        if isinstance(logger, WandbLogger):  # one table of the run's results, in its summary
            logger.log_table(key="final/splits", columns=columns, data=rows, step=step)


HEADLINE = ("p_change", "consistency", "worst_case_accuracy")


def headline_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Per split: accuracy, and per transform P(top-1 change), consistency and worst-case
    accuracy (mean and 95% interval) with the gap to ``typical``: the run's headline table."""
    inv = (metrics.get("invariance") or {}).get("splits", {})
    columns = ["split", "changes", "accuracy"]
    transforms = sorted(
        {t for b in inv.values() for t in b if isinstance(b.get(t), dict)} & {"translate", "scale"}
    )
    for tr in transforms:
        for m in HEADLINE:
            columns += [f"{tr}/{m}", f"{tr}/{m} lo", f"{tr}/{m} hi", f"{tr}/{m} gap"]
    rows = []
    for split, values in metrics["splits"].items():
        changes = "+".join((metrics.get("data", {}).get(split) or {}).get("changes") or []) or "-"
        row: list[Any] = [split, changes, float(values["accuracy"])]
        block = inv.get(split, {})
        for tr in transforms:
            for m in HEADLINE:
                cell = (block.get(tr) or {}).get(m) or {}
                gap = ((block.get(tr) or {}).get("gap_to_typical") or {}).get(m) or {}
                lo, hi = (cell.get("ci") or [None, None])[:2]
                row += [cell.get("mean"), lo, hi, gap.get("mean")]
        rows.append(row)
    return columns, rows
