"""Per-layer shift equivariance (eval.equivariance) on constructed networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import models
from eval.equivariance import (
    auto_layers,
    circular_upsample,
    compare_shifted,
    layer_distances,
    resolve_layers,
    scalars,
    shift_grid,
)
from invlab.config import ConfigError, EquivarianceConfig, ModelConfig, schema
from tests.conftest import tiny_config

SIZE = 16


def _images(n: int = 4, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, padding_mode="circular")


class Net(nn.Module):
    """``features`` (a Sequential) -> global average pool -> Linear."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_stride_one_circular_network_is_exactly_equivariant_everywhere() -> None:
    torch.manual_seed(0)
    net = Net(_conv(3, 8), nn.ReLU(), _conv(8, 8), nn.ReLU(), _conv(8, 8))
    layers = ["features.0", "features.1", "features.2", "features.3", "features.4", "penultimate"]
    shifts = shift_grid(3)
    dists = layer_distances(net, _images(), layers, shifts)
    for name in layers:
        assert all(dists[name].exact), name  # stride 1 divides every shift
        for metric, values in dists[name].values.items():
            assert values.shape == (4, len(shifts))
            assert values.abs().max() < 1e-6, (name, metric)


def test_aps_with_circular_padding_is_invariant_at_its_pooled_output() -> None:
    torch.manual_seed(0)
    cfg = OmegaConf.structured(ModelConfig(name="cnn", widths=[8, 16, 16], padding_mode="circular"))
    net = models.build(cfg, num_classes=4)
    models.antialias(net, "aps", pad_mode="circular", input_size=SIZE)
    net.eval()
    dists = layer_distances(net, _images(6), ["penultimate"], shift_grid(3))
    for values in dists["penultimate"].values.values():
        assert values.abs().max() < 1e-5


def test_plain_strided_network_loses_equivariance_from_its_first_strided_layer() -> None:
    torch.manual_seed(0)
    net = Net(_conv(3, 8), nn.ReLU(), _conv(8, 8, stride=2), nn.ReLU(), _conv(8, 8))
    layers = ["features.1", "features.2", "features.3", "features.4", "penultimate"]
    shifts = shift_grid(2)
    dists = layer_distances(net, _images(), layers, shifts)
    assert dists["features.1"].values["cosine_distance"].abs().max() < 1e-6
    for name in layers[1:]:
        for metric, values in dists[name].values.items():
            assert values.mean() > 1e-5, (name, metric)  # exact layers stay below 1e-6
    # shifts the stride divides compare exactly; the odd ones are resampled
    exact = dict(zip(shifts, dists["features.2"].exact, strict=True))
    assert exact[(2, 0)] and exact[(-2, 2)] and not exact[(1, 0)] and not exact[(1, 2)]


class PositionNoise(nn.Module):
    """Adds a fixed pattern to a map: a layer that is not shift-equivariant at all."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("pattern", torch.randn(shape, generator=torch.Generator()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pattern


def test_shift_by_multiple_of_stride_compares_without_resampling() -> None:
    torch.manual_seed(1)
    torch.manual_seed(1)
    net = Net(_conv(3, 8, stride=2), PositionNoise((8, SIZE // 2, SIZE // 2)))
    x = _images(3)
    shift = (2, -2)  # the cumulative stride 2 divides it
    dists = layer_distances(net, x, ["features.1"], [shift])
    assert dists["features.1"].exact == [True]
    with torch.no_grad():
        ref = net.features(x)
        moved = net.features(torch.roll(x, shift, dims=(-2, -1)))
    # by hand: the map rolled by shift / stride, no resampling
    a = torch.roll(ref, (1, -1), dims=(-2, -1))
    by_hand = 1 - nn.functional.cosine_similarity(a, moved, dim=1).mean((1, 2))
    l2 = (a - moved).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    got = dists["features.1"].values
    torch.testing.assert_close(got["cosine_distance"][:, 0], by_hand, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["l2"][:, 0], l2, atol=1e-6, rtol=1e-5)
    # resampling would change the number
    up = torch.roll(circular_upsample(ref, (SIZE, SIZE)), shift, dims=(-2, -1))
    resampled = 1 - nn.functional.cosine_similarity(
        up, circular_upsample(moved, (SIZE, SIZE)), dim=1
    ).mean((1, 2))
    assert (resampled - by_hand).abs().min() > 1e-3


def test_circular_upsample_commutes_with_rolls_by_whole_cells() -> None:
    f = torch.randn(2, 3, 4, 4)
    up = circular_upsample(f, (8, 8))
    torch.testing.assert_close(
        circular_upsample(torch.roll(f, (1, -1), dims=(-2, -1)), (8, 8)),
        torch.roll(up, (2, -2), dims=(-2, -1)),
    )
    # a constant map stays constant (no border effects), and the size is the one asked for
    c = circular_upsample(torch.ones(1, 1, 3, 5), (12, 10))
    assert c.shape == (1, 1, 12, 10) and torch.allclose(c, torch.ones_like(c))


def test_compare_shifted_zero_shift_and_zero_features() -> None:
    f = torch.zeros(2, 4, 3, 3)
    cos, l2, exact = compare_shifted(f, f, (0, 0), (6, 6))
    assert exact and cos.abs().max() == 0 and l2.abs().max() == 0
    g = torch.randn(2, 4, 3, 3)
    cos, l2, exact = compare_shifted(g, g, (1, 1), (6, 6))  # stride 2 does not divide 1
    assert not exact and cos.shape == (2,)


def test_auto_layers_are_the_downsampling_stages_in_forward_order() -> None:
    for method in ("none", "blur", "aps"):
        cfg = OmegaConf.structured(
            ModelConfig(name="cnn", widths=[8, 8, 8], padding_mode="circular")
        )
        net = models.build(cfg, num_classes=4)
        if method != "none":
            models.antialias(net, method, pad_mode="circular", input_size=SIZE)
        assert auto_layers(net, SIZE) == ["features.down1", "features.down2"], method
        assert resolve_layers(net, ["auto"], SIZE)[-1] == "penultimate"
    with pytest.raises(ConfigError, match="features.down1"):
        resolve_layers(net, ["features.dwn1"], SIZE)


def test_shift_grid_and_diagonal() -> None:
    assert len(shift_grid(2)) == 25 and shift_grid(2)[12] == (0, 0)
    assert shift_grid(1, "diagonal") == [(-1, -1), (0, 0), (1, 1)]


def test_config_off_by_default() -> None:
    assert EquivarianceConfig().enabled is False
    assert schema().eval.equivariance.enabled is False
    assert list(schema().eval.equivariance.layers) == ["auto"]


def test_fit_reports_the_profile_when_enabled(tmp_path: Path) -> None:
    from train.fit import fit

    cfg = tiny_config(
        tmp_path,
        "eval.equivariance.enabled=true",
        "eval.equivariance.max_shift_px=1",
        "eval.equivariance.n_images=4",
        "eval.splits=[typical,atypical]",
        "eval.transforms=[translate]",
        "eval.plots=true",
        "name=eqv",
    )
    fit(cfg)
    run = Path(cfg.out_dir) / "eqv"
    metrics = json.loads((run / "metrics.json").read_text())
    block = metrics["invariance"]["equivariance"]
    assert block["layers"] == ["features.down1", "penultimate"]
    assert set(block["splits"]) == {"typical", "atypical"}
    layer = block["splits"]["typical"]["features.down1"]
    assert set(layer["map"]["cosine_distance"][0]) and len(layer["map"]["l2"]) == 3
    assert "gap_to_typical" in block["splits"]["atypical"]["penultimate"]
    keys = scalars(block)
    assert "equivariance/typical/features.down1/cosine_distance" in keys
    logged = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "equivariance/atypical/penultimate/l2" in logged
    assert (run / "reports" / "invariance_equivariance.png").is_file()


def _profile_run(root: Path, method: str, seed: int, far: float) -> Path:
    """A finished run's metrics.json holding only an equivariance profile with known means."""
    run = root / f"{method}-seed{seed}"
    run.mkdir(parents=True)
    base = 0.0 if method == "aps" else 0.1

    def layer(value: float, gap: float | None = None) -> dict:
        out = {m: {"mean": value, "ci": [value, value]} for m in ("cosine_distance", "l2")}
        if gap is not None:
            out["gap_to_typical"] = {m: {"mean": gap, "ci": [gap, gap]} for m in out}
        return out

    layers = ["features.down1", "features.down2", "penultimate"]
    splits = {
        "typical": {n: layer(base * (i + 1) + 0.01 * seed) for i, n in enumerate(layers)},
        "atypical": {n: layer(base * (i + 1) + far, far) for i, n in enumerate(layers)},
    }
    metrics = {
        "name": run.name,
        "config": {
            "name": run.name,
            "seed": seed,
            "model": {"antialias": {"method": method}},
        },
        "invariance": {
            "splits": {"typical": {}, "atypical": {}},
            "equivariance": {
                "layers": layers,
                "splits": splits,
                "protocol": {"max_shift_px": 1, "trajectory": "grid", "n_images": {"typical": 8}},
            },
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_invlab_report_tabulates_and_draws_the_profile_per_group(tmp_path: Path) -> None:
    from eval.study import write_report

    for method in ("none", "aps"):
        for seed in (0, 1, 2):
            _profile_run(tmp_path / "runs", method, seed, far=0.05)
    out = write_report([tmp_path / "runs"], tmp_path / "report")
    rows = [r for r in out["rows"] if r["transform"] == "equivariance"]
    # 2 groups x 2 splits x 3 layers x 2 metrics
    assert len(rows) == 24
    row = next(
        r
        for r in rows
        if r["metric"] == "features.down2/cosine_distance"
        and r["split"] == "typical"
        and "none" in r["group"]
    )
    assert row["n_seeds"] == 3 and row["mean"] == pytest.approx(0.21)
    assert row["lo"] < row["mean"] < row["hi"]
    gap = next(r for r in rows if r["split"] == "atypical" and r["metric"] == "penultimate/l2")
    assert gap["gap_mean"] == pytest.approx(0.05)
    assert (tmp_path / "report" / "equivariance.png").is_file()
    contrasts = [c for c in out["contrasts"] if c["transform"] == "equivariance"]
    assert contrasts and all(c["key"] == "model.antialias.method" for c in contrasts)


# ---------------------------------------------------------------------- the crop protocol
def _pointwise(stride: int = 1) -> Net:
    """1x1 convolutions only: no spatial context, so no border effect under crops."""
    torch.manual_seed(0)
    return Net(nn.Conv2d(3, 8, 1, stride), nn.ReLU(), nn.Conv2d(8, 8, 1))


def test_crop_protocol_pointwise_network_is_exactly_equivariant_on_the_overlap() -> None:
    m = 3
    images = _images(4, SIZE + 2 * m)  # the model window and 3 px of real margin around it
    layers = ["features.0", "features.1", "features.2"]
    dists = layer_distances(_pointwise(), images, layers, shift_grid(m), margin=m)
    for name in layers:
        for metric, values in dists[name].values.items():
            assert values.abs().max() < 1e-6, (name, metric)


def test_crop_protocol_moves_the_window_and_compares_the_overlap_by_hand() -> None:
    m, shift = 2, (2, -2)  # the stride 2 divides the shift: compared exactly
    net = _pointwise(stride=2).eval()
    images = _images(3, SIZE + 2 * m)
    dists = layer_distances(net, images, ["features.2"], [shift], margin=m)
    assert dists["features.2"].exact == [True]
    with torch.no_grad():
        centre = net.features(images[..., m : m + SIZE, m : m + SIZE])
        moved = net.features(images[..., m - 2 : m - 2 + SIZE, m + 2 : m + 2 + SIZE])
    # content moved by (+2, -2) px = (+1, -1) cells: moved[i, j] = centre[i - 1, j + 1]
    a, b = centre[..., 0:7, 1:8], moved[..., 1:8, 0:7]
    assert torch.allclose(a, b, atol=1e-6)  # pointwise: equal on the overlap
    torch.testing.assert_close(
        dists["features.2"].values["l2"][:, 0], torch.zeros(3), atol=1e-6, rtol=0
    )
    # an odd shift is resampled and, after stride 2, no longer exact
    odd = layer_distances(net, images, ["features.2"], [(1, 0)], margin=m)
    assert odd["features.2"].exact == [False]
    assert odd["features.2"].values["cosine_distance"].mean() > 1e-4


def test_crop_protocol_needs_a_margin_as_wide_as_the_shifts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="raise data.eval_margin_px"):
        layer_distances(_pointwise(), _images(2, SIZE + 2), ["features.0"], shift_grid(2), margin=1)
    cfg = tiny_config(
        tmp_path,
        "eval.enabled=true",
        "eval.equivariance.enabled=true",
        "eval.equivariance.protocol=crop",
        "eval.equivariance.max_shift_px=3",
        "data.eval_margin_px=2",
        "eval.max_shift_px=2",
    )
    from eval.runner import preflight
    from train.data import build_datamodule

    dm = build_datamodule(cfg)
    dm.setup()
    with pytest.raises(ConfigError, match="eval.equivariance.protocol=crop moves the model window"):
        preflight(cfg.eval, dm, int(cfg.data.image_size))
