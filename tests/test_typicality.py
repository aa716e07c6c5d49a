"""Typicality in one space for every model (``eval.typicality.checkpoint``) and bins within
each split as well as pooled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval import evaluate
from eval.typicality import reference_model
from invlab.config import ConfigError, to_container
from models.checkpoint import CheckpointError
from tests.test_eval import SIZE, SmallCNN, eval_cfg, make_data
from train.config import load_config
from train.module import Classifier


def _checkpoint(path: Path, seed: int = 3) -> Path:
    """One of invlab's checkpoints as fit writes it: the net's weights under ``net.*``, the
    config and the class count in ``hyper_parameters``."""
    cfg = load_config(overrides=["model.widths=[4,8]", f"seed={seed}"])
    torch.manual_seed(seed)
    clf = Classifier(cfg, num_classes=4)
    hparams = {"config": to_container(cfg), "num_classes": 4}
    torch.save({"state_dict": clf.state_dict(), "hyper_parameters": hparams}, path)
    return path


def _scores(report: dict) -> dict:
    return {s: v["mean"] for s, v in report["typicality"]["score_by_split"].items()}


def test_one_reference_model_puts_the_same_images_in_the_same_bins(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ref.ckpt")
    data = make_data(n=12)
    shared = eval_cfg(
        "eval.typicality.method=features",
        f"eval.typicality.checkpoint={ckpt}",
        "eval.typicality.n_bins=3",
        "eval.typicality.k=3",
        "eval.transforms=[translate]",
    )
    a = evaluate(SmallCNN(), data, shared, image_size=SIZE, progress=False)
    other = SmallCNN()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-2.0)  # another model: other features, other predictions
    b = evaluate(other, data, shared, image_size=SIZE, progress=False)
    assert a["splits"]["typical"]["translate"] != b["splits"]["typical"]["translate"]
    assert _scores(a) == _scores(b)  # the same space: the same distances
    assert a["typicality"]["curve"]["bin_edges"] == b["typicality"]["curve"]["bin_edges"]
    # ... and they are the reference model's own features, as it would score itself
    own = eval_cfg(
        "eval.typicality.method=features",
        "eval.typicality.n_bins=3",
        "eval.typicality.k=3",
        "eval.transforms=[translate]",
    )
    itself = evaluate(reference_model(str(ckpt)), data, own, image_size=SIZE, progress=False)
    for split, score in _scores(itself).items():
        assert _scores(a)[split] == pytest.approx(score, rel=1e-5)
    # without the checkpoint each model measures in its own space
    c = evaluate(other, data, own, image_size=SIZE, progress=False)
    assert _scores(c) != _scores(a)


def test_bins_within_each_split_add_up_to_the_split(tmp_path: Path) -> None:
    cfg = eval_cfg("eval.typicality.method=pixels", "eval.typicality.n_bins=3", "eval.n_images=12")
    report = evaluate(SmallCNN(), make_data(n=12), cfg, image_size=SIZE, progress=False)
    typ = report["typicality"]
    assert set(typ["curve_by_split"]) == {"typical", "atypical"}
    assert sum(typ["curve"]["n"]) == 24  # pooled: both splits
    for split, curve in typ["curve_by_split"].items():
        assert curve["n"] == [4, 4, 4]  # equal-count bins of this split's 12 images
        acc = sum(n * a for n, a in zip(curve["n"], curve["accuracy"], strict=True)) / 12
        assert acc == pytest.approx(report["splits"][split]["accuracy"]["mean"])
        assert curve["score"] == sorted(curve["score"])  # bin 1 = nearest the training set
        lo, hi = curve["bin_edges"][0], curve["bin_edges"][-1]
        pooled = typ["curve"]["bin_edges"]
        assert pooled[0] <= lo and hi <= pooled[-1]


def test_a_reference_checkpoint_is_checked_before_anything_runs(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ref.ckpt")
    with pytest.raises(ConfigError, match="set eval.typicality.method=features"):
        evaluate(
            SmallCNN(),
            make_data(n=4),
            eval_cfg("eval.typicality.method=pixels", f"eval.typicality.checkpoint={ckpt}"),
            image_size=SIZE,
            progress=False,
        )
    bare = tmp_path / "bare.pt"
    torch.save(SmallCNN().state_dict(), bare)
    with pytest.raises(CheckpointError, match="not a checkpoint of an invlab run"):
        reference_model(str(bare))
    with pytest.raises(CheckpointError, match="missing.ckpt"):
        evaluate(
            SmallCNN(),
            make_data(n=4),
            eval_cfg(
                "eval.typicality.method=features",
                f"eval.typicality.checkpoint={tmp_path / 'missing.ckpt'}",
            ),
            image_size=SIZE,
            progress=False,
        )
