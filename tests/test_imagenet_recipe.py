"""configs/studies/imagenet.yaml end to end on a small ImageNet-layout folder of generated
JPEGs, with a pretrained timm model whose weights file the test writes (timm's own loading,
through ``pretrained_cfg_overlay``; the real recipe downloads them from timm's hub)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import REPO
from train.cli import main

WNIDS = ("n01440764", "n01443537", "n01484850")


def _imagenet_folder(root: Path, per_class: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.full((40, 52, 3), 60 + 70 * c, np.uint8)  # a class colour, plus noise
                noise = rng.integers(0, 60, base.shape, dtype=np.uint8)
                Image.fromarray(base + noise).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture
def recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = _imagenet_folder(tmp_path / "imagenet", {"train": 6, "val": 5})
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=len(WNIDS))
    weights = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    return [
        str(REPO / "configs" / "studies" / "imagenet.yaml"),
        f"data.root={root}",
        "model.name=timm:resnet10t",
        f"model.kwargs.pretrained_cfg_overlay.file={weights}",
        f"model.kwargs.pretrained_cfg_overlay.num_classes={len(WNIDS)}",
        "data.image_size=32",
        "data.eval_margin_px=2",
        "data.n_train=18",
        "data.n_val=3",
        "data.heldout.typical.n=9",
        "data.batch_size=6",
        "data.num_workers=0",
        "eval.n_images=9",
        "eval.max_shift_px=2",
        "eval.batch_size=64",
        "eval.n_bootstrap=100",
        "eval.plots=false",
        "trainer.precision=32-true",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled",
        f"out_dir={tmp_path / 'runs'}",
    ]


def test_the_imagenet_recipe_evaluates_a_pretrained_model_and_fine_tunes_it_with_a_blur(
    recipe: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    assert main(["eval", *recipe, "name=r10", "--out", str(out)]) == 0
    report = json.loads((out / "invariance.json").read_text())
    assert report["checkpoint"] == "pretrained: timm:resnet10t"
    assert report["config"]["model"]["pretrained"] == "true"
    assert report["config"]["data"]["render"] is False
    # the model's own normalisation (timm's pretrained_cfg); the test's image size overrides it
    pre = report["preprocessing"]
    assert pre["used"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert report["config"]["data"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert pre["overridden_by_config"] == ["image_size"] and pre["used"]["image_size"] == 32
    typical = report["splits"]["typical"]
    assert typical["n_images"] == 9 and 0 <= typical["translate"]["p_change"]["mean"] <= 1

    # Fine-tune the same pretrained model with antialiasing turned on (same state-dict keys).
    args = ["fit", *recipe, "name=r10-blur", "model.antialias.method=blur", "trainer.max_steps=3"]
    assert main([*args, "eval.enabled=false"]) == 0
    metrics = json.loads((tmp_path / "runs" / "r10-blur" / "metrics.json").read_text())
    assert (
        metrics["global_step"] == 3 and metrics["config"]["model"]["antialias"]["method"] == "blur"
    )
