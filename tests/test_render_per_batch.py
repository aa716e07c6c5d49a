"""Rendered training data made per batch (``data.stream`` with ``data.render=true``) against the
split rendered ahead of time: the same pixels, the same training batches, the same held-out
numbers; the choice by size, stated in the notes; glibc's mmap threshold while streaming."""

from __future__ import annotations

import ctypes
import json
import platform
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_config
from train.data import build_datamodule, heap
from train.data.device_loader import DeviceBatches
from train.data.render_batches import RenderBatches, RenderedImages
from train.data.stream import memory_limit, plan_stream
from train.fit import fit

# Two of the default's held-out splits keep a fit short; 300 training images span two blocks of
# random draws (train.data.render.BLOCK = 256).
SMALL = [f"data.heldout.{s}.n=0" for s in ("position", "scale", "background")]
TWO_BLOCKS = "data.n_train=300"
pytestmark = pytest.mark.filterwarnings("ignore:Instance reuse")


def _pair(tmp_path: Path, *extra: str):
    """The same config ahead of time (``data.stream=false``) and per batch (``true``)."""
    return tuple(
        build_datamodule(tiny_config(tmp_path, *SMALL, f"data.stream={s}", *extra))
        for s in ("false", "true")
    )


@pytest.mark.parametrize(
    "extra",
    [
        (),  # shapes on flat backgrounds: the default training distribution
        ("data.placement.background=noise", "data.heldout.atypical.background=texture"),
        ("data.placement.background=mixed",),
        ("data.placement.background=texture", "data.placement.position=uniform"),
        ("data.source=digits", "data.placement.appearance=classic"),
    ],
    ids=["flat", "noise", "mixed", "texture", "digits-classic"],
)
def test_an_image_rendered_per_batch_is_the_one_rendered_ahead_of_time(
    tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """Bit for bit (uint8), for any batch of indices in any order: every draw is keyed by
    (seed, split, block) and every object is rastered at the split's size, so a batch's
    composite does not depend on the other images in it."""
    mem, per = _pair(tmp_path, TWO_BLOCKS, *extra)
    ahead, lazy = mem.split("train"), per.split("train")
    assert isinstance(ahead.images, torch.Tensor) and isinstance(lazy.images, RenderedImages)
    assert lazy.images.shape == ahead.images.shape and torch.equal(lazy.labels, ahead.labels)
    assert ahead.scene is not None and (ahead.scene.redrawn > 0).any()  # the frame rule acts
    order = np.random.default_rng(0).permutation(len(ahead))
    for size in (1, 7, 64, 300):
        index = order[:size]
        assert torch.equal(lazy.images[torch.as_tensor(index)], ahead.images[index]), size
    assert torch.equal(lazy.images[5], ahead.images[5])
    assert torch.equal(lazy.images[250:262], ahead.images[250:262])  # across the block edge
    chunks = list(lazy.images.batches(torch.arange(300), 128))
    assert [len(c) for c in chunks] == [128, 128, 44]
    assert torch.equal(torch.cat(chunks), ahead.images)
    for name in ("val", "typical", "atypical"):  # held-out splits stay rendered ahead of time
        assert torch.equal(per.split(name).images, mem.split(name).images)
    scales = (0.9, 1.1)
    assert torch.equal(
        per.render_scales("train", scales, 20), mem.render_scales("train", scales, 20)
    )


def _pngs(root: Path, n: int = 40, px: int = 24) -> Path:
    """``n`` random PNGs in 3 classes (24 in ``train/``, the rest in ``val/``); every third has
    an alpha channel with a transparent corner, so batches mix masked and opaque objects."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / ("train" if i < 24 else "val") / ("ant", "bee", "cat")[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (px, px + int(rng.integers(0, 8)), 4), dtype=np.uint8)
        pixels[..., 3] = 255
        pixels[: px // 3, : px // 3, 3] = 0
        mode = "RGBA" if i % 3 == 0 else "RGB"
        Image.fromarray(pixels if mode == "RGBA" else pixels[..., :3], mode).save(d / f"{i}.png")
    return root


def test_folder_objects_with_and_without_alpha(tmp_path: Path) -> None:
    """A folder pasted on backgrounds: a batch has alpha masks when any of its images has one
    (the others fully opaque), which renders every image as alone."""
    root = _pngs(tmp_path / "pngs")
    extra = ("data.source=folder", f"data.root={root}", "data.n_train=24", "data.n_val=4")
    held = ("data.heldout.typical.n=6", "data.heldout.atypical.n=6")
    mem, per = _pair(tmp_path, *extra, *held)
    ahead, lazy = mem.split("train").images, per.split("train").images
    for index in ([0, 1, 2], [1, 2], [4, 3, 0, 23], list(range(24))):
        assert torch.equal(lazy[torch.tensor(index)], ahead[index]), index


def test_more_threads_render_the_same_pixels(tmp_path: Path) -> None:
    mem, per = _pair(tmp_path, TWO_BLOCKS, "data.placement.background=noise")
    ahead = mem.split("train").images
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        index = torch.arange(299, -1, -3)
        assert torch.equal(per.split("train").images[index], ahead[index])
    finally:
        torch.set_num_threads(threads)


def _batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)  # as Lightning does at every epoch start
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("on_device", ["true", "false"])
def test_training_batches_are_those_of_the_in_memory_path(tmp_path: Path, on_device: str) -> None:
    """Objects taken by a worker process, pasted on the device (or in the loader): the batches
    of the device-resident split, epoch by epoch, on every rank."""
    extra = (*SMALL, TWO_BLOCKS, "data.batch_size=128")
    mem = build_datamodule(tiny_config(tmp_path, *extra, "data.stream=false"))
    per = build_datamodule(
        tiny_config(
            tmp_path,
            *extra,
            "data.stream=true",
            "data.num_workers=1",
            f"data.on_device={on_device}",
        )
    )
    ref, got = mem.train_dataloader(), per.train_dataloader()
    assert isinstance(ref, DeviceBatches) and isinstance(got, RenderBatches)
    assert got.paint_on_device is per.train_on_device is (on_device == "true")
    assert len(got) == len(ref) == 3
    for epoch in (0, 1):
        a, b = _batches(ref, epoch), _batches(got, epoch)
        assert [len(y) for _, y in b] == [128, 128, 44]
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert xb.dtype == torch.uint8 and torch.equal(xa, xb) and torch.equal(ya, yb)
    renderer = per.split("train").images.renderer
    images, labels = mem.split("train").images, mem.split("train").labels
    for rank in (0, 1):
        shard = RenderBatches(renderer, 64, 0, "cpu", rank=rank, world_size=2)
        twin = DeviceBatches(images, labels, 64, 0, "cpu", rank=rank, world_size=2)
        assert all(
            torch.equal(xa, xb) and torch.equal(ya, yb)
            for (xa, ya), (xb, yb) in zip(_batches(twin, 3), _batches(shard, 3), strict=True)
        )


class _Recorder(L.Callback):
    """Training batches as the step sees them (on the device, float, augmented)."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.loader: type | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.loader = type(trainer.train_dataloader)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batches.append((batch[0].clone(), batch[1].clone()))


def test_fit_gives_the_same_batches_and_heldout_numbers_on_both_paths(tmp_path: Path) -> None:
    extra = (
        *SMALL,
        "augment.presets=[translate,flip]",
        "trainer.max_epochs=2",
        "eval.typicality.method=pixels",  # its reference: the training images, rendered lazily
        "eval.typicality.n_reference=40",
    )
    runs, loaders, notes = {}, {}, {}
    for stream in ("false", "true"):
        rec = _Recorder()
        cfg = tiny_config(tmp_path, f"name={stream}", f"data.stream={stream}", *extra)
        result = fit(cfg, callbacks=[rec])
        runs[stream] = (rec.batches, json.loads((result.run_dir / "metrics.json").read_text()))
        loaders[stream], notes[stream] = rec.loader, result.notes
    assert loaders == {"false": DeviceBatches, "true": RenderBatches}
    assert any(n.startswith("Data: 160 images in memory") for n in notes["false"])
    assert any(
        n.startswith("Data: rendering the 64 training images per batch") for n in notes["true"]
    )
    (batches_a, metrics_a), (batches_b, metrics_b) = runs["false"], runs["true"]
    assert len(batches_a) == len(batches_b) == 4  # 2 epochs of 2 batches
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert set(metrics_a["invariance"]["splits"]) == {"typical", "atypical"}
    assert metrics_a["invariance"]["splits"] == metrics_b["invariance"]["splits"]
    assert metrics_a["splits"] == metrics_b["splits"]
    assert metrics_a["invariance"]["typicality"] == metrics_b["invariance"]["typicality"]


def test_the_choice_is_automatic_by_size_and_noted(tmp_path: Path) -> None:
    dm = build_datamodule(tiny_config(tmp_path, *SMALL))  # data.stream=auto
    dm.load_sources()
    small, note = plan_stream(dm, limit=memory_limit())
    assert (
        small is False and note == "Data: 160 images in memory (0 MiB as uint8; data.stream=auto)."
    )
    large, note = plan_stream(dm, limit=1000)  # the splits take 3x16x16x64 + 3x20x20x96 bytes
    assert large and note == (
        "Data: rendering the 64 training images per batch on the training device (in memory the "
        "splits would take 0 MiB as uint8; data.stream=auto; val, typical, atypical rendered in "
        "memory)."
    )
    dm.setup()
    assert isinstance(dm.split("train").images, torch.Tensor)  # 160 images fit any machine
    off = build_datamodule(
        tiny_config(tmp_path, *SMALL, "data.stream=true", "data.on_device=false")
    )
    off.setup()
    assert "per batch on the CPU in the DataLoader (data.on_device=false)" in off.notes[0]
    assert off.notes[1].startswith("Memory: glibc's mmap threshold set to 131072 bytes")


class _Libc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: ctypes.c_int, value: ctypes.c_int) -> int:
        self.calls.append((param.value, value.value))
        return 1


def test_streaming_fixes_glibcs_mmap_threshold(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(heap.ENV, raising=False)
    libc = _Libc()
    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: libc)
    build_datamodule(tiny_config(tmp_path, *SMALL, "data.stream=false")).setup()
    assert libc.calls == []  # only when streaming is taken
    per = build_datamodule(tiny_config(tmp_path, *SMALL, "data.stream=true"))
    per.setup()
    assert libc.calls == [(-3, 131072)]  # M_MMAP_THRESHOLD
    assert any("mmap threshold set to 131072" in n for n in per.notes)
    monkeypatch.setenv(heap.ENV, "65536")  # the user's setting wins
    assert heap.fix_mmap_threshold() == (
        "Memory: glibc's mmap threshold is 65536 bytes (MALLOC_MMAP_THRESHOLD_ is set)."
    )
    assert libc.calls == [(-3, 131072)]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_real_call_is_made_and_harmless(monkeypatch) -> None:
    """On this platform (Linux, glibc) mallopt accepts the value; allocating large and small
    buffers afterwards works as before."""
    monkeypatch.delenv(heap.ENV, raising=False)
    note = heap.fix_mmap_threshold()
    assert note is not None and "131072" in note
    big = torch.ones(1 << 20, dtype=torch.uint8)  # above the threshold: its own mapping
    small = [torch.zeros(100) for _ in range(1000)]
    assert int(big.sum()) == 1 << 20 and sum(float(s.sum()) for s in small) == 0.0
