"""Invariance protocols, typicality, the evaluation runner, the callback, reports and plots."""

from __future__ import annotations

import csv
import json
import math
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

import eval.callback
from eval import evaluate, typicality, views
from eval.callback import InvarianceMonitor
from eval.plots import save_plots
from eval.report import format_table, scalars, write_json
from train.config import load_config

SIZE = 16
MARGIN = 4
FAST = ["eval.n_bootstrap=100", "eval.embed_size=0.5", "eval.scales=[0.8,0.9,1.0,1.1]"]


def eval_cfg(*overrides: str) -> Any:
    return load_config(overrides=[*FAST, *overrides]).eval


def random_images(n: int, size: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def make_data(n: int = 12, num_classes: int = 4) -> dict[str, tuple[Tensor, Tensor]]:
    held_out = SIZE + 2 * MARGIN
    labels = torch.arange(n) % num_classes
    return {
        "train": (random_images(40, SIZE, seed=1), torch.arange(40) % num_classes),
        "typical": (random_images(n, held_out, seed=2), labels),
        "atypical": (random_images(n, held_out, seed=3), labels),
    }


class PointwiseGAP(nn.Module):
    """1x1 conv -> ReLU -> global average pool -> Linear: exactly invariant to circular shifts."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


class OnePixel(nn.Module):
    """Classifies from the colour of one pixel position: any shift changes its input."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x[:, :, 5, 7] - 0.5)


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


# ------------------------------------------------------------------------------------ views
def coordinate_image(size: int, margin: int) -> Tensor:
    """uint8 [1, 3, H, W]: channel 0 = row, channel 1 = column, channel 2 = 200 in the margin
    and 100 inside, so every pixel is unique and margin pixels are recognisable."""
    h = size + 2 * margin
    rows = torch.arange(h)[:, None].expand(h, h)
    cols = torch.arange(h)[None, :].expand(h, h)
    tag = torch.full((h, h), 200)
    tag[margin : margin + size, margin : margin + size] = 100
    return torch.stack([rows, cols, tag]).to(torch.uint8)[None]


def test_trajectories() -> None:
    diag = views.trajectory("diagonal", 2)
    assert diag.tolist() == [[-2, -2], [-1, -1], [0, 0], [1, 1], [2, 2]]
    assert views.trajectory("horizontal", 1).tolist() == [[0, -1], [0, 0], [0, 1]]
    assert views.trajectory("vertical", 1).tolist() == [[-1, 0], [0, 0], [1, 0]]
    grid = views.trajectory("grid", 1)
    assert grid.shape == (9, 2) and grid[4].tolist() == [0, 0] and grid[1].tolist() == [-1, 0]
    assert views.trajectory("diagonal", 1, step=0.25).shape == (9, 2)
    with pytest.raises(ValueError, match="Unknown trajectory"):
        views.trajectory("spiral", 1)


def test_crop_views_hold_only_real_pixels_and_are_exact_shifts() -> None:
    img = coordinate_image(SIZE, MARGIN)
    offsets = views.trajectory("grid", MARGIN)
    out = views.translate_views(img, offsets, protocol="crop", size=SIZE) * 255
    out = out.round().long()[0]  # [T, 3, S, S]
    for (dy, dx), view in zip(offsets.long().tolist(), out, strict=True):
        # content moved by (dy, dx): the window's top-left sits at (m - dy, m - dx)
        assert view[0, 0, 0] == MARGIN - dy and view[1, 0, 0] == MARGIN - dx
        assert torch.equal(view[0], torch.arange(SIZE)[:, None].expand(SIZE, SIZE) + MARGIN - dy)
        assert torch.equal(view[1], torch.arange(SIZE)[None, :].expand(SIZE, SIZE) + MARGIN - dx)
        assert set(view[2].unique().tolist()) <= {100, 200}  # margin or image, never a fill
    # the unshifted view is exactly the central image; a full shift reaches the margin
    centre = out[offsets.tolist().index([0.0, 0.0])]
    assert (centre[2] == 100).all()
    corner = out[0]  # (dy, dx) = (-4, -4): window starts at (8, 8)
    assert torch.equal(corner[:, : SIZE - MARGIN, : SIZE - MARGIN], centre[:, MARGIN:, MARGIN:])


def test_crop_without_margin_pads_and_too_small_margin_errors() -> None:
    img = coordinate_image(SIZE, 0)
    out = views.translate_views(img, torch.tensor([[0.0, 2.0]]), protocol="crop", size=SIZE)
    out = (out[0, 0] * 255).round().long()
    # reflect padding: column j of the view is column j - 2 of the image, reflected at 0
    assert out[1, 0, :4].tolist() == [2, 1, 0, 1]
    src, margin, pad = views.translation_source(img, SIZE, 3, "zeros")
    assert (margin, pad) == (3, 3) and src.shape[-1] == SIZE + 6
    small_margin = coordinate_image(SIZE, 2)
    with pytest.raises(ValueError, match="data.eval_margin_px"):
        views.translate_views(
            small_margin, torch.zeros(1, 2), protocol="crop", size=SIZE, max_shift=3
        )


def test_circular_views_are_rolls_of_the_central_crop() -> None:
    img = random_images(2, SIZE + 2 * MARGIN)
    offsets = torch.tensor([[1.0, -2.0], [-3.0, 0.0]])
    out = views.translate_views(img, offsets, protocol="circular", size=SIZE)
    centre = views.center_crop(img, SIZE).float() / 255
    for t, (dy, dx) in enumerate(offsets.long().tolist()):
        assert torch.equal(out[:, t], torch.roll(centre, (dy, dx), dims=(2, 3)))


def test_embed_places_the_image_where_it_says() -> None:
    img = torch.full((1, 3, SIZE, SIZE), 255, dtype=torch.uint8)
    e = views.embed_size_px(SIZE, 0.5)  # 8 px block, free border (16 - 8) / 2 = 4
    out = views.translate_views(
        img, torch.tensor([[2.0, -1.0]]), protocol="embed", size=SIZE, embed_size=0.5
    )[0, 0]
    expected = torch.zeros(3, SIZE, SIZE)
    expected[:, 4 + 2 : 4 + 2 + e, 4 - 1 : 4 - 1 + e] = 1.0
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="embed_size"):
        views.translate_views(
            img, torch.tensor([[5.0, 0.0]]), protocol="embed", size=SIZE, embed_size=0.5
        )


def test_embed_fills() -> None:
    colour = torch.tensor([50, 100, 150], dtype=torch.uint8).view(1, 3, 1, 1)
    img = colour.expand(1, 3, SIZE, SIZE).clone()
    offsets = torch.zeros(1, 2)
    mean = views.translate_views(
        img, offsets, protocol="embed", size=SIZE, embed_size=0.5, fill="mean"
    )
    # a flat image on its own mean colour is flat everywhere
    torch.testing.assert_close(mean[0, 0], (colour.float() / 255)[0].expand(3, SIZE, SIZE))
    ramp = torch.arange(SIZE).mul(10).to(torch.uint8).view(1, 1, 1, SIZE).expand(1, 3, SIZE, SIZE)
    inpaint = views.translate_views(
        ramp, offsets, protocol="embed", size=SIZE, embed_size=0.5, fill="inpaint"
    )[0, 0]
    # edge replication: the canvas left of the pasted block copies its first column
    assert torch.equal(inpaint[:, :, :4], inpaint[:, :, 4:5].expand(3, SIZE, 4))
    assert torch.equal(inpaint[:, :4, :], inpaint[:, 4:5, :].expand(3, 4, SIZE))


def test_subpixel_matches_crop_at_integers_and_interpolates_halfway() -> None:
    img = random_images(2, SIZE + 2 * MARGIN)
    whole = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    sub = views.translate_views(img, whole, protocol="subpixel", size=SIZE)
    crop = views.translate_views(img, whole, protocol="crop", size=SIZE)
    torch.testing.assert_close(sub, crop, atol=1e-5, rtol=0)
    half = views.translate_views(img, torch.tensor([[0.0, 0.5]]), protocol="subpixel", size=SIZE)
    pair = views.translate_views(
        img, torch.tensor([[0.0, 0.0], [0.0, 1.0]]), protocol="crop", size=SIZE
    )
    torch.testing.assert_close(half[:, 0], pair.mean(1), atol=1e-5, rtol=0)


def test_scale_trajectory_shape_and_block_sizes() -> None:
    img = torch.full((2, 3, SIZE + 2 * MARGIN, SIZE + 2 * MARGIN), 255, dtype=torch.uint8)
    scales = [0.5, 1.0, 1.5]
    out = views.scale_views(img, scales, size=SIZE, embed_size=0.5)
    assert out.shape == (2, 3, 3, SIZE, SIZE)
    for t, s in enumerate(scales):
        side = views.embed_size_px(SIZE, 0.5, s)  # 4, 8, 12 px
        assert int((out[0, t, 0] > 0.5).sum()) == side * side
        lo = (SIZE - side) // 2
        assert bool((out[0, t, :, lo : lo + side, lo : lo + side] == 1).all())
    with pytest.raises(ValueError, match="eval.scales"):
        views.scale_views(img, [2.5], size=SIZE, embed_size=0.5)


# ------------------------------------------------------------------------------- typicality
def test_knn_distance_on_known_points_and_chunking() -> None:
    reference = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    queries = torch.tensor([[0.5], [9.0], [2.0]])
    # k=2: 0.5 -> {0, 1}: (0.5 + 0.5) / 2 = 0.5;  9 -> {10, 2}: (1 + 7) / 2 = 4;
    #      2 -> {2, 1}: (0 + 1) / 2 = 0.5
    expected = torch.tensor([0.5, 4.0, 0.5])
    torch.testing.assert_close(typicality.knn_distance(queries, reference, k=2), expected)
    torch.testing.assert_close(
        typicality.knn_distance(queries, reference, k=2, chunk_size=1), expected
    )
    gen = torch.Generator().manual_seed(0)
    q, r = torch.randn(37, 5, generator=gen), torch.randn(101, 5, generator=gen)
    torch.testing.assert_close(
        typicality.knn_distance(q, r, k=3, chunk_size=8), typicality.knn_distance(q, r, k=3)
    )
    with pytest.raises(ValueError, match="k=5"):
        typicality.knn_distance(q, r[:4], k=5)


def test_quantile_masks_and_bins() -> None:
    scores = torch.arange(10.0)
    typ, atyp = typicality.quantile_masks(scores, 0.2)
    assert typ.nonzero().flatten().tolist() == [0, 1]
    assert atyp.nonzero().flatten().tolist() == [8, 9]
    idx, edges = typicality.bin_index(scores, 5)
    assert idx.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and len(edges) == 6
    assert typicality.binned_mean(scores, idx, 5) == [0.5, 2.5, 4.5, 6.5, 8.5]


def test_penultimate_features_hook() -> None:
    model = SmallCNN()
    x = torch.rand(3, 3, SIZE, SIZE)
    with typicality.PenultimateFeatures(model) as hook:
        model.eval()
        model(x)
        feats = hook.pop()
    torch.testing.assert_close(feats, model.features(x))
    assert not model.fc._forward_pre_hooks  # removed on exit


# ----------------------------------------------------------------------------------- runner
def test_exactly_invariant_model_under_circular_shifts() -> None:
    report = evaluate(
        PointwiseGAP(),
        make_data(),
        eval_cfg("eval.protocol=circular", "eval.transforms=[translate]", "eval.trajectory=grid"),
        image_size=SIZE,
        progress=False,
    )
    for split in ("typical", "atypical"):
        block = report["splits"][split]["translate"]
        assert block["p_change"] == {"mean": 0.0, "ci": [0.0, 0.0]}
        assert block["consistency"] == {"mean": 1.0, "ci": [1.0, 1.0]}
        assert block["mac"]["mean"] < 1e-6
        cos = torch.tensor(block["cosine_map"])
        assert cos.shape == (2 * 4 + 1, 2 * 4 + 1)
        torch.testing.assert_close(cos, torch.ones_like(cos))


def test_one_pixel_model_is_not_invariant() -> None:
    cfg = eval_cfg("eval.transforms=[translate]")
    report = evaluate(OnePixel(), make_data(), cfg, image_size=SIZE, progress=False)
    block = report["splits"]["typical"]["translate"]
    assert block["p_change"]["mean"] > 0.1
    assert block["consistency"]["mean"] < 1.0
    assert block["mac"]["mean"] > 0


def test_report_schema_and_reproducibility() -> None:
    cfg = eval_cfg("eval.typicality.method=pixels", "eval.typicality.n_bins=3", "eval.n_images=10")
    data = make_data()
    report = evaluate(SmallCNN(), data, cfg, image_size=SIZE, progress=False)
    assert set(report) == {"splits", "protocol", "typicality"}
    for split in ("typical", "atypical"):
        block = report["splits"][split]
        assert block["n_images"] == 10
        assert set(block["accuracy"]) == {"mean", "ci"}
        for tr, n_views in (("translate", 9), ("scale", 4)):
            t = block[tr]
            for metric in ("p_change", "mac", "consistency", "worst_case_accuracy"):
                lo, hi = t[metric]["ci"]
                assert lo <= t[metric]["mean"] <= hi
            assert len(t["accuracy_by_view"]) == len(t["feature_cosine_by_view"]) == n_views
            assert len(t["p_change_by_step"]) == n_views - 1
        assert block["translate"]["offsets"][0] == [-4.0, -4.0]
        assert block["scale"]["scales"] == [0.8, 0.9, 1.0, 1.1]
        # worst case <= accuracy of every view
        assert block["translate"]["worst_case_accuracy"]["mean"] <= min(
            block["translate"]["accuracy_by_view"]
        )
        # the unshifted view of the crop protocol is the central crop
        assert block["translate"]["accuracy_by_view"][4] == block["accuracy"]["mean"]
        assert block["translate"]["feature_cosine_by_view"][4] == pytest.approx(1.0)
    proto = report["protocol"]
    assert proto["protocol"] == "crop" and proto["padding_px"] == {"typical": 0, "atypical": 0}
    assert proto["n_images"] == {"typical": 10, "atypical": 10}
    typ = report["typicality"]
    assert typ["n_reference"] == 40 and len(typ["curve"]["score"]) == 3
    assert typ["subsets"]["typical"]["score"]["mean"] < typ["subsets"]["atypical"]["score"]["mean"]
    again = evaluate(SmallCNN(), data, cfg, image_size=SIZE, progress=False)
    assert json.dumps(again, sort_keys=True) == json.dumps(report, sort_keys=True)


def test_protocols_run_and_train_split_is_padded() -> None:
    data = make_data(n=6)
    for protocol in ("embed", "subpixel"):
        cfg = eval_cfg(
            f"eval.protocol={protocol}",
            "eval.splits=[train]",
            "eval.transforms=[translate]",
            "eval.max_shift_px=2",
        )
        report = evaluate(SmallCNN(), data, cfg, image_size=SIZE, progress=False)
        n_views = 5 if protocol == "embed" else 17  # subpixel: 2 * 2 / 0.25 + 1
        assert len(report["splits"]["train"]["translate"]["offsets"]) == n_views
        if protocol == "subpixel":
            assert report["protocol"]["padding_px"] == {"train": 2}
            assert report["protocol"]["pad_mode"] == "reflect"


def test_model_mode_and_device_are_restored() -> None:
    model = SmallCNN().train()
    evaluate(model, make_data(n=4), eval_cfg("eval.n_images=4"), image_size=SIZE, progress=False)
    assert model.training


class ThreadGather:
    """A two-rank all-gather simulated with threads: concatenates the ranks' shards in order."""

    def __init__(self, rank: int, world: int, slots: list, barrier: threading.Barrier) -> None:
        self.rank, self.world_size, self.slots, self.barrier = rank, world, slots, barrier

    def __call__(self, values: Tensor) -> Tensor:
        self.slots[self.rank] = values.clone()
        self.barrier.wait()
        out = torch.cat(list(self.slots))
        self.barrier.wait()  # everyone has read before the next call overwrites
        return out


def sharded_reports(make_model: Any, data: Any, cfg: Any, size: int, world: int = 2) -> list:
    """``evaluate`` on ``world`` threads that shard the images and gather through threads."""
    slots: list = [None] * world
    barrier = threading.Barrier(world)
    reports: list[dict | None] = [None] * world
    replicas = [make_model() for _ in range(world)]  # seeded init: build before the threads

    def run(rank: int) -> None:
        gather = ThreadGather(rank, world, slots, barrier)
        reports[rank] = evaluate(
            replicas[rank], data, cfg, image_size=size, progress=False, gather=gather
        )

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None for r in reports)
    return reports


@pytest.mark.parametrize("n_images", [11, 1])  # uneven shards; fewer images than ranks
def test_sharded_and_gathered_equals_single_process(n_images: int) -> None:
    cfg = eval_cfg(
        f"eval.n_images={n_images}", "eval.typicality.method=features", "eval.typicality.k=3"
    )
    data = make_data(n=13)
    single = evaluate(SmallCNN(), data, cfg, image_size=SIZE, progress=False)
    for report in sharded_reports(SmallCNN, data, cfg, SIZE):
        assert report["protocol"].pop("world_size") == 2
        single["protocol"].pop("world_size", None)
        assert_reports_close(report, single)


def assert_reports_close(a: Any, b: Any, path: str = "report") -> None:
    """Same structure, same integers/strings; floats equal up to batch-size rounding."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_reports_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_reports_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6, nan_ok=True), path
    else:
        assert a == b, path


# --------------------------------------------------------------------------- report & plots
def test_format_table_and_json_and_plots(tmp_path: Path) -> None:
    cfg = eval_cfg(
        "eval.trajectory=grid",
        "eval.max_shift_px=2",
        "eval.typicality.method=pixels",
        "eval.typicality.n_bins=2",
    )
    report = evaluate(SmallCNN(), make_data(n=8), cfg, image_size=SIZE, progress=False)
    table = format_table(report)
    assert "P(top-1 change)" in table and "worst-case acc" in table
    lines = table.splitlines()
    # split x transform rows, then the typicality-scored quantile subsets
    assert [line.split("  ")[0] for line in lines[3:11]] == [
        *["typical"] * 2,
        *["atypical"] * 2,
        *["typical (scored)"] * 2,
        *["atypical (scored)"] * 2,
    ]
    # then the differences to typical (atypical only) and the conditional metrics
    assert lines[12].startswith("difference to typical")
    assert [line.split("  ")[0] for line in lines[15:17]] == ["atypical"] * 2
    gap = report["splits"]["atypical"]["translate"]["gap_to_typical"]["p_change"]
    assert f"{gap['mean']:+.3f} [{gap['ci'][0]:+.3f}, {gap['ci'][1]:+.3f}]" in lines[15]
    assert lines[18].startswith("on images classified correctly")
    assert [line.split("  ")[0] for line in lines[21:25]] == ["typical"] * 2 + ["atypical"] * 2
    mean = report["splits"]["typical"]["translate"]["p_change"]
    assert f"{mean['mean']:.3f} [{mean['ci'][0]:.3f}, {mean['ci'][1]:.3f}]" in table
    path = write_json(report, tmp_path / "r" / "inv.json")
    assert json.loads(path.read_text())["protocol"]["trajectory"] == "grid"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    written = save_plots(report, tmp_path / "plots")
    names = {p.name for p in written}
    assert names == {
        "invariance_scale.png",
        "invariance_typicality.png",
        "invariance_cosine_map.png",
    }
    assert all(p.stat().st_size > 1000 for p in written)
    report_1d = evaluate(SmallCNN(), make_data(n=4), eval_cfg(), image_size=SIZE, progress=False)
    assert "invariance_translate.png" in {p.name for p in save_plots(report_1d, tmp_path / "p")}
    keys = scalars(report)
    assert keys["invariance/typical/translate/p_change"] == mean["mean"]
    assert "invariance/atypical/accuracy" in keys


# ---------------------------------------------------------------------------------- callback
class TinyData(L.LightningDataModule):
    """Exposes ``split(name)`` like invlab's datamodule; held-out splits carry a margin."""

    def __init__(self) -> None:
        super().__init__()
        self.data = make_data(n=8)
        self.data["val"] = self.data["typical"]
        self.num_classes = 4

    def split(self, name: str) -> SimpleNamespace:
        images, labels = self.data[name]
        return SimpleNamespace(images=images, labels=labels, margin=(images.shape[-1] - SIZE) // 2)

    def train_dataloader(self) -> Any:
        images, labels = self.data["train"]
        return torch.utils.data.DataLoader(list(zip(images, labels, strict=True)), batch_size=8)

    def val_dataloader(self) -> Any:
        images, labels = self.data["val"]
        crops = views.center_crop(images, SIZE)
        return torch.utils.data.DataLoader(list(zip(crops, labels, strict=True)), batch_size=8)


class TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN()

    def forward(self, x01: Tensor) -> Tensor:
        return self.net(x01)

    def training_step(self, batch: Any, _idx: int) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self(images.float() / 255), labels)

    def validation_step(self, batch: Any, _idx: int) -> None:
        images, labels = batch
        self.log("val/loss", F.cross_entropy(self(images.float() / 255), labels))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path: Path, every: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list, Path]:
    calls: list[bool] = []
    real = eval.callback.evaluate

    def counting(model: nn.Module, data: Any, *args: Any, **kwargs: Any) -> dict:
        calls.append(model.trainer.sanity_checking)
        return real(model, data, *args, **kwargs)

    monkeypatch.setattr(eval.callback, "evaluate", counting)
    cfg = eval_cfg(f"eval.every_n_epochs={every}", "eval.n_images=6", "eval.plots=false")
    monitor = InvarianceMonitor(cfg, image_size=SIZE, out_dir=tmp_path)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        logger=logger,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        accelerator="cpu",
    )
    trainer.fit(TinyModule(), datamodule=TinyData())
    return monitor, calls, Path(logger.log_dir) / "metrics.csv"


def test_callback_logs_writes_json_and_skips_sanity_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor, calls, metrics_csv = _fit(tmp_path, every=1, monkeypatch=monkeypatch)
    # once per epoch (the final evaluation reuses the last one), never in the sanity check
    assert calls == [False, False]
    reports = sorted((tmp_path / "reports").glob("invariance_epoch*.json"))
    assert [p.name for p in reports] == ["invariance_epoch000.json", "invariance_epoch001.json"]
    assert monitor.final_report is not None
    assert json.loads(reports[-1].read_text()) == json.loads(json.dumps(monitor.final_report))
    with metrics_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    key = "invariance/typical/translate/p_change"
    logged = [float(r[key]) for r in rows if r.get(key)]
    assert len(logged) >= 2
    final = monitor.final_report["splits"]["typical"]["translate"]["p_change"]["mean"]
    assert math.isclose(logged[-1], final, rel_tol=1e-6)


def test_callback_every_zero_runs_once_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor, calls, metrics_csv = _fit(tmp_path, every=0, monkeypatch=monkeypatch)
    assert calls == [False]
    assert monitor.final_report is not None and monitor.final_report["epoch"] == 2
    assert "invariance/atypical/scale/mac" in metrics_csv.read_text().splitlines()[0]


# ------------------------------------------------------- invlab datamodule and checkpoints
SMALL = [
    "data.image_size=16",
    "data.eval_margin_px=2",
    "data.n_train=48",
    "data.n_val=8",
    "data.heldout.typical.n=10",
    "data.heldout.atypical.n=10",
    "data.heldout.position.n=0",
    "data.heldout.scale.n=0",
    "data.heldout.background.n=0",
    "data.heldout.atypical.radius_px=[1,2]",
    "data.placement.max_offset_px=1",
    "model.widths=[8,16]",
    "eval.max_shift_px=2",
    "eval.n_bootstrap=100",
    "eval.embed_size=0.5",
    "eval.typicality.method=pixels",
    "eval.typicality.k=2",
    "eval.typicality.n_bins=2",
]


def test_evaluate_on_the_invlab_datamodule() -> None:
    from train.data import build_datamodule

    cfg = load_config(overrides=SMALL)
    dm = build_datamodule(cfg)
    dm.setup()
    report = evaluate(SmallCNN(dm.num_classes), dm, cfg.eval, image_size=16, progress=False)
    assert report["protocol"]["padding_px"] == {"typical": 0, "atypical": 0}  # real margin
    assert report["protocol"]["n_images"] == {"typical": 10, "atypical": 10}
    assert report["typicality"]["n_reference"] == 48
    too_far = load_config(overrides=[*SMALL, "eval.max_shift_px=3"]).eval
    with pytest.raises(ValueError, match="raise data.eval_margin_px"):
        evaluate(SmallCNN(dm.num_classes), dm, too_far, image_size=16, progress=False)


class Recorder(PointwiseGAP):
    """Keeps every batch of views it is given (uint8-exact: views are ``k / 255``)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__(num_classes)
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.clone())
        return super().forward(x)


def test_scale_render_protocol_rerenders_the_held_out_scene() -> None:
    from train.data import build_datamodule

    scales = [0.8, 0.9, 1.0, 1.1, 1.2]
    cfg = load_config(
        overrides=[
            "data.frame_scale=1.2",
            *SMALL,
            f"eval.scales=[{','.join(map(str, scales))}]",
            "eval.transforms=[scale]",
            "eval.splits=[typical]",  # flat backgrounds: the object is what differs from them
            "eval.typicality.method=none",
        ]
    )
    dm = build_datamodule(cfg)
    dm.setup()
    model = Recorder(dm.num_classes)
    report = evaluate(model, dm, cfg.eval, image_size=16, progress=False)
    assert report["protocol"]["scale_protocol"] == "render"
    assert report["protocol"]["fill"] is None and report["protocol"]["embed_size"] is None
    (batch,) = model.inputs  # one chunk: [centre, s_0 .. s_4] per image
    seen = (batch * 255).round().to(torch.uint8).view(10, 1 + len(scales), 3, 16, 16)
    held_out = views.center_crop(dm.split("typical").images[:10], 16)
    assert torch.equal(seen[:, 0], held_out)
    assert torch.equal(seen[:, 1 + scales.index(1.0)], held_out)  # s = 1 is the test image
    # The object's mass (its contrast with the flat background, summed) grows with the scale,
    # in proportion to the area s^2.
    x = seen[:, 1:].float() / 255
    mass = (x - x[..., :1, :1]).abs().amax(2).sum((-2, -1))  # [10, T]
    assert bool((mass.diff(dim=1) > 0).all())
    ratio = (mass / mass[:, [scales.index(1.0)]]).mean(0)
    torch.testing.assert_close(ratio, torch.tensor(scales) ** 2, rtol=0.1, atol=0)
    curve = report["splits"]["typical"]["scale"]
    assert curve["scales"] == scales and curve["feature_cosine_by_view"][2] == pytest.approx(1.0)


def test_scale_protocol_falls_back_to_embed_and_says_so() -> None:
    from train.data import build_datamodule

    scale_only = ["eval.transforms=[scale]", "eval.splits=[typical]", "eval.n_images=4"]
    data = make_data(n=4)
    tensors = evaluate(SmallCNN(), data, eval_cfg(*scale_only), image_size=SIZE, progress=False)
    assert tensors["protocol"]["scale_protocol"] == "embed"
    assert tensors["protocol"]["scale_protocol_requested"] == "render"
    assert tensors["protocol"]["fill"] == "black" and tensors["protocol"]["embed_size"] == 0.5
    natural = ["data.render=false", "data.heldout.atypical.n=0"]  # nothing to re-render
    for overrides in (natural, ["eval.scale_protocol=embed"]):
        cfg = load_config(overrides=[*SMALL, *scale_only, *overrides])
        dm = build_datamodule(cfg)
        dm.setup()
        model = Recorder(dm.num_classes)
        report = evaluate(model, dm, cfg.eval, image_size=16, progress=False)
        assert report["protocol"]["scale_protocol"] == "embed"
        images = dm.split("typical").images[:4]
        expected = views.scale_views(images, list(cfg.eval.scales), size=16, embed_size=0.5)
        assert torch.equal(model.inputs[0].view(4, -1, 3, 16, 16)[:, 1:], expected)
    translate_only = eval_cfg("eval.transforms=[translate]")
    no_scale = evaluate(SmallCNN(), data, translate_only, image_size=SIZE, progress=False)
    assert no_scale["protocol"]["scale_protocol"] is None


def test_rendered_scales_sharded_equal_single_process() -> None:
    from train.data import build_datamodule

    cfg = load_config(overrides=[*SMALL, "eval.n_images=9", "eval.typicality.method=none"])
    dm = build_datamodule(cfg)
    dm.setup()
    single = evaluate(SmallCNN(dm.num_classes), dm, cfg.eval, image_size=16, progress=False)
    assert single["protocol"]["scale_protocol"] == "render"
    for report in sharded_reports(lambda: SmallCNN(dm.num_classes), dm, cfg.eval, 16):
        assert report["protocol"].pop("world_size") == 2
        single["protocol"].pop("world_size", None)
        assert_reports_close(report, single)


def test_evaluate_checkpoint_lightning_and_plain_weights(tmp_path: Path) -> None:
    import models
    from invlab.config import to_container
    from train.data import build_datamodule
    from train.module import Classifier
    from train.standalone import evaluate_checkpoint

    cfg = load_config(overrides=SMALL)
    dm = build_datamodule(cfg)
    dm.setup()
    torch.manual_seed(1)
    clf = Classifier(cfg, num_classes=dm.num_classes)
    ckpt = tmp_path / "last.ckpt"
    hparams = {"config": to_container(cfg), "num_classes": dm.num_classes}
    torch.save({"state_dict": clf.state_dict(), "hyper_parameters": hparams}, ckpt)
    report = evaluate_checkpoint(ckpt, cfg, tmp_path / "out", progress=False, device="cpu")
    direct = evaluate(clf, dm, cfg.eval, image_size=16, progress=False)
    assert_reports_close({k: report[k] for k in direct}, direct)
    assert json.loads((tmp_path / "out" / "invariance.json").read_text())["checkpoint"] == str(ckpt)
    assert (tmp_path / "out" / "invariance_translate.png").exists()

    weights = models.export_weights(clf.net, tmp_path / "net.safetensors")
    plain = evaluate_checkpoint(weights, cfg, tmp_path / "plain", progress=False, device="cpu")
    assert_reports_close({k: plain[k] for k in direct}, direct)


def test_config_mistakes_are_config_errors() -> None:
    from eval.runner import make_plan
    from invlab.config import ConfigError

    with pytest.raises(ConfigError, match="at least 1 px"):
        make_plan(eval_cfg("eval.max_shift_px=0"), SIZE)
    with pytest.raises(ConfigError, match="multiple of eval.subpixel_step"):
        make_plan(eval_cfg("eval.protocol=subpixel", "eval.subpixel_step=0.3"), SIZE)
    with pytest.raises(ConfigError, match="eval.typicality.method=pixels"):
        no_linear = nn.Conv2d(3, 3, 1)
        images = torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8)
        typicality.feature_embedding(no_linear, images, SIZE, device=torch.device("cpu"))


# ------------------------------------------------------------- conditional metrics and gaps
def test_given_correct_and_gap_to_typical_by_hand() -> None:
    """Hand-made per-image values through the report's aggregation: the conditional block keeps
    the images right at the reference view; the gap is split minus typical."""
    from eval.runner import _summary, add_gaps, make_plan

    cfg = eval_cfg("eval.transforms=[translate]", "eval.max_shift_px=1", "eval.n_bootstrap=200")
    plan = make_plan(cfg, SIZE)  # diagonal -1, 0, +1: the reference view is index 1

    def values(reference: list[float], p_change: list[float]) -> dict[str, Tensor]:
        n = len(reference)
        by_view = torch.ones(n, 3)
        by_view[:, 1] = torch.tensor(reference)
        v = {
            "accuracy": torch.ones(n),  # the centre crop: not what the transform reports
            "translate/correct_by_view": by_view,
            "translate/p_change": torch.tensor(p_change),
        }
        for m in ("mac", "consistency", "worst_case_accuracy"):
            v[f"translate/{m}"] = torch.zeros(n)
        return v

    per_split = {
        "typical": values([1, 1, 0, 0], [0.0, 0.5, 1.0, 1.0]),
        "far": values([1, 0, 0, 0, 0], [1.0, 1.0, 1.0, 0.5, 0.5]),
    }
    groups = {"typical": None, "far": None}
    report = {"splits": {s: _summary(v, plan, cfg, curves=False) for s, v in per_split.items()}}
    add_gaps(report, per_split, groups, plan, cfg)
    typ, far = report["splits"]["typical"]["translate"], report["splits"]["far"]["translate"]
    assert typ["accuracy"]["mean"] == 0.5 and far["accuracy"]["mean"] == 0.2  # reference view
    assert typ["p_change"]["mean"] == 0.625 and far["p_change"]["mean"] == 0.8
    # given correct: typical images 0 and 1 -> (0 + 0.5) / 2; far image 0 only -> 1.0
    assert typ["given_correct"]["n_images"] == 2 and far["given_correct"]["n_images"] == 1
    assert typ["given_correct"]["p_change"]["mean"] == 0.25
    assert far["given_correct"]["p_change"] == {"mean": 1.0, "ci": [1.0, 1.0]}
    gap = far["gap_to_typical"]
    assert gap["accuracy"]["mean"] == pytest.approx(0.2 - 0.5)
    assert gap["p_change"]["mean"] == pytest.approx(0.8 - 0.625)
    assert gap["given_correct"]["p_change"]["mean"] == pytest.approx(1.0 - 0.25)
    lo, hi = gap["p_change"]["ci"]
    assert lo <= gap["p_change"]["mean"] <= hi
    assert "gap_to_typical" not in typ
    assert report["splits"]["far"]["gap_to_typical"]["accuracy"]["mean"] == 0.0  # centre crops
    flat = scalars(report)
    assert flat["invariance/far/translate/gap/p_change"] == pytest.approx(0.175)
    assert flat["invariance/typical/translate/given_correct/p_change"] == 0.25


def test_accuracy_comes_from_the_protocols_own_views() -> None:
    """With the embed protocol shrinking images, the transform's accuracy is that of its own
    reference view, not the centre crop's; the report states the scale the protocol produced."""
    data = make_data(n=12)
    for protocol, size in (("crop", None), ("embed", "0.5")):
        extra = [f"eval.protocol={protocol}", "eval.transforms=[translate]", "eval.max_shift_px=2"]
        if size:
            extra.append(f"eval.embed_size={size}")
        report = evaluate(SmallCNN(), data, eval_cfg(*extra), image_size=SIZE, progress=False)
        block = report["splits"]["typical"]["translate"]
        anchor = block["offsets"].index([0.0, 0.0])
        assert block["accuracy"]["mean"] == pytest.approx(block["accuracy_by_view"][anchor])
        scale = report["protocol"]["embed_object_scale"]
        assert scale == (None if protocol == "crop" else {"translate": 0.5})


def test_embed_keeps_the_object_scale_by_default() -> None:
    # the unshifted embedded view is the central S - 2m pixels, untouched, on the fill
    images = random_images(3, SIZE + 2 * MARGIN)
    v = views.translate_views(
        images, torch.zeros(1, 2), protocol="embed", size=SIZE, embed_size=None, max_shift=2
    )[:, 0]
    crop = views.center_crop(images, SIZE)
    torch.testing.assert_close(v[..., 2:-2, 2:-2], crop[..., 2:-2, 2:-2].float() / 255)
    assert v[..., :2, :].abs().max() == 0  # black fill outside


def test_report_has_homogeneity_of_each_split() -> None:
    from eval.homogeneity import homogeneity_report

    data = make_data(n=8)
    cfg = eval_cfg("eval.transforms=[translate]", "eval.max_shift_px=2", "eval.n_bootstrap=100")
    report = evaluate(SmallCNN(), data, cfg, image_size=SIZE, progress=False)
    crops = views.center_crop(data["atypical"][0], SIZE)
    expected = homogeneity_report(crops, [2, 3, 4, 5], 100, 0.95, 0)
    assert report["splits"]["atypical"]["homogeneity"] == expected


def test_grid_reports_local_and_global_feature_cosine() -> None:
    """Local = mean cosine over shifts within 2 px per axis (25 of the 49 offsets of a +-3 grid),
    global = over all of them; a circularly invariant model has 1.0 for both under `circular`."""
    data = make_data(n=6)
    cfg = eval_cfg(
        "eval.transforms=[translate]",
        "eval.trajectory=grid",
        "eval.max_shift_px=3",
        "eval.protocol=circular",
    )
    report = evaluate(PointwiseGAP(), data, cfg, image_size=SIZE, progress=False)
    block = report["splits"]["typical"]["translate"]
    assert block["cosine_local"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert block["cosine_global"]["mean"] == pytest.approx(1.0, abs=1e-5)
    cfg = eval_cfg("eval.transforms=[translate]", "eval.trajectory=grid", "eval.max_shift_px=3")
    report = evaluate(SmallCNN(), data, cfg, image_size=SIZE, progress=False)
    block = report["splits"]["typical"]["translate"]
    grid = torch.tensor(block["cosine_map"])
    offsets = torch.tensor(block["offsets"])
    local = offsets.abs().amax(1) <= 2
    assert block["cosine_local"]["mean"] == pytest.approx(float(grid.flatten()[local].mean()))
    assert block["cosine_global"]["mean"] == pytest.approx(float(grid.mean()))
