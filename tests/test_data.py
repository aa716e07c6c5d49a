"""Data layer: sources (real on-disk formats faked in tmp_path), placement and scale statistics,
determinism, held-out disjointness, split shapes and dataloaders."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from invlab.config import ConfigError, PlacementConfig
from train.config import load_config
from train.data import (
    ArrayPool,
    Objects,
    build_datamodule,
    build_source,
    center_crop,
)
from train.data.placement import sample_placement
from train.data.render import composite, draw_split_params
from train.data.shapes import CLASS_NAMES, ShapePool, polygon_sdf

S, M = 16, 2  # image size and eval margin used throughout
SMALL = [
    f"data.image_size={S}",
    f"data.eval_margin_px={M}",
    "data.n_train=48",
    "data.n_val=12",
    "data.heldout.typical.n=12",
    "data.heldout.position.n=0",
    "data.heldout.scale.n=0",
    "data.heldout.background.n=0",
    "data.heldout.atypical.n=12",
    "data.heldout.atypical.radius_px=[1,2]",
    "data.placement.max_offset_px=1",
    "data.batch_size=16",
    "data.download=false",
]


def _cfg(*overrides: str):
    return load_config(overrides=[*SMALL, *overrides])


def _check_splits(dm, num_classes: int) -> None:
    for name in ("train", "val", "typical", "atypical"):
        s = dm.split(name)
        side = S if name == "train" else S + 2 * M
        assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
        assert s.images.shape == (len(s.labels), 3, side, side)
        assert s.margin == (0 if name == "train" else M)
        assert int(s.labels.min()) >= 0 and int(s.labels.max()) < num_classes


# ------------------------------------------------------------------------- fake datasets
def _idx_file(path, array: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root, folder: str = "MNIST", n: int = 40) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _idx_file(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx_file(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))


def _fake_cifar(root, hundred: bool = False, n: int = 30) -> None:
    rng = np.random.default_rng(1)
    k = 100 if hundred else 10
    key = "fine_labels" if hundred else "labels"
    d = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    d.mkdir(parents=True)
    names = (
        ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    )
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: list(rng.integers(0, k, n)),
        }
        (d / name).write_bytes(pickle.dumps(batch))
    meta = (
        {"fine_label_names": [f"c{i}" for i in range(k)]}
        if hundred
        else {"label_names": [f"c{i}" for i in range(k)]}
    )
    (d / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))


def _fake_svhn(root, n: int = 30) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": rng.integers(1, 11, (n, 1))})


def _fake_stl10(root, n: int = 12) -> None:
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        (d / f"{split}_X.bin").write_bytes(
            rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tobytes()
        )
        (d / f"{split}_y.bin").write_bytes(rng.integers(1, 11, n, dtype=np.uint8).tobytes())
    (d / "unlabeled_X.bin").write_bytes(b"")
    (d / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))


def _fake_folder(root, classes=("cat", "dog"), per_class: int = 5, split_dirs: bool = True) -> None:
    rng = np.random.default_rng(4)
    parts = ("train", "val") if split_dirs else ("",)
    for part in parts:
        for c in classes:
            d = root / part / c
            d.mkdir(parents=True)
            for i in range(per_class):
                array = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
                Image.fromarray(array).save(d / f"{i}.png")


@pytest.fixture
def no_checksums(monkeypatch):
    """Fake files cannot match the published checksums: check existence instead."""
    import os

    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10
    import torchvision.datasets.svhn as svhn

    for module in (cifar, svhn, stl10):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


FAKES = {
    "mnist": (lambda r: _fake_mnist(r), 10),
    "fashion_mnist": (lambda r: _fake_mnist(r, "FashionMNIST"), 10),
    "cifar10": (lambda r: _fake_cifar(r), 10),
    "cifar100": (lambda r: _fake_cifar(r, hundred=True), 100),
    "svhn": (lambda r: _fake_svhn(r), 10),
    "stl10": (lambda r: _fake_stl10(r), 10),
    "folder": (lambda r: _fake_folder(r), 2),
}


# -------------------------------------------------------------------------------- sources
@pytest.mark.parametrize("name", list(FAKES))
def test_torchvision_and_folder_sources_build(name, tmp_path, no_checksums):
    make, num_classes = FAKES[name]
    make(tmp_path)
    dm = build_datamodule(_cfg(f"data.source={name}", f"data.root={tmp_path}"))
    assert dm.num_classes == num_classes == len(dm.class_names)
    _check_splits(dm, num_classes)


@pytest.mark.parametrize("source", ["shapes", "digits"])
def test_builtin_sources_build(source):
    dm = build_datamodule(_cfg(f"data.source={source}"))
    assert dm.num_classes == 10
    _check_splits(dm, 10)


def test_folder_without_split_dirs_holds_out_a_fifth(tmp_path):
    _fake_folder(tmp_path, per_class=10, split_dirs=False)
    src = build_source("folder", _cfg(f"data.root={tmp_path}").data, 0)
    assert (len(src.train), len(src.heldout)) == (16, 4)
    train = {p for p in src.train.paths}
    assert train.isdisjoint(src.heldout.paths)


def test_missing_dataset_is_a_config_error_naming_the_path(tmp_path):
    cfg = _cfg("data.source=cifar10", f"data.root={tmp_path}")
    with pytest.raises(ConfigError, match="cifar-10-batches-py") as err:
        build_datamodule(cfg).setup()
    assert str(tmp_path) in str(err.value) and "data.download=true" in str(err.value)
    with pytest.raises(ConfigError, match="ImageFolder"):
        build_source("folder", _cfg(f"data.root={tmp_path / 'nothing'}").data, 0)


def test_unknown_source_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'digits'"):
        build_source("digit", _cfg().data, 0)


def test_atypical_source_needs_the_same_classes(tmp_path, no_checksums):
    _fake_folder(tmp_path)  # 2 classes
    dm = build_datamodule(_cfg("data.heldout.atypical.source=folder", f"data.root={tmp_path}"))
    with pytest.raises(ConfigError, match="2 classes.*10"):
        dm.setup()
    _fake_mnist(tmp_path)  # 10 classes: the atypical split comes from its held-out set
    dm = build_datamodule(
        _cfg("data.source=digits", "data.heldout.atypical.source=mnist", f"data.root={tmp_path}")
    )
    atyp = dm.split("atypical")
    assert atyp.images.shape == (12, 3, S + 2 * M, S + 2 * M)
    line = dm.describe().splitlines()[3]
    assert line.startswith("atypical") and "mnist (12 held-out" in line and "+source" in line


# ---------------------------------------------------------------------------------- shapes
def test_polygon_sdf_of_a_unit_square():
    square = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]])
    points = torch.tensor([[0.0, 0.0], [0.5, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, -1.5]])
    expected = torch.tensor([[-1.0, -0.5, 1.0, 2**0.5, 0.5]])
    torch.testing.assert_close(polygon_sdf(points, square), expected)


def test_hsv_to_rgb_primaries_and_grey():
    from train.data.colorize import hsv_to_rgb

    h, sat, v = np.array([0, 1 / 3, 2 / 3, 0.5]), np.array([1, 1, 1, 0.0]), np.array([1, 1, 1, 0.5])
    expected = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]]
    np.testing.assert_allclose(hsv_to_rgb(h, sat, v), expected, atol=1e-12)


def test_shapes_are_balanced_deterministic_and_not_separable_by_colour():
    pool = ShapePool(seed=0, role="train")
    a = pool.take(np.arange(600), 16)
    b = ShapePool(seed=0, role="train").take(np.arange(600), 16)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert torch.bincount(a.labels).tolist() == [60] * len(CLASS_NAMES)
    # nearest-class-mean on the mean object colour: close to chance (0.1), far from shape accuracy
    w = a.masks.float() / 255
    colour = (a.images.float() * w).sum((2, 3)) / w.sum((2, 3))
    means = torch.stack([colour[a.labels == k].mean(0) for k in range(10)])
    pred = torch.cdist(colour, means).argmin(1)
    assert (pred == a.labels).float().mean() < 0.25
    # the mask covers a class-dependent area but every object is visible
    assert (w.mean((1, 2, 3)) > 0.05).all()


def test_shapes_heldout_instances_differ_from_training_ones():
    train = ShapePool(0, "train").take(np.arange(100), 16)
    held = ShapePool(0, "heldout").take(np.arange(100), 16)
    assert torch.equal(train.labels, held.labels)  # same classes, different instances
    flat_t = train.masks.flatten(1).float()
    flat_h = held.masks.flatten(1).float()
    assert torch.cdist(flat_h, flat_t).min() > 0


def test_digits_heldout_source_indices_are_disjoint():
    from sklearn.datasets import load_digits

    dm = build_datamodule(
        _cfg("data.source=digits", "data.n_train=1500", "data.heldout.typical.n=200")
    )
    train = set(dm.split("train").indices.tolist())
    held = set()
    for name in ("val", "typical", "atypical"):
        s = dm.split(name)
        held |= set(s.indices.tolist())
        assert torch.equal(s.labels, torch.as_tensor(load_digits().target[s.indices]))
    assert train.isdisjoint(held)
    assert len(train) == 1198  # n_train > pool: the whole training pool (2/3 of 1797) is used


# ------------------------------------------------------------------------------ rendering
def _discs(n: int, px: int = 15) -> Objects:
    """Opaque antialiased discs: their coverage centroid is the object's centre."""
    lin = (torch.arange(px) + 0.5) / px * 2 - 1
    r = (lin[None] ** 2 + lin[:, None] ** 2).sqrt()
    mask = ((0.9 - r) * px / 2 + 0.5).clamp(0, 1)
    masks = (mask * 255).round().to(torch.uint8).expand(n, 1, px, px)
    images = torch.full((n, 3, px, px), 200, dtype=torch.uint8)
    return Objects(images, masks, torch.zeros(n, dtype=torch.long), torch.arange(n))


def _alpha_offsets(placement: PlacementConfig, n: int, canvas: int = 48, object_px: float = 10):
    place, bg = draw_split_params(placement, canvas, 0, "train", 0, n)
    _, alpha = composite(_discs(n), place, bg, canvas, object_px, return_alpha=True)
    coords = torch.arange(canvas, dtype=torch.float64) + 0.5
    a = alpha[:, 0].double()
    mass = a.sum((1, 2))
    cx = (a.sum(1) * coords).sum(1) / mass - canvas / 2
    cy = (a.sum(2) * coords).sum(1) / mass - canvas / 2
    return torch.stack([cx, cy], 1), torch.as_tensor(place.offset)


def test_center_placement_puts_the_centroid_at_the_canvas_centre():
    measured, _ = _alpha_offsets(PlacementConfig(position="center", background="flat"), 8)
    assert measured.abs().max() < 1e-3


def test_gaussian_placement_statistics():
    p = PlacementConfig(position="gaussian", sigma_px=2.0, max_offset_px=100.0)  # untruncated
    measured, drawn = _alpha_offsets(p, 2000)
    torch.testing.assert_close(measured, drawn, atol=0.05, rtol=0)  # sub-pixel placement
    assert measured.mean(0).abs().max() < 0.15  # standard error 2 / sqrt(2000) = 0.045
    assert (measured.std(0) - 2.0).abs().max() < 0.12


def test_ring_placement_statistics():
    ring = PlacementConfig(position="ring", radius_px=[5.0, 8.0])
    measured, _ = _alpha_offsets(ring, 2000)
    radius = measured.norm(dim=1)
    assert radius.min() > 4.95 and radius.max() < 8.05
    assert abs(radius.mean().item() - 6.5) < 0.1  # uniform radius in [5, 8]
    assert measured.mean(0).abs().max() < 0.3  # uniform angle


def test_scale_is_log_uniform_and_sets_the_object_area():
    p = PlacementConfig(position="center", scale=[0.5, 2.0])
    scale = sample_placement(p, 4000, np.random.default_rng(0)).scale
    assert scale.min() >= 0.5 and scale.max() <= 2.0
    assert abs(np.log(scale).mean()) < 0.03  # log-uniform on [log 0.5, log 2]: mean 0
    assert abs((scale < 1).mean() - 0.5) < 0.03
    # an opaque square of side object_px * scale covers (object_px * scale)^2 pixels, up to the
    # bilinear edge ramp's sampling error (a fraction of a pixel per edge)
    n = 64
    place, bg = draw_split_params(p, 40, 0, "train", 0, n)
    pool = ArrayPool(torch.full((n, 3, 8, 8), 128, dtype=torch.uint8), torch.zeros(n))
    _, alpha = composite(pool.take(np.arange(n), 8), place, bg, 40, 16.0, return_alpha=True)
    area = torch.as_tensor((16.0 * place.scale) ** 2, dtype=torch.float32)
    torch.testing.assert_close(alpha.sum((1, 2, 3)), area, rtol=0.04, atol=0)


def test_rendering_is_deterministic_per_seed_split_and_index():
    a = build_datamodule(_cfg())
    b = build_datamodule(_cfg("data.n_train=20", "data.heldout.typical.n=5"))
    assert torch.equal(a.split("train").images[:20], b.split("train").images)
    assert torch.equal(a.split("typical").images[:5], b.split("typical").images)
    assert not torch.equal(a.split("val").images, a.split("typical").images)
    other_seed = build_datamodule(_cfg("seed=1", "data.n_train=20"))
    assert not torch.equal(other_seed.split("train").images, b.split("train").images)
    # stored sources are shrunk to a fixed raster: an image does not depend on its batch
    digits = build_datamodule(_cfg("data.source=digits")).split("train")
    few = build_datamodule(_cfg("data.source=digits", "data.n_train=3")).split("train")
    assert torch.equal(digits.images[:3], few.images)


def test_centre_crop_of_a_heldout_rendering_is_the_train_size_window():
    p = PlacementConfig(position="uniform", max_offset_px=3.0, scale=[0.8, 1.2], background="flat")
    objects = ShapePool(0, "heldout").take(np.arange(32), 12)
    big_params = draw_split_params(p, S + 2 * M, 0, "typical", 0, 32)
    small_params = draw_split_params(p, S, 0, "typical", 0, 32)
    big = composite(objects, *big_params, S + 2 * M, 0.6 * S)
    small = composite(objects, *small_params, S, 0.6 * S)
    diff = (center_crop(big, S).int() - small.int()).abs()
    assert diff.max() <= 1  # identical up to float rounding


@pytest.mark.parametrize("background", ["noise", "texture"])
def test_backgrounds_render(background):
    dm = build_datamodule(_cfg(f"data.placement.background={background}", "data.n_train=8"))
    images = dm.split("train").images.float()
    assert images.std((2, 3)).min() > 3  # not flat


def test_render_false_uses_source_images_as_they_are():
    empty = [f"data.heldout.{s}.n=0" for s in ("position", "scale", "background", "atypical")]
    with pytest.raises(ConfigError, match="images are used as they are"):
        _cfg("data.render=false", "data.source=digits")  # a factor split would equal typical
    dm = build_datamodule(_cfg("data.render=false", "data.source=digits", *empty))
    for name in ("train", "val", "typical"):
        s = dm.split(name)
        # No margin: every split shows the images at the model-input size, as in training.
        assert s.margin == 0 and s.images.shape == (len(s.labels), 3, S, S)
        assert s.images.dtype == torch.uint8
    assert "as-is" in dm.describe()


def test_render_scales_rerenders_the_same_images():
    dm = build_datamodule(_cfg())
    views = dm.render_scales("typical", [1.0, 1.15], n=4)
    assert views.shape == (4, 2, 3, S + 2 * M, S + 2 * M)
    assert torch.equal(views[:, 0], dm.split("typical").images[:4])
    assert not torch.equal(views[:, 1], views[:, 0])


# ----------------------------------------------------------------------------- datamodule
def test_dataloaders_and_setup():
    dm = build_datamodule(_cfg())
    dm.setup()
    before = dm.split("train").images
    dm.setup()  # idempotent: nothing is rendered again
    assert dm.split("train").images is before
    batches = list(dm.train_dataloader())
    assert [len(y) for _, y in batches] == [16, 16, 16]
    x, y = batches[0]
    assert x.shape == (16, 3, S, S) and x.dtype == torch.uint8 and y.dtype == torch.int64
    # shuffled with a seeded generator: another module gives the same order
    x2, _ = next(iter(build_datamodule(_cfg()).train_dataloader()))
    assert torch.equal(x, x2)
    assert not torch.equal(x, dm.split("train").images[:16])
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)  # as Lightning does: another epoch, another order
    assert not torch.equal(next(iter(loader))[0], x)
    loader.sampler.set_epoch(0)
    assert torch.equal(next(iter(loader))[0], x)
    for loader, split in (
        (dm.val_dataloader(), "val"),
        (dm.eval_dataloader("atypical"), "atypical"),
    ):
        xs = torch.cat([b[0] for b in loader])
        assert xs.shape == (12, 3, S, S)
        assert torch.equal(xs, dm.split(split).images[..., M : M + S, M : M + S])
    assert dm.eval_dataloader("typical", batch_size=5).batch_size == 5
    workers = build_datamodule(_cfg("data.num_workers=1")).eval_dataloader("val")
    assert workers.num_workers == 1 and workers.persistent_workers
    lines = dm.describe().splitlines()
    assert [ln.split()[0] for ln in lines] == ["train", "val", "typical", "atypical"]
    assert "ring(r=1..2px)" in lines[3] and "3x20x20" in lines[1]
    with pytest.raises(ValueError, match="unknown split"):
        dm.split("test")


@pytest.mark.slow
def test_shapes_are_learnable_by_a_small_cnn():
    """5000 training images at 32 px: a 3-stage CNN passes 85% on the typical split in 6 epochs."""
    from torch import nn

    torch.manual_seed(0)
    dm = build_datamodule(load_config(overrides=["data.batch_size=64"]))

    def stage(i: int, o: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)
        )

    net = nn.Sequential(
        stage(3, 32),
        stage(32, 64),
        stage(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(6):
        for x, y in dm.train_dataloader():
            loss = nn.functional.cross_entropy(net((x.float() / 255 - 0.5) / 0.25), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        hits = [
            (net((x.float() / 255 - 0.5) / 0.25).argmax(1) == y)
            for x, y in dm.eval_dataloader("typical")
        ]
    assert torch.cat(hits).float().mean() >= 0.85


def test_pools_take_a_reversed_index(tmp_path) -> None:
    """A reversed numpy index (a view with negative strides) gives the same objects, reversed."""
    import numpy as np
    import torch
    from PIL import Image

    from train.data.folder import FolderPool
    from train.data.registry import ArrayPool

    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 2, 2)
    pool = ArrayPool(images, torch.tensor([0, 1, 2, 3]))
    forward, backward = pool.take(np.arange(4), 2), pool.take(np.arange(4)[::-1], 2)
    assert torch.equal(backward.images, forward.images.flip(0))
    assert pool.labels_of(np.arange(4)[::-1]).tolist() == [3, 2, 1, 0]
    paths = []
    for k in range(3):
        path = tmp_path / f"{k}.png"
        Image.fromarray(np.full((4, 4, 3), 60 * k, np.uint8)).save(path)
        paths.append((str(path), k))
    folder = FolderPool(paths, 4)
    taken = folder.take(np.arange(3)[::-1], 4)
    assert taken.labels.tolist() == [2, 1, 0] and taken.images[:, 0, 0, 0].tolist() == [120, 60, 0]
    assert folder.labels_of(np.arange(3)[::-1]).tolist() == [2, 1, 0]
