"""EMA weights (``optim.ema``): Lightning's ``EMAWeightAveraging``, keeping the raw weights too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor

RAW_KEY = "current_model_state"  # Lightning's checkpoint key for the weights being trained


class EMAWeights(EMAWeightAveraging):
    """Lightning's EMA callback: ``ema = decay * ema + (1 - decay) * weights`` after every
    optimizer step (the first update copies the weights). Validation, the checkpoints'
    ``state_dict`` and the weights left after training are the average; the raw weights stay in
    each checkpoint under ``current_model_state`` (``--resume`` continues both).

    Three additions:

    - at the end of training the raw weights are kept (``raw_state``) and :meth:`raw_weights`
      swaps them in, so that both can be evaluated (the final checkpoint keeps them too);
    - the EMA weights stay in place until ``on_validation_end`` (Lightning swaps back at
      ``on_validation_epoch_end``), so a callback that evaluates at the end of a validation epoch
      (the invariance monitor) sees the weights validation saw;
    - integer buffers (BatchNorm's ``num_batches_tracked``) are counts: copied, not averaged.
    """

    def __init__(self, decay: float, checkpoint: str | Path | None = None) -> None:
        super().__init__(decay=decay)
        self.decay = float(decay)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.raw_state: dict[str, Tensor] | None = None

    @property
    def updates(self) -> int:
        """How many times the average was updated (0 before training)."""
        model = self._average_model
        return 0 if model is None else int(model.n_averaged)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        before = self._latest_update_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, idx)
        if self._latest_update_step != before and self._average_model is not None:
            with torch.no_grad():
                for avg, cur in zip(
                    self._average_model.module.buffers(), pl_module.buffers(), strict=True
                ):
                    if not (avg.is_floating_point() or avg.is_complex()):
                        avg.copy_(cur)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The raw weights come back in ``on_validation_end`` instead."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.raw_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)  # the model now holds the average

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self.raw_state is not None and RAW_KEY in checkpoint:  # saved after training ended
            checkpoint[RAW_KEY] = self.raw_state

    def _raw(self) -> dict[str, Tensor]:
        if self.raw_state is not None:
            return self.raw_state
        # Training ran in other processes (ddp_spawn): the last checkpoint holds the raw weights.
        if self.checkpoint is not None and self.checkpoint.is_file():
            stored = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            if RAW_KEY in stored:
                return stored[RAW_KEY]
        raise RuntimeError("The raw weights are known only once training has ended.")

    @contextmanager
    def raw_weights(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Swap the raw weights of the end of training into ``pl_module`` for the block."""
        averaged = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        pl_module.load_state_dict(self._raw())
        try:
            yield
        finally:
            pl_module.load_state_dict(averaged)
