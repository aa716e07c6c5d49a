"""augment: per-sample draws, exact integer shifts, no state, devices, seeding, config errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from kornia.augmentation.auto import RandAugment
from torch import nn

import augment
from augment import show
from augment.colour import RandomColourJiggle, luma, saturation_hue_matrix
from augment.policy import PerSamplePolicy
from augment.shift import border_median, pad_image, shift_batch
from invlab.config import ConfigError
from train.config import load_config

RANDOM_PRESETS = [p for p in augment.list_presets() if p != "none"]
ALL_PRESETS = ["none", *RANDOM_PRESETS]
# Presets that transform each image on its own (mixup and cutmix mix a batch of identical images
# into itself; tests/test_recipes.py tests them).
MIXING = {
    p
    for p in RANDOM_PRESETS
    if augment.build(load_config(overrides=[f"augment.presets=[{p}]"]).augment).mixes
}
PER_IMAGE = [p for p in RANDOM_PRESETS if p not in MIXING]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def make(*overrides: str) -> augment.Augmenter:
    aug = augment.build(load_config(overrides=list(overrides)).augment)
    aug.reseed(0)
    return aug


def preset(name: str, *overrides: str) -> augment.Augmenter:
    return make(f"augment.presets=[{name}]", *overrides)


def identical_batch(b: int = 16, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g).expand(b, -1, -1, -1).contiguous()


def find_shift(out: torch.Tensor, padded: torch.Tensor, m: int) -> list[tuple[int, int]]:
    """All (dy, dx) with out == padded window shifted by (dy, dx) (for one image [C, H, W])."""
    h, w = out.shape[-2:]
    return [
        (dy, dx)
        for dy in range(-m, m + 1)
        for dx in range(-m, m + 1)
        if torch.equal(out, padded[:, m - dy : m - dy + h, m - dx : m - dx + w])
    ]


# ----------------------------------------------------------------------------- per sample
@pytest.mark.parametrize("name", PER_IMAGE)
def test_parameters_are_drawn_per_sample(name):
    x = identical_batch()
    y = preset(name)(x)
    assert y.shape == x.shape
    assert not all(torch.equal(y[0], y[i]) for i in range(1, len(y)))


@pytest.mark.parametrize("name", PER_IMAGE)
def test_same_on_batch_applies_one_transform(name):
    x = identical_batch()
    y = preset(name, "augment.same_on_batch=true", "augment.flip_p=1.0", "augment.erasing_p=1.0")(x)
    for i in range(1, len(y)):
        torch.testing.assert_close(y[i], y[0], rtol=0, atol=1e-6)
    assert not torch.equal(y[0], x[0])  # ...and it is a transform (flip_p=1 for "flip")


def test_no_presets_is_identity_with_reseed():
    aug = make()
    x = torch.rand(4, 3, 16, 16)
    assert aug(x) is x
    aug.reseed(3)
    assert make("augment.presets=[none]")(x) is x


# ----------------------------------------------------------------------------- translate
def test_pad_background_is_border_median():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, :] = torch.tensor([1.0, 1.0, 1.0, 5.0])  # border values: 1,1,1,5 + eight zeros
    x[0, 0, 1:3, 1:3] = 9.0  # interior, ignored
    assert border_median(x).item() == 0.0
    x[0, 0, -1, :] = 1.0
    x[0, 0, 1:3, 0] = 1.0  # border now 1 x 9, 0 x 2, 5 x 1 -> median 1
    padded = pad_image(x, 2, "background")
    assert padded.shape == (1, 1, 8, 8)
    assert torch.all(padded[0, 0, :2] == 1.0) and torch.equal(padded[..., 2:6, 2:6], x)


def test_shift_batch_hand_computed():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = shift_batch(x, torch.tensor([[1, -1]]), m=1, fill="zeros")
    expected = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 7.0, 0.0], [9.0, 10.0, 11.0, 0.0]]
    )
    assert torch.equal(y[0, 0], expected)


@pytest.mark.parametrize("fill", ["zeros", "reflect", "background"])
def test_translate_is_an_exact_integer_shift_covering_the_range(fill):
    m, b = 2, 300
    x = torch.rand(b, 3, 16, 16)
    y = preset("translate", f"augment.max_shift_px={m}", f"augment.pad_fill={fill}")(x)
    padded = pad_image(x, m, fill)
    shifts = []
    for i in range(b):
        found = find_shift(y[i], padded[i], m)
        assert len(found) == 1, f"image {i}: {found}"
        shifts.append(found[0])
    dys, dxs = zip(*shifts, strict=True)
    assert set(dys) == set(range(-m, m + 1)) and set(dxs) == set(range(-m, m + 1))


def test_presets_combine_in_order_translate_then_flip():
    m = 1
    x = torch.rand(32, 3, 16, 16)
    y = make(
        "augment.presets=[translate,flip]",
        "augment.pad_fill=zeros",
        f"augment.max_shift_px={m}",
        "augment.flip_p=1",
    )(x)
    padded = pad_image(x, m, "zeros")
    for i in range(len(x)):
        assert len(find_shift(y[i].flip(-1), padded[i], m)) == 1
    assert make("augment.presets=[translate,flip]").names == ["translate", "flip"]


# ----------------------------------------------------------------------------- state dict
class Net(nn.Module):
    def __init__(self, presets: str) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.augment = make(f"augment.presets=[{presets}]")


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_no_state_dict_entries_and_no_parameters(name):
    aug = preset(name)
    aug(torch.rand(2, 3, 16, 16))  # size-dependent ops are built on the first call
    assert aug.state_dict() == {}
    assert list(aug.parameters()) == []


def test_checkpoint_loads_across_policies():
    saved = Net("randaugment").state_dict()
    assert set(saved) == {"fc.weight", "fc.bias"}
    other = Net("trivialaugment,heavy")
    other.load_state_dict(saved, strict=True)
    assert torch.equal(other.fc.weight, saved["fc.weight"])


def test_augmenter_pickles_and_keeps_its_stream():
    a = preset("heavy")
    x = torch.rand(4, 3, 16, 16)
    a(x)  # builds the size-dependent ops
    b = pickle.loads(pickle.dumps(a))
    a.reseed(1)
    b.reseed(1)
    assert torch.equal(a(x), b(x))


# ----------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["translate", "heavy", "randaugment"])
def test_output_follows_input_device(device, name):
    x = torch.rand(4, 3, 16, 16, device=device)
    y = preset(name)(x)
    assert y.device == x.device and y.shape == x.shape and y.dtype == x.dtype


# ----------------------------------------------------------------------------- kornia ops
def test_explicit_ops_appended_after_presets():
    aug = make(
        "augment.presets=[flip]",
        "augment.flip_p=1.0",
        "augment.ops=[{name: RandomVerticalFlip, p: 1.0}]",
    )
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(aug(x), x.flip(-1).flip(-2))
    assert aug.names == ["flip", "RandomVerticalFlip"]


def test_explicit_op_with_list_arguments():
    aug = make("augment.ops=[{name: RandomAffine, degrees: 0, translate: [0.1, 0.1], p: 1.0}]")
    x = identical_batch(8, 16)
    y = aug(x)
    assert y.shape == x.shape and not torch.equal(y[0], y[1])


def test_unknown_op_name_lists_valid_names_and_closest():
    with pytest.raises(
        ConfigError, match="RandomAfine.*Did you mean 'RandomAffine'.*RandomErasing"
    ):
        make("augment.ops=[{name: RandomAfine}]")


def test_unknown_op_argument_lists_accepted_arguments():
    with pytest.raises(ConfigError, match="'degree'.*Did you mean 'degrees'.*translate"):
        make("augment.ops=[{name: RandomAffine, degree: 3}]")


def test_unknown_preset_suggests_closest():
    with pytest.raises(ConfigError, match="Did you mean 'translate'"):
        make("augment.presets=[translat]")


# ----------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("name", ["translate", "heavy", "randaugment"])
def test_reseed_is_reproducible_and_leaves_global_rng_alone(name):
    x = torch.rand(8, 3, 16, 16)
    a, b = preset(name), preset(name)
    state = torch.get_rng_state()
    a.reseed(7)
    b.reseed(7)
    ya1, ya2 = a(x), a(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(ya1, b(x)) and torch.equal(ya2, b(x))
    assert not torch.equal(ya1, ya2)  # the stream moves on between calls
    b.reseed(8)
    assert not torch.equal(b(x), ya1)


# ----------------------------------------------------------------------------- show
def test_grid_image_shape_and_first_row_is_originals():
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    aug = preset("translate")
    grid = show.grid_image(images, aug, n=4, rows_aug=3)
    pad = 2  # make_grid's default padding
    assert grid.dtype == np.uint8
    assert grid.shape == (4 * (16 + pad) + pad, 4 * (16 + pad) + pad, 3)
    np.testing.assert_array_equal(grid[pad : pad + 16, pad : pad + 16], images[0].permute(1, 2, 0))
    x = torch.rand(2, 3, 16, 16)
    fresh = preset("translate")
    assert torch.equal(aug(x), fresh(x))  # showing a grid does not advance the stream


def test_save_grid_writes_png(tmp_path):
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    path = show.save_grid(images, preset("flip"), tmp_path / "grid.png", n=8)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- policies, colour
def test_policy_chooses_the_operation_per_image():
    kornia_policy = RandAugment(n=1, m=9, policy=[[("invert", 0, 1)], [("auto_contrast", 0, 1)]])
    policy = PerSamplePolicy(kornia_policy, num_ops=1, magnitude=9)
    x = identical_batch(32, 8) * 0.5 + 0.25  # auto-contrast stretches [0.25, 0.75] to [0, 1]
    y = policy(x)
    inverted = torch.isclose(y, 1 - x, atol=1e-6).flatten(1).all(1)
    stretched = torch.isclose(y.amin((2, 3)), torch.zeros(1), atol=1e-6).all(1)
    assert torch.all(inverted ^ stretched) and 0 < inverted.sum() < 32


def test_saturation_hue_matrix_hand_checked():
    rgb = torch.tensor([0.6, 0.3, 0.2])
    gray = saturation_hue_matrix(torch.zeros(1), torch.zeros(1))[0] @ rgb
    torch.testing.assert_close(gray, torch.full((3,), 0.6 * 0.299 + 0.3 * 0.587 + 0.2 * 0.114))
    eye = saturation_hue_matrix(torch.ones(1), torch.zeros(1))[0]
    torch.testing.assert_close(eye, torch.eye(3), atol=1e-5, rtol=0)
    rotated = saturation_hue_matrix(torch.ones(4), torch.tensor([0.1, 0.25, 0.5, -0.3]))
    x = torch.einsum("bij,j->bi", rotated, rgb)[:, :, None, None]
    torch.testing.assert_close(luma(x).flatten(), luma(rgb.view(1, 3, 1, 1)).flatten().expand(4))
    assert not torch.allclose(x[0].flatten(), rgb)  # a hue rotation changes the colour


def test_colour_jiggle_off_is_identity():
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(RandomColourJiggle(0.0, hue=0.0)(x), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(RandomColourJiggle(0.4, hue=0.2, p=0.0)(x), x, atol=1e-5, rtol=0)
