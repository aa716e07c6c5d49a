"""The ``shards`` source (WebDataset tar shards) against the ``folder`` source on the same images:
the same pixels and labels in memory and streamed, the same evaluation report; bad shards are
``ConfigError``s naming the file; the writer never overwrites."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.runner import evaluate
from invlab.config import ConfigError
from tests.conftest import tiny_config
from train.data import build_datamodule, build_source
from train.data.shards import ShardPool, main, write_shards
from train.data.stream import StreamImages
from train.module import Classifier

CLASSES = ("ant", "bee", "cat")
EMPTY = tuple(f"data.heldout.{s}.n=0" for s in ("position", "scale", "background", "atypical"))
pytestmark = pytest.mark.filterwarnings("ignore:Instance reuse")


def _images(root: Path, n: int = 40, split: bool = True) -> Path:
    """``n`` random 24-px images in 3 classes, PNG (every third with alpha) and JPEG, some
    wider than tall: 28 in ``train/``, the rest in ``val/`` (or all in ``root/<class>``)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        part = ("train" if i < 28 else "val") if split else ""
        d = root / part / CLASSES[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        shape = (24, 24 + int(rng.integers(0, 8)))
        if i % 2:
            rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(d / f"{i:02d}.jpg", quality=90)
        else:
            channels, mode = (4, "RGBA") if i % 3 == 0 else (3, "RGB")
            pixels = rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
            Image.fromarray(pixels, mode).save(d / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An image folder and its shards (12 per shard: 3 train shards, 1 val shard)."""
    base = tmp_path_factory.mktemp("shards")
    folder = _images(base / "folder")
    written = write_shards(folder, base / "shards", per_shard=12)
    assert [p.relative_to(base / "shards").as_posix() for p in written] == [
        "train/train-000000.tar",
        "train/train-000001.tar",
        "train/train-000002.tar",
        "val/val-000000.tar",
    ]
    return folder, base / "shards"


def _cfg(tmp_path: Path, source: str, root: Path, stream: str, *extra: str):
    return tiny_config(
        tmp_path,
        f"data.source={source}",
        f"data.root={root}",
        "data.render=false",
        f"data.stream={stream}",
        "data.image_size=32",
        "data.eval_margin_px=4",
        "data.n_train=28",
        "data.n_val=4",
        "data.heldout.typical.n=12",
        *EMPTY,
        "data.batch_size=8",
        "data.num_workers=1",
        "model.widths=[4,8]",
        *extra,
    )


def test_sources_give_the_same_samples(data: tuple[Path, Path], tmp_path: Path) -> None:
    folder, shards = data
    cfg = _cfg(tmp_path, "folder", folder, "false").data
    a = build_source("folder", cfg, 0)
    cfg_b = _cfg(tmp_path, "shards", shards, "false").data
    b = build_source("shards", cfg_b, 0)
    assert b.class_names == a.class_names == list(CLASSES)
    assert isinstance(b.train, ShardPool) and (len(b.train), len(b.heldout)) == (28, 12)
    for pa, pb in ((a.train, b.train), (a.heldout, b.heldout)):
        idx = np.arange(len(pa))
        oa, ob = pa.take(idx, 0), pb.take(idx, 0)
        assert torch.equal(oa.images, ob.images) and torch.equal(oa.labels, ob.labels)
        assert oa.masks is not None and torch.equal(oa.masks, ob.masks)
        assert torch.equal(pa.labels_of(idx[::-1]), pb.labels_of(idx[::-1]))


def test_root_layout_and_class_names(tmp_path: Path) -> None:
    """``root/<class>/*`` -> ``root/*.tar``: the same per-class held-out fifth; without
    classes.txt the classes are named by id."""
    folder = _images(tmp_path / "flat", n=30, split=False)
    write_shards(folder, tmp_path / "out", per_shard=7)
    assert len(list((tmp_path / "out").glob("*.tar"))) == 5
    a = build_source("folder", _cfg(tmp_path, "folder", folder, "false").data, 0)
    b = build_source("shards", _cfg(tmp_path, "shards", tmp_path / "out", "false").data, 0)
    for pa, pb in ((a.train, b.train), (a.heldout, b.heldout)):
        oa, ob = pa.take(np.arange(len(pa)), 0), pb.take(np.arange(len(pb)), 0)
        assert torch.equal(oa.images, ob.images) and torch.equal(oa.labels, ob.labels)
    (tmp_path / "out" / "classes.txt").unlink()
    c = build_source("shards", _cfg(tmp_path, "shards", tmp_path / "out", "false").data, 0)
    assert c.class_names == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize("stream", ["false", "true"])
def test_splits_equal_the_folder_ones(data: tuple[Path, Path], tmp_path: Path, stream: str):
    folder, shards = data
    fo = build_datamodule(_cfg(tmp_path, "folder", folder, "false"))
    sh = build_datamodule(_cfg(tmp_path, "shards", shards, stream))
    fo.setup(), sh.setup()
    assert sh.streaming is (stream == "true")
    for name in ("train", "val", "typical"):
        a, b = fo.split(name), sh.split(name)
        assert isinstance(b.images, StreamImages if stream == "true" else torch.Tensor)
        assert torch.equal(b.images[:], a.images)
        assert torch.equal(b.labels, a.labels) and torch.equal(b.indices, a.indices)
    loaders = (fo.eval_dataloader("typical"), sh.eval_dataloader("typical"))
    (xa, ya), (xb, yb) = (next(iter(loader)) for loader in loaders)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_evaluation_numbers_are_identical(data: tuple[Path, Path], tmp_path: Path) -> None:
    folder, shards = data
    extra = ("eval.batch_size=40", "eval.typicality.method=pixels", "eval.n_images=12")
    reports = []
    for source, root, stream in (("folder", folder, "false"), ("shards", shards, "true")):
        cfg = _cfg(tmp_path, source, root, stream, *extra)
        dm = build_datamodule(cfg)
        dm.setup()
        torch.manual_seed(0)
        model = Classifier(cfg, num_classes=dm.num_classes)
        report = evaluate(model, dm, cfg.eval, image_size=32, progress=False)
        reports.append(json.dumps(report, sort_keys=True))
    assert reports[0] == reports[1]
    assert '"homogeneity"' in reports[0]


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def _load(tmp_path: Path, root: Path):
    return build_source("shards", _cfg(tmp_path, "shards", root, "false").data, 0)


def test_bad_shards_are_config_errors(tmp_path: Path) -> None:
    png = _png()
    with pytest.raises(ConfigError, match=r"No \.tar shards in .*missing.*train\.data\.shards"):
        _load(tmp_path, tmp_path / "missing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"No \.tar shards in .*empty.*python -m"):
        _load(tmp_path, tmp_path / "empty")
    cases = {
        "nocls": ({"a.png": png, "b.png": png, "b.cls": b"1"}, r"image for key 'a' but no \.cls"),
        "noimg": ({"a.cls": b"0", "b.png": png, "b.cls": b"1"}, r"\.cls for key 'a' but no image"),
        "text": ({"a.png": png, "a.cls": b"dog"}, r"the class 'dog' in a\.cls.*integer"),
        "two": ({"a.png": png, "a.jpg": png, "a.cls": b"0"}, r"2 images for key 'a'"),
    }
    for name, (members, message) in cases.items():
        shard = _tar(tmp_path / name / "s.tar", members)
        with pytest.raises(ConfigError, match=message) as err:
            _load(tmp_path, tmp_path / name)
        assert str(shard) in str(err.value) and "rewrite it" in str(err.value)
    junk = tmp_path / "junk" / "s.tar"
    junk.parent.mkdir()
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ConfigError, match=r"Cannot read the shard .*junk/s\.tar as a tar"):
        _load(tmp_path, tmp_path / "junk")
    whole = _tar(tmp_path / "cut" / "s.tar", {"a.png": png * 20, "a.cls": b"0"})
    whole.write_bytes(whole.read_bytes()[:1200])
    with pytest.raises(ConfigError, match=r"cut/s\.tar"):
        _load(tmp_path, tmp_path / "cut")
    bad = _tar(
        tmp_path / "badpng" / "s.tar",
        {f"{k}.png": b"xx" for k in "abcd"}
        | {f"{k}.cls": str(i % 2).encode() for i, k in enumerate("abcd")},
    )
    pool = _load(tmp_path, tmp_path / "badpng").train
    with pytest.raises(ConfigError, match=rf"Cannot decode the image file {bad}:[a-d]\.png"):
        pool.take(np.arange(1), 0)
    (tmp_path / "few").mkdir()
    (tmp_path / "few" / "classes.txt").write_text("x\n")
    _tar(tmp_path / "few" / "s.tar", {"a.png": png, "a.cls": b"0", "b.png": png, "b.cls": b"1"})
    with pytest.raises(ConfigError, match=r"classes\.txt names 1 classes but .* class id 1"):
        _load(tmp_path, tmp_path / "few")


def test_writer_refuses_to_overwrite(data: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    folder, shards = data
    before = {p: p.stat().st_mtime_ns for p in shards.rglob("*")}
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_shards(folder, shards)
    assert main(["write", str(folder), str(shards)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*")} == before
    assert main(["write", str(folder), str(tmp_path / "new"), "--per-shard", "100"]) == 0
    assert "Wrote 2 shard(s)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="No image folder"):
        write_shards(tmp_path / "nothing", tmp_path / "other")
