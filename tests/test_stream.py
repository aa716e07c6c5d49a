"""The streaming data path (``data.stream``) against the in-memory one, on a folder of JPEGs that
fits both: the same pixels, the same training batches, identical evaluation reports."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from PIL import Image

from eval.runner import evaluate, image_chunks
from invlab.config import ConfigError
from tests.conftest import tiny_config
from train.data import build_datamodule
from train.data.stream import StreamImages, memory_limit, plan_stream, split_bytes, use_stream
from train.module import Classifier

CLASSES = ("ant", "bee", "cat")
# typical.n=20 exceeds the 16 held-out files on purpose: instances are reused (and noted).
pytestmark = pytest.mark.filterwarnings("ignore:Instance reuse")


def _jpegs(root: Path, n: int = 40, px: int = 48) -> Path:
    """``n`` random JPEGs of ``px`` px (some wider than tall) in 3 classes: 24 in ``train/``,
    the rest in ``val/``."""
    rng = np.random.default_rng(0)
    for i in range(n):
        part = "train" if i < 24 else "val"
        d = root / part / CLASSES[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        shape = (px, px + int(rng.integers(0, 12)), 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}.jpg")
    return root


def _cfg(tmp_path: Path, stream: str, *extra: str):
    root = tmp_path / "jpegs"
    if not root.exists():
        _jpegs(root)
    return tiny_config(
        tmp_path,
        "data.source=folder",
        f"data.root={root}",
        "data.render=false",
        f"data.stream={stream}",
        "data.image_size=32",
        "data.eval_margin_px=4",
        "data.n_train=24",
        "data.n_val=4",
        "data.heldout.typical.n=20",
        *(f"data.heldout.{s}.n=0" for s in ("position", "scale", "background", "atypical")),
        "data.batch_size=8",
        "data.num_workers=1",
        "model.widths=[4,8]",
        *extra,
    )


def test_streamed_splits_equal_the_in_memory_ones(tmp_path: Path) -> None:
    mem = build_datamodule(_cfg(tmp_path, "false"))
    st = build_datamodule(_cfg(tmp_path, "true"))
    mem.setup(), st.setup()
    assert not mem.streaming and st.streaming
    assert any("48 images in memory" in note for note in mem.notes)
    streaming = f"Data: streaming 48 images from {tmp_path / 'jpegs'} in 1 workers"
    assert any(note.startswith(streaming) for note in st.notes)
    for name in ("train", "val", "typical"):
        a, b = mem.split(name), st.split(name)
        assert isinstance(a.images, torch.Tensor) and isinstance(b.images, StreamImages)
        assert b.images.shape == a.images.shape and len(b.images) == len(a.images)
        assert torch.equal(b.images[:], a.images)  # every decoded pixel
        assert torch.equal(b.images[torch.tensor([3, 0])], a.images[[3, 0]])
        assert torch.equal(b.images[2], a.images[2])
        assert torch.equal(b.labels, a.labels) and torch.equal(b.indices, a.indices)
        chunks = list(image_chunks(b.images, torch.arange(len(a.images)), 5))
        assert [len(c) for c in chunks] == [len(c) for c in a.images.split(5)]
        assert torch.equal(torch.cat(chunks), a.images)
    assert mem.describe() == st.describe()
    first = next(iter(st.eval_dataloader("typical")))
    assert torch.equal(first[0], next(iter(mem.eval_dataloader("typical")))[0])


def test_evaluation_numbers_are_identical(tmp_path: Path) -> None:
    """The whole invariance report (per-image values, bootstrap intervals, homogeneity,
    typicality) is the same when the splits are decoded chunk by chunk by workers."""
    extra = ("eval.batch_size=40", "eval.typicality.method=pixels", "eval.n_images=20")
    reports = []
    for stream in ("false", "true"):
        cfg = _cfg(tmp_path, stream, *extra)
        dm = build_datamodule(cfg)
        dm.setup()
        torch.manual_seed(0)
        model = Classifier(cfg, num_classes=dm.num_classes)
        report = evaluate(model, dm, cfg.eval, image_size=32, progress=False)
        reports.append(json.dumps(report, sort_keys=True))
    assert reports[0] == reports[1]
    assert '"homogeneity"' in reports[0] and '"typicality"' in reports[0]


def test_training_batches_equal_and_a_streaming_fit_runs(tmp_path: Path) -> None:
    mem = build_datamodule(_cfg(tmp_path, "false", "data.on_device=false"))
    st = build_datamodule(_cfg(tmp_path, "true"))
    loaders = (mem.train_dataloader(), st.train_dataloader())
    assert st.train_on_device is False
    for epoch in (0, 1):
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        (xa, ya), (xb, yb) = (next(iter(loader)) for loader in loaders)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    cfg = _cfg(tmp_path, "true")
    model = Classifier(cfg, num_classes=st.num_classes)
    trainer = L.Trainer(
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=st)
    assert trainer.global_step == 12


def test_the_choice_is_automatic_by_size(tmp_path: Path) -> None:
    assert split_bytes(20_000, 224) == 20_000 * 3 * 224 * 224
    assert use_stream("auto", 3 << 30, limit=2 << 30) and not use_stream("auto", 1 << 30, 2 << 30)
    assert use_stream("true", 0) and not use_stream("false", 1 << 40)
    assert memory_limit() > 0
    dm = build_datamodule(_cfg(tmp_path, "auto"))
    dm.load_sources()
    assert plan_stream(dm, limit=10**9)[0] is False
    streaming, note = plan_stream(dm, limit=1000)
    assert streaming and note.startswith("Data: streaming 48 images") and "auto" in note
    empty = [f"data.heldout.{s}.n=0" for s in ("position", "scale", "background", "atypical")]
    shapes = build_datamodule(
        tiny_config(tmp_path, "data.render=false", "data.stream=true", *empty)
    )
    with pytest.raises(ConfigError, match="holds its images in memory"):
        shapes.setup()
