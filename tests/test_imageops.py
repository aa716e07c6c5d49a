"""The one integer-window gather: augmentation shifts and evaluation views give the same pixels."""

from __future__ import annotations

import pytest
import torch

from augment.shift import RandomIntegerShift, shift_batch
from eval.views import translate_views
from invlab.imageops import center_crop, windows
from train.data import center_crop as data_center_crop


def _images(n: int = 6, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


@pytest.mark.parametrize("fill", ["reflect", "zeros"])
def test_augmentation_shift_equals_evaluation_view(fill: str) -> None:
    x, m = _images(), 3
    shifts = torch.tensor([[0, 0], [1, -2], [-3, 3], [3, 0], [0, -1], [-2, -2]])
    augmented = shift_batch(x, shifts, m, fill)
    viewed = translate_views(
        x, shifts[:, None].double(), protocol="crop", size=12, pad_mode=fill, max_shift=m
    )[:, 0]
    assert torch.equal(augmented, viewed)
    assert torch.equal(augmented[0], x[0])  # no shift: the image itself


def test_shift_moves_content_down_and_right_in_both_paths() -> None:
    x = torch.zeros(1, 3, 10, 10)
    x[0, :, 5, 5] = 1.0
    shift = torch.tensor([[2, -1]])  # (dy, dx)
    for out in (
        shift_batch(x, shift, 2, "zeros"),
        translate_views(x, shift[:, None].double(), protocol="crop", size=10, pad_mode="zeros")[
            :, 0
        ],
        RandomIntegerShift(2, "zeros")(x, torch.Generator().manual_seed(0)),
    ):
        assert out.sum() == 3.0  # the pixel stays whole (the random shift's draw is in range)
    assert shift_batch(x, shift, 2, "zeros")[0, :, 7, 4].tolist() == [1.0, 1.0, 1.0]


def test_windows_match_slicing_and_wrap_is_circular() -> None:
    src = torch.arange(2 * 1 * 7 * 9).reshape(2, 1, 7, 9)
    top, left = torch.tensor([[0, 2], [1, 3]]), torch.tensor([[4, 0], [1, 5]])
    out = windows(src, top, left, (3, 4))
    assert out.shape == (2, 2, 1, 3, 4)
    for b in range(2):
        for t in range(2):
            y, x = int(top[b, t]), int(left[b, t])
            assert torch.equal(out[b, t], src[b, :, y : y + 3, x : x + 4])
    rolled = windows(src, torch.tensor([[-1]] * 2), torch.tensor([[2]] * 2), (7, 9), wrap=True)
    assert torch.equal(rolled[:, 0], torch.roll(src, shifts=(1, -2), dims=(2, 3)))


def test_one_center_crop() -> None:
    assert data_center_crop is center_crop
    img = torch.arange(11 * 11).reshape(1, 1, 11, 11)
    assert torch.equal(center_crop(img, 7), img[..., 2:9, 2:9])
    assert torch.equal(center_crop(img, 6), img[..., 2:8, 2:8])  # odd margin: extra px right
    with pytest.raises(ValueError, match="smaller than the input size 12"):
        center_crop(img, 12)
