"""A held-out split defined by data: ``data.heldout.<split>.root``, a folder of the user's own
images labelled by the training classes' names, on both data paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invlab.config import ConfigError
from tests.test_stream import CLASSES, _cfg
from train.data import build_datamodule
from train.data.folder import decode_image

pytestmark = pytest.mark.filterwarnings("ignore:Instance reuse")


def _mine(root: Path, classes: tuple[str, ...] = ("bee", "cat"), per_class: int = 3) -> Path:
    """``per_class`` flat-coloured 40-px PNGs per class: easy to recognise after resizing."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            level = 40 * c + 10 * i
            Image.fromarray(np.full((40, 40, 3), level, np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("stream", ["false", "true"])
def test_a_split_of_my_own_images_is_every_image_of_that_folder(
    tmp_path: Path, stream: str
) -> None:
    mine = _mine(tmp_path / "mine")
    cfg = _cfg(tmp_path, stream, f"data.heldout.mine.root={mine}", "data.heldout.mine.n=6")
    dm = build_datamodule(cfg)
    dm.setup()
    assert dm.split_info()["mine"]["changes"] == ["source"]
    split = dm.split("mine")
    # labels are the training classes' indices: bee = 1, cat = 2 (ant has no folder here)
    assert sorted(split.labels.tolist()) == [1, 1, 1, 2, 2, 2]
    images = torch.stack([split.images[i] for i in range(6)])
    assert images.shape[-1] == 32
    for image, index in zip(images, split.indices.tolist(), strict=True):
        path = dm.source_of("mine").heldout.paths[index]
        expected, _ = decode_image(path, (40, 40))  # flat colours: every size has that level
        assert (image == int(expected[0, 0, 0])).all()
    levels = sorted(int(im[0, 0, 0]) for im in images)
    assert levels == [0, 10, 20, 40, 50, 60]  # every image of the folder, once


def test_a_folder_with_a_class_the_training_data_lacks_is_refused(tmp_path: Path) -> None:
    mine = _mine(tmp_path / "mine", ("bee", "dog"))
    cfg = _cfg(tmp_path, "false", f"data.heldout.mine.root={mine}", "data.heldout.mine.n=6")
    dm = build_datamodule(cfg)
    with pytest.raises(ConfigError, match=r"class folder\(s\) 'dog'.*ant, bee, cat"):
        dm.setup()
    assert set(CLASSES) == {"ant", "bee", "cat"}
    missing = _cfg(tmp_path, "false", f"data.heldout.gone.root={tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="No image folder at data.heldout.gone.root"):
        build_datamodule(missing).setup()


@pytest.mark.parametrize("stream", ["false", "true"])
def test_natural_images_keep_real_pixels_around_the_crop(tmp_path: Path, stream: str) -> None:
    from invlab.imageops import center_crop
    from train.data.render import resize_split

    # crop_pct 0.8: the shorter side goes to 40 px and the model sees the central 32; held-out
    # images keep the 4 px around it, so a shifted view is real pixels, not padding
    cfg = _cfg(tmp_path, stream, "data.crop_pct=0.8")
    dm = build_datamodule(cfg)
    dm.setup()
    assert dm.fit_side == 40 and dm.margin("typical") == 4 and dm.margin("train") == 0
    typical = dm.split("typical")
    held = torch.stack([typical.images[i] for i in range(len(typical.labels))])
    assert held.shape[-1] == 40
    # the central crop is what training-style preprocessing gives for the same files
    pool = dm.source_of("typical").heldout
    plain, _, _ = resize_split(
        pool, len(held), seed=int(cfg.seed), size=32, positions=dm._allocate()["typical"], fit=40
    )
    assert torch.equal(center_crop(held, 32), plain)
    train = dm.split("train")
    assert train.images[0].shape[-1] == 32
    # crop_pct 1 (the default): no room around the crop, shifted views are padded
    whole = build_datamodule(_cfg(tmp_path, stream))
    whole.setup()
    assert whole.fit_side is None and whole.margin("typical") == 0
