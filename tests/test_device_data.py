"""The device-resident training path (``data.on_device``) against the DataLoader path."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from invlab.config import ConfigError
from tests.conftest import tiny_config
from tests.test_fit import _CrashAtEpochStart
from train.config import load_config
from train.data import build_datamodule
from train.data.device_loader import DeviceBatches, use_on_device
from train.fit import fit


def _batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)  # as Lightning does at every epoch start
    return [(x.clone(), y.clone()) for x, y in loader]


def test_on_device_batches_equal_dataloader_batches(tmp_path: Path) -> None:
    # 64 images in batches of 24: two full batches and a short one of 16.
    extra = ("data.batch_size=24",)
    dev = build_datamodule(tiny_config(tmp_path, "data.on_device=true", *extra))
    ref = build_datamodule(tiny_config(tmp_path, "data.on_device=false", *extra))
    dev_loader, ref_loader = dev.train_dataloader(), ref.train_dataloader()
    assert isinstance(dev_loader, DeviceBatches) and dev.train_on_device
    assert isinstance(ref_loader, DataLoader) and ref.train_on_device is False
    assert len(dev_loader) == len(ref_loader) == 3
    orders = []
    for epoch in (0, 1, 2):
        a, b = _batches(dev_loader, epoch), _batches(ref_loader, epoch)
        assert [len(y) for _, y in a] == [24, 24, 16]
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert xa.dtype == torch.uint8 and torch.equal(xa, xb) and torch.equal(ya, yb)
        orders.append(torch.cat([y for _, y in a]))
    assert not torch.equal(orders[0], orders[1])  # another epoch, another order
    # Every image exactly once per epoch.
    images = torch.cat([x for x, _ in a]).flatten(1)
    assert (
        torch.unique(images, dim=0).shape[0]
        == torch.unique(dev.split("train").images.flatten(1), dim=0).shape[0]
    )


def test_ranks_take_disjoint_equal_shards() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    labels = torch.arange(10)
    shards = [
        DeviceBatches(images, labels, 2, seed=3, device="cpu", rank=r, world_size=3)
        for r in range(3)
    ]
    got = [torch.cat([y for _, y in s]) for s in shards]
    assert [len(g) for g in got] == [4, 4, 4]  # 10 padded to 12
    assert set(torch.cat(got).tolist()) == set(range(10))
    order = shards[0].sampler.order()
    padded = [*order.tolist(), *order[:2].tolist()]  # padding from the head, as DistributedSampler
    assert [g.tolist() for g in got] == [padded[r::3] for r in range(3)]


def test_auto_decision() -> None:
    assert use_on_device("auto", 10**12, torch.device("cpu"))  # host memory: always
    assert not use_on_device("false", 1, torch.device("cpu"))
    assert use_on_device("true", 10**15, torch.device("meta"))
    assert not use_on_device("auto", 1, torch.device("meta"))  # free memory unknown
    assert load_config(overrides=["data.on_device=True"]).data.on_device == "true"
    with pytest.raises(ConfigError, match="data.on_device.*auto, true, false"):
        load_config(overrides=["data.on_device=gpu"])


class _Recorder(L.Callback):
    """Training batches as the step sees them (on the device, float, augmented), per epoch."""

    def __init__(self) -> None:
        self.batches: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.loader: type | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.loader = type(trainer.train_dataloader)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        x, y = batch
        self.batches.setdefault(trainer.current_epoch, []).append((x.clone(), y.clone()))


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def test_fit_sees_the_same_batches_on_both_paths_and_after_resume(tmp_path: Path) -> None:
    extra = ("trainer.max_epochs=2", "augment.presets=[translate,flip]", "eval.enabled=false")
    runs = {}
    for path in ("false", "true"):
        rec = _Recorder()
        fit(
            tiny_config(tmp_path, f"name={path}", f"data.on_device={path}", *extra), callbacks=[rec]
        )
        runs[path] = rec.batches
        assert rec.loader is (DeviceBatches if path == "true" else DataLoader)
    assert set(runs["true"]) == {0, 1} and len(runs["true"][0]) == 2
    for epoch in (0, 1):
        assert _same(runs["true"][epoch], runs["false"][epoch])
    assert not torch.equal(runs["true"][0][0][0], runs["true"][1][0][0])

    cfg = tiny_config(tmp_path, "name=crashed", "data.on_device=true", *extra)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[_CrashAtEpochStart(1)])
    rec = _Recorder()
    fit(cfg, resume=True, callbacks=[rec])
    assert set(rec.batches) == {1}  # the resumed run trains epoch 1 only
    assert _same(rec.batches[1], runs["true"][1])
