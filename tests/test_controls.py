"""The factor-in-training control (eval.controls): a ``reference`` split, the ``mixed``
background, ``invlab report --gap-to``, and each factor's 2 x 2 with its contrast by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.controls import factor_of
from eval.study import write_report
from invlab.config import ConfigError
from train.cli import main
from train.config import load_config
from train.data.background import draw_background, paint_background

T2 = 4.302653  # t_{0.975, 2}
NARROW, WIDE = [0.9, 1.1], [0.65, 1.1]
# seed: (reference, scale) P(top-1 change) in each arm
OUT = {0: (0.10, 0.30), 1: (0.12, 0.33), 2: (0.14, 0.35)}  # gaps 0.20, 0.21, 0.21
IN = {0: (0.11, 0.15), 1: (0.12, 0.16), 2: (0.12, 0.18)}  # gaps 0.04, 0.04, 0.06


def _stat(mean: float) -> dict:
    return {"mean": mean, "ci": [mean, mean]}


def _run(root: Path, scale: list[float], seed: int, ref: float, small: float) -> None:
    """A finished run of one arm: the training scale range, a fixed reference and a scale split."""
    run = root / f"scale{scale[0]}-seed{seed}"
    run.mkdir(parents=True)
    block = lambda p: {"translate": {"accuracy": _stat(0.9), "p_change": _stat(p)}}  # noqa: E731
    data = {
        "placement": {"scale": scale},
        "heldout": {
            "typical": {"n": 0},
            "atypical": {"n": 0},
            "reference": {"n": 10, "scale": NARROW},
            "scale": {"n": 10, "scale": [0.65, 0.8]},
        },
    }
    metrics = {
        "name": run.name,
        "config": {"name": run.name, "seed": seed, "out_dir": str(root), "data": data},
        "invariance": {"splits": {"reference": block(ref), "scale": block(small)}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))


def _study(root: Path) -> Path:
    for scale, arm in ((NARROW, OUT), (WIDE, IN)):
        for seed, (ref, small) in arm.items():
            _run(root, scale, seed, ref, small)
    return root


def test_the_gap_out_of_training_minus_in_by_hand(tmp_path: Path) -> None:
    runs = _study(tmp_path / "runs")
    result = write_report([runs], tmp_path / "rep", gap_to="reference")
    # the report's gaps are to `reference`: the scale split's gap per arm
    gaps = {
        r["group"]: r["gap_mean"]
        for r in result["rows"]
        if (r["split"], r["metric"]) == ("scale", "p_change")
    }
    assert gaps["data.placement.scale=[0.9, 1.1]"] == pytest.approx((0.20 + 0.21 + 0.21) / 3)
    assert gaps["data.placement.scale=[0.65, 1.1]"] == pytest.approx((0.04 + 0.04 + 0.06) / 3)
    (row,) = [r for r in result["controls"] if r["metric"] == "p_change"]
    assert (row["factor"], row["split"], row["out"], row["in"]) == (
        "scale",
        "scale",
        "[0.9, 1.1]",
        "[0.65, 1.1]",
    )
    # out - in per seed: 0.16, 0.17, 0.15 -> mean 0.16, sd 0.01, paired on 2 df
    half = T2 * 0.01 / math.sqrt(3)
    assert row["out_minus_in"] == pytest.approx(0.16)
    assert row["lo"] == pytest.approx(0.16 - half, abs=1e-6)
    assert row["hi"] == pytest.approx(0.16 + half, abs=1e-6)
    assert (row["method"], row["seeds"], row["verdict"]) == ("paired", "3/3", "higher")
    # P(change) gaps are positive: a positive out - in means the gap closes. One factor: Holm
    # over the factors leaves its p as it is (t = 0.16 / (0.01 / sqrt 3) on 2 df)
    t = 0.16 / (0.01 / math.sqrt(3))
    assert row["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-9)
    assert row["p_holm"] == pytest.approx(row["p"])
    assert (row["gap"], row["verdict_holm"], row["gap_holm"]) == ("closes", "higher", "closes")
    # the gap that remains with the factor in training: 0.04, 0.04, 0.06
    sd_in = math.sqrt(((0.04 - 0.14 / 3) ** 2 * 2 + (0.06 - 0.14 / 3) ** 2) / 2)
    assert row["gap_in"] == pytest.approx(0.14 / 3)
    assert row["gap_in_lo"] == pytest.approx(0.14 / 3 - T2 * sd_in / math.sqrt(3), abs=1e-6)
    # accuracy is 0.9 everywhere: a zero gap in both arms, no spread, not resolved
    (acc,) = [r for r in result["controls"] if r["metric"] == "accuracy"]
    assert acc["out_minus_in"] == 0 and acc["verdict"] == "not resolved"
    assert acc["gap"] == "not resolved"
    md = (tmp_path / "rep" / "controls.md").read_text()
    assert "| scale | data.placement.scale: [0.9, 1.1] -> [0.65, 1.1] | scale |" in md
    interval = f"+0.160 [{0.16 - half:+.3f}, {0.16 + half:+.3f}]"
    assert f"{interval} | paired, 3/3 | higher | closes |" in md
    assert "(to reference)" in (tmp_path / "rep" / "report.md").read_text()
    png = tmp_path / "rep" / "controls.png"
    assert png in result["files"] and png.read_bytes()[:4] == b"\x89PNG"
    assert "gap to reference" in (tmp_path / "rep" / "contrasts.md").read_text()


def test_the_arms_are_told_apart_by_the_reference_not_by_their_order(tmp_path: Path) -> None:
    # the wide arm as the contrast's baseline (A): the control is still out - in, verdict mirrored
    runs = _study(tmp_path / "runs")
    result = write_report(
        [runs],
        tmp_path / "rep",
        contrast_key="data.placement.scale",
        baseline="[0.65, 1.1]",
        gap_to="reference",
    )
    (row,) = [r for r in result["controls"] if r["metric"] == "p_change"]
    assert (row["out"], row["in"]) == ("[0.9, 1.1]", "[0.65, 1.1]")
    assert row["out_minus_in"] == pytest.approx(0.16) and row["verdict"] == "higher"
    assert row["lo"] < row["hi"]


def test_gaps_to_typical_write_no_control_and_a_wrong_split_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = _study(tmp_path / "runs")
    assert write_report([runs], tmp_path / "rep")["controls"] == []
    assert not (tmp_path / "rep" / "controls.md").exists()
    out = tmp_path / "bad"
    assert main(["report", str(runs), "--out", str(out), "--gap-to", "refrence"]) == 2
    err = capsys.readouterr().err
    assert "--gap-to refrence" in err and "Did you mean 'reference'?" in err
    assert not out.exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="Their splits: reference, scale"):
        write_report([runs], tmp_path / "bad2", gap_to="far")


def test_factor_of_a_placement_key() -> None:
    assert factor_of("data.placement.scale") == "scale"
    assert factor_of("data.placement.max_offset_px") == "position"
    assert factor_of("data.placement.background") == "background"
    assert factor_of("data.heldout.scale.scale") is None
    assert factor_of("augment.max_shift_px") is None


def test_a_reference_split_may_equal_training_another_name_may_not() -> None:
    cfg = load_config("configs/default.yaml", overrides=["data.heldout.reference.n=10"])
    assert cfg.data.heldout.reference.n == 10
    with pytest.raises(ConfigError, match="data.heldout.ref"):
        load_config("configs/default.yaml", overrides=["data.heldout.ref.n=10"])


def test_mixed_backgrounds_are_flat_or_noise_half_each() -> None:
    n, size = 4000, 8
    mixed = draw_background("mixed", n, size, np.random.default_rng(0), 6.4)
    flat_images = (mixed["field"] == 0).flatten(1).all(1)
    assert abs(flat_images.float().mean().item() - 0.5) < 0.03  # 4 sd of a binomial mean
    noisy = mixed["field"][~flat_images]
    noise = draw_background("noise", n, size, np.random.default_rng(0), 6.4)["field"]
    assert noisy.std().item() == pytest.approx(noise.std().item(), rel=0.02)
    painted = paint_background(mixed, torch.full((n,), 0.5), size)
    flat_pixels = painted[flat_images].flatten(2)
    assert (flat_pixels.std(-1) == 0).all()  # one level per channel: a flat background
    assert (painted[~flat_images].flatten(2).std(-1) > 0).all()
