"""``InvarianceMonitor``: invariance evaluation during and at the end of training."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.loggers import WandbLogger

from eval import equivariance
from eval.distributed import LightningGather
from eval.report import scalars, write_json
from eval.runner import SCALAR_METRICS, TRANSFORMS, evaluate
from invlab.provenance import collect_provenance


class InvarianceMonitor(L.Callback):
    """Evaluates the LightningModule (``forward`` takes float [0, 1] images) on held-out splits.

    Runs every ``cfg_eval.every_n_epochs`` validation epochs (0: only at the end; never during the
    sanity check) and once when training ends. Images are sharded across ranks and gathered, so
    the report equals a single-process run. Logs ``invariance/<split>/<transform>/<metric>`` to
    every logger, writes ``<out_dir>/reports/invariance_epoch<E>.json`` (and plots) on rank 0 and
    keeps the last report in ``final_report``. Each report's ``provenance`` names ``checkpoint``
    (the file the evaluated weights are saved to, e.g. ``last.ckpt``) with the trainer's
    ``global_step`` and ``current_epoch`` (after training: the number of epochs run).
    With ``eval.equivariance.enabled`` the final report also holds the per-layer shift-equivariance
    profile (``eval.equivariance``) under ``equivariance``, logged as
    ``equivariance/<split>/<layer>/<metric>``.

    ``other_weights`` maps a name to a context manager factory that swaps other weights into the
    module (``{"raw": ema.raw_weights}`` beside EMA weights): at the end of training each is
    evaluated the same way after the module's own weights, its report marked ``"weights":
    name``, written as ``invariance_<name>_epoch<E>.json`` (plots ``invariance_<name>_*``),
    logged under ``<name>/invariance/...`` and kept in :meth:`other_report`.
    """

    def __init__(
        self,
        cfg_eval: Any,
        image_size: int,
        out_dir: str | Path,
        checkpoint: str | Path | None = None,
        context: dict[str, Any] | None = None,
        other_weights: Mapping[str, Callable[[L.LightningModule], AbstractContextManager[Any]]]
        | None = None,
    ) -> None:
        super().__init__()
        self.context = dict(context or {})  # copied into every report (e.g. training set-up)
        self.cfg = cfg_eval
        self.image_size = int(image_size)
        self.out_dir = Path(out_dir)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.other_weights = dict(other_weights or {})
        self._report: dict[str, Any] | None = None
        self._other_reports: dict[str, dict[str, Any]] = {}
        self._last_step: int | None = None
        self._created = time.time()

    @property
    def final_report(self) -> dict[str, Any] | None:
        """The last report. After ``strategy="ddp_spawn"`` the evaluations ran in worker
        processes: the main process reads back the newest report rank 0 wrote since this
        callback was created."""
        if self._report is None:
            written = [
                p
                for p in self.report_dir.glob("invariance_epoch*.json")
                if p.stat().st_mtime >= self._created
            ]
            if written:
                return json.loads(max(written).read_text())
        return self._report

    def other_report(self, name: str) -> dict[str, Any] | None:
        """The final report of ``other_weights[name]`` (None before the end of training; read
        back from rank 0's file like :attr:`final_report` after ``ddp_spawn``)."""
        if name not in self._other_reports:
            written = [
                p
                for p in self.report_dir.glob(f"invariance_{name}_epoch*.json")
                if p.stat().st_mtime >= self._created
            ]
            return json.loads(max(written).read_text()) if written else None
        return self._other_reports[name]

    @property
    def report_dir(self) -> Path:
        return self.out_dir / "reports"

    @staticmethod
    def _stem(name: str | None) -> str:
        return "invariance" if name is None else f"invariance_{name}"

    def _run(
        self, trainer: L.Trainer, pl_module: L.LightningModule, name: str | None = None
    ) -> dict[str, Any]:
        datamodule = trainer.datamodule
        if datamodule is None:
            raise RuntimeError("InvarianceMonitor needs the Trainer to be given a datamodule.")
        report = evaluate(
            pl_module,
            datamodule,
            self.cfg,
            image_size=self.image_size,
            device=pl_module.device,
            progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
            gather=LightningGather(pl_module),
        )
        epoch = trainer.current_epoch
        report.update(self.context)
        if name is not None:
            report["weights"] = name
        report["epoch"] = epoch
        report["global_step"] = trainer.global_step
        report["provenance"] = collect_provenance(
            device=pl_module.device,
            checkpoint=self.checkpoint,
            global_step=trainer.global_step,
            epoch=epoch,
            relative_to=self.out_dir,
        )
        if name is None:
            self._last_step = trainer.global_step
            self._report = report
        else:
            self._other_reports[name] = report
        if trainer.is_global_zero:
            write_json(report, self.report_dir / f"{self._stem(name)}_epoch{epoch:03d}.json")
        return report

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every = int(self.cfg.every_n_epochs)
        if trainer.sanity_checking or every <= 0 or (trainer.current_epoch + 1) % every:
            return
        report = self._run(trainer, pl_module)
        for key, value in scalars(report).items():
            pl_module.log(key, value, rank_zero_only=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_train_end runs before the strategy tears down, so the all-gather still works.
        if self._last_step == trainer.global_step and self._report is not None:
            report = self._report  # these weights were evaluated at the last validation
        else:
            report = self._run(trainer, pl_module)
        self._finish(trainer, pl_module, report)
        for name, swap in self.other_weights.items():  # every rank: the evaluation gathers
            with swap(pl_module):
                self._finish(trainer, pl_module, self._run(trainer, pl_module, name), name)

    def _finish(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        report: dict[str, Any],
        name: str | None = None,
    ) -> None:
        """Rank 0: the equivariance profile, logged scalars and curves, plots of a final report."""
        if not trainer.is_global_zero:
            return
        if _equivariance_on(self.cfg) and "equivariance" not in report:
            self._add_equivariance(trainer, pl_module, report, name)
        values = scalars(report)
        values.update(equivariance.scalars(report.get("equivariance") or {}))
        prefix = "" if name is None else f"{name}/"
        values = {f"{prefix}{k}": v for k, v in values.items()}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                _log_wandb_curves(logger, report, prefix)
            logger.save()
        if self.cfg.plots:
            from eval.plots import save_plots

            written = save_plots(
                report,
                self.report_dir,
                prefix=self._stem(name),
                num_classes=getattr(pl_module, "num_classes", None),
            )
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    _log_wandb_figures(logger, written, prefix)

    def _add_equivariance(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        report: dict[str, Any],
        name: str | None = None,
    ) -> None:
        """The per-layer shift-equivariance profile of the final model on the report's splits
        (rank 0 only: no collective runs), added under ``equivariance`` and written again."""
        report["equivariance"] = equivariance.profile_splits(
            pl_module,
            trainer.datamodule,
            list(report["splits"]),
            self.cfg,
            self.image_size,
        )
        epoch = int(report["epoch"])
        write_json(report, self.report_dir / f"{self._stem(name)}_epoch{epoch:03d}.json")


def _equivariance_on(cfg_eval: Any) -> bool:
    eq = getattr(cfg_eval, "equivariance", None)
    return bool(eq is not None and eq.enabled)


def _log_wandb_figures(logger: WandbLogger, paths: list[Path], prefix: str = "") -> None:
    """The equivariance profile figure as a W&B image (the other figures travel as tables)."""
    import wandb

    found = [p for p in paths if p.stem.endswith("_equivariance")]
    if found:
        logger.experiment.log({f"{prefix}equivariance/profile": wandb.Image(str(found[0]))})


def _log_wandb_curves(logger: WandbLogger, report: dict[str, Any], prefix: str = "") -> None:
    """Curves along the trajectories and against typicality as W&B tables and line plots
    (keys under ``prefix``: ``raw/`` for the raw weights beside EMA weights)."""
    import wandb

    payload: dict[str, Any] = {}
    for split, block in report["splits"].items():
        for tr in TRANSFORMS:
            if tr not in block:
                continue
            curve = block[tr]
            xs = curve["scales"] if tr == "scale" else list(range(len(curve["accuracy_by_view"])))
            cos = curve.get("feature_cosine_by_view") or [None] * len(xs)
            rows = [[x, a, c] for x, a, c in zip(xs, curve["accuracy_by_view"], cos, strict=True)]
            table = wandb.Table(columns=["view", "accuracy", "feature_cosine"], data=rows)
            payload[f"{prefix}invariance/{split}/{tr}/curve"] = table
            payload[f"{prefix}invariance/{split}/{tr}/accuracy_by_view"] = wandb.plot.line(
                table, "view", "accuracy", title=f"{split} {tr}: accuracy along the trajectory"
            )
    typ = report.get("typicality")
    if typ:
        curve = typ["curve"]
        columns = ["bin", "score", "accuracy"]
        columns += [f"{tr}/{m}" for tr in TRANSFORMS if tr in curve for m in SCALAR_METRICS]
        rows = []
        for i in range(len(curve["score"])):
            row = [i + 1, curve["score"][i], curve["accuracy"][i]]
            row += [curve[tr][m][i] for tr in TRANSFORMS if tr in curve for m in SCALAR_METRICS]
            rows.append(row)
        payload[f"{prefix}invariance/typicality/curve"] = wandb.Table(columns=columns, data=rows)
    logger.experiment.log(payload)
