"""Shared fixtures: the real default config, shrunk to seconds on a CPU (never mocked)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from invlab.config import Config
from train.config import load_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_YAML = REPO / "configs" / "default.yaml"

# A few steps on tiny images: every code path of the real default, in seconds.
TINY_OVERRIDES = [
    "data.image_size=16",
    "data.n_train=64",
    "data.n_val=32",
    "data.heldout.typical.n=32",
    "data.heldout.position.n=32",
    "data.heldout.scale.n=32",
    "data.heldout.background.n=32",
    "data.heldout.atypical.n=32",
    "data.heldout.position.radius_px=[1.2,2]",
    "data.heldout.atypical.radius_px=[1.2,2]",
    "data.placement.max_offset_px=1",
    "data.batch_size=32",
    "data.eval_margin_px=2",
    "model.widths=[8,16]",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "logger.wandb.mode=disabled",
    "eval.n_images=16",
    "eval.max_shift_px=2",
    "eval.n_bootstrap=100",
    "eval.plots=false",
    "eval.scales=[0.9,1.0,1.1]",
]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors: intra-op threads only add fork/join overhead on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(tmp_path: Path, *extra: str) -> Config:
    """The default config shrunk for tests, writing under ``tmp_path``."""
    return load_config(DEFAULT_YAML, overrides=[*TINY_OVERRIDES, f"out_dir={tmp_path}", *extra])


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Config:
    return tiny_config(tmp_path)
