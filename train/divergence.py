"""Stop training at the first non-finite loss, before that step changes the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from invlab.config import ConfigError


class LossDiverged(ConfigError):
    """The training loss became NaN or infinite (the CLI exits with code 2)."""


class StopOnNonFiniteLoss(L.Callback):
    """Raise :class:`LossDiverged` naming the step when a training loss is NaN or inf.

    Checked in ``on_before_backward``, so the bad step never reaches the optimizer and the
    checkpoints on disk (``last.ckpt`` from the last finished epoch) stay the last good weights.
    Lightning has no per-step check (``EarlyStopping(check_finite=True)`` looks at a monitored
    metric once per validation).
    """

    def __init__(self, last_checkpoint: str | Path) -> None:
        self.last_checkpoint = Path(last_checkpoint)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        # Every rank stops together (a lone raising rank would leave the others waiting).
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        self._raise(trainer, float(loss.detach().float().mean()) if bad else float("nan"))

    def _raise(self, trainer: L.Trainer, value: Any) -> None:
        last = self.last_checkpoint
        kept = (
            f"The last good weights are in {last} (written at the end of the last finished "
            f"epoch); continue from them with --resume after the fix."
            if last.is_file()
            else "No epoch finished, so no checkpoint was written."
        )
        raise LossDiverged(
            f"Training loss became {value} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx}); training "
            f"stopped before that step changed the weights. Lower optim.lr (or add "
            f"optim.warmup_epochs, trainer.gradient_clip_val=1.0). {kept}"
        )
