"""Invariance evaluation under DDP: shards gathered back in image order equal one process.

The real test trains the shrunk default config with ``InvarianceMonitor`` under
``L.Trainer(devices=2, strategy="ddp_spawn")`` (two CPU processes, gloo) and under one process,
with identical weights, and compares the reports. Spawned workers unpickle everything they run,
so the helpers live at module level.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from torch import Tensor

from eval.callback import InvarianceMonitor
from eval.distributed import LightningGather, gather_values, shard_indices
from invlab.config import Config, to_container
from tests.conftest import DEFAULT_YAML, TINY_OVERRIDES, tiny_config
from train.data import build_datamodule
from train.module import Classifier

# Scale views re-rendered by the datamodule, translations cropped from the held-out margin,
# typicality scored in pixel space: every per-image value the report is built from.
DDP_OVERRIDES = [
    "eval.n_images=15",  # uneven shards: 8 + 7
    "eval.typicality.method=pixels",
    "eval.typicality.k=3",
    "eval.typicality.n_bins=2",
    "optim.weight_decay=0",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
]


class FrozenClassifier(Classifier):
    """Trains without changing anything: a zero loss of every parameter (zero gradients, no
    weight decay) and no forward pass (BatchNorm statistics stay put). Its weights are those it
    was built with, in one process or two."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return sum(p.sum() for p in self.parameters()) * 0.0


def fit_and_report(cfg: Config, devices: int, out_dir: Path) -> dict[str, Any]:
    """Fit ``FrozenClassifier`` (seeded init) with the monitor on ``devices`` CPU processes."""
    dm = build_datamodule(cfg)
    dm.setup()
    torch.manual_seed(0)
    model = FrozenClassifier(cfg, num_classes=dm.num_classes)
    monitor = InvarianceMonitor(cfg.eval, image_size=cfg.data.image_size, out_dir=out_dir)
    trainer = L.Trainer(
        **{k: v for k, v in to_container(cfg.trainer).items() if k != "devices"},
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=dm)
    report = monitor.final_report  # ddp_spawn: read back from the JSON rank 0 wrote
    assert report is not None
    return report


# Averages of 0/1 per-image values (and their bootstrap CIs) depend on top-1 classes only: equal
# exactly. The rest (probabilities, cosines, distances) may differ by float32 rounding where a
# batch holds other images (they are bit-identical on a CPU here).
DISCRETE = ("accuracy", "p_change", "consistency", "worst_case_accuracy", "accuracy_by_view")


def assert_same_numbers(a: Any, b: Any, path: str = "report", exact: bool = False) -> None:
    """Same structure and values; floats exact under a ``DISCRETE`` key, else up to rounding."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_numbers(a[key], b[key], f"{path}.{key}", exact or key in DISCRETE)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_numbers(x, y, f"{path}[{i}]", exact)
    elif isinstance(a, float) and math.isnan(a):  # e.g. a statistic of no correct images
        assert isinstance(b, float) and math.isnan(b), path
    elif isinstance(a, float) and not exact:
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9), path
    else:
        assert a == b, path


@pytest.mark.filterwarnings("ignore:You have overridden `on_after_batch_transfer`")
def test_ddp_spawn_two_processes_equal_one(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, *DDP_OVERRIDES)
    two = fit_and_report(cfg, 2, tmp_path / "ddp")
    one = fit_and_report(cfg, 1, tmp_path / "single")
    assert two["protocol"].pop("world_size") == 2 and one["protocol"].pop("world_size") == 1
    # Provenance: same weights, device and packages; the time (and thread count) may differ.
    prov_two, prov_one = two.pop("provenance"), one.pop("provenance")
    for key in ("checkpoint", "device", "versions"):
        assert prov_two[key] == prov_one[key], key
    assert two["protocol"]["scale_protocol"] == "render"
    assert two["protocol"]["n_images"] == {
        s: 15 for s in ("typical", "position", "scale", "background", "atypical")
    }
    assert two["typicality"]["n_reference"] == 64
    assert_same_numbers(two, one)


# ------------------------------------------------------- the gather, without processes
class ThreadStrategyModule:
    """Stands in for a LightningModule under DDP: ``all_gather`` stacks every rank's tensor
    ([world, ...], equal shapes as Lightning requires), simulated with threads."""

    def __init__(self, rank: int, world: int, slots: list, barrier: threading.Barrier) -> None:
        self.trainer = type("T", (), {"global_rank": rank, "world_size": world})()
        self.device = torch.device("cpu")
        self.rank, self.slots, self.barrier = rank, slots, barrier

    def all_gather(self, tensor: Tensor) -> Tensor:
        self.slots[self.rank] = tensor.clone()
        self.barrier.wait()
        shapes = {t.shape for t in self.slots}
        out = torch.stack(list(self.slots))
        self.barrier.wait()
        if len(shapes) != 1:
            raise RuntimeError(f"all_gather needs equal shapes on every rank, got {shapes}.")
        return out


def run_ranks(world: int, fn: Any) -> list[Any]:
    """``fn(rank)`` on ``world`` threads; their results in rank order."""
    results: list[Any] = [None] * world

    def run(rank: int) -> None:
        results[rank] = fn(rank)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def rank_values(idx: Tensor) -> dict[str, Tensor]:
    """Per-image values as the runner makes them ([n_r] and [n_r, T], float32), from indices."""
    return {"a": idx.float() / 3, "b": torch.stack([idx.float(), -idx.float() / 7], 1)}


def test_lightning_gather_restores_image_order_on_uneven_shards() -> None:
    n, world = 7, 3  # shards of 3, 2 and 2 images
    slots: list = [None] * world
    barrier = threading.Barrier(world)

    def rank(r: int) -> dict[str, Tensor]:
        gather = LightningGather(ThreadStrategyModule(r, world, slots, barrier))
        idx = shard_indices(n, r, world)
        return gather_values(rank_values(idx), idx, gather, n)

    expected = rank_values(torch.arange(n))
    for out in run_ranks(world, rank):
        assert out.keys() == expected.keys()
        for key, value in expected.items():
            assert out[key].dtype == torch.float32
            assert torch.equal(out[key], value)  # bit-exact, in image order


def test_gather_values_orders_by_index_not_by_rank() -> None:
    n, world = 5, 2
    shards = [torch.tensor([3, 0]), torch.tensor([4, 1, 2])]  # any sharding
    slots: list = [None] * world
    barrier = threading.Barrier(world)

    def reversed_gather(r: int) -> Any:
        def gather(values: Tensor) -> Tensor:
            slots[r] = values
            barrier.wait()
            out = torch.cat(slots[::-1])  # ranks concatenated in reverse order
            barrier.wait()
            return out

        return gather

    outs = run_ranks(
        world, lambda r: gather_values(rank_values(shards[r]), shards[r], reversed_gather(r), n)
    )
    for out in outs:
        assert torch.equal(out["b"], rank_values(torch.arange(n))["b"])
    with pytest.raises(RuntimeError, match="expected each of 0..1 once"):
        gather_values({"v": torch.zeros(2)}, torch.tensor([0, 0]), lambda v: v, 2)


def test_cli_fit_under_ddp_two_processes(tmp_path: Path) -> None:
    """`invlab fit trainer.strategy=ddp trainer.devices=2`: Lightning re-launches the command
    for rank 1; rank 0 alone writes the run dir and a single (offline) W&B run."""
    args = [*TINY_OVERRIDES, f"out_dir={tmp_path}", "trainer.max_epochs=2"]
    args += ["trainer.devices=2", "trainer.strategy=ddp", "logger.wandb.mode=offline"]
    env = {**os.environ, "WANDB_API_KEY": "", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "train.cli", "fit", str(DEFAULT_YAML), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "default"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["invariance"]["protocol"]["world_size"] == 2
    assert set(metrics["splits"]) == {
        "val",
        "typical",
        "position",
        "scale",
        "background",
        "atypical",
    }
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert (run / "checkpoints" / "last.ckpt").is_file()
