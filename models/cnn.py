"""Plain CNNs for controlled studies: stages of conv3x3-norm-ReLU blocks, a configurable
downsampling layer between stages, and a global-average-pool or flatten head.

Every knob that matters for shift invariance is explicit: how to downsample (strided conv,
max-pool, avg-pool or not at all), its kernel and stride, the padding of every convolution and
pooling layer, and whether the head pools globally (GAP) or keeps positions (flatten + FC).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .downsampling import get_downsample, register_downsample
from .registry import register_model

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def conv_block(
    in_ch: int, out_ch: int, kernel: int, stride: int, padding_mode: str, norm: str
) -> nn.Sequential:
    """Conv(kernel, stride, 'same'-style padding) -> BatchNorm (or nothing) -> ReLU."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(
        in_ch,
        out_ch,
        kernel,
        stride=stride,
        padding=(kernel - 1) // 2,
        padding_mode=padding_mode,
        bias=norm == "none",
    )
    if norm == "batch":
        layers["norm"] = nn.BatchNorm2d(out_ch)
    layers["act"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def same_padding(kernel: int) -> tuple[int, int, int, int]:
    """Total padding ``kernel - 1``, the extra pixel right/bottom: output ``ceil(H / stride)``."""
    lo, hi = (kernel - 1) // 2, kernel // 2
    return (lo, hi, lo, hi)


class _PadBefore:
    """Pooling mixin: pad with ``padding_mode`` ('same' amounts), then pool without padding.

    The padding lives inside the pooling module, so antialiasing replaces or rewrites one module.
    ``zeros`` before a max-pool equals the usual -inf padding: its inputs follow a ReLU (>= 0).
    """

    kernel_size: int | tuple[int, int]
    padding_mode: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size if isinstance(self.kernel_size, int) else self.kernel_size[0]
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return super().forward(F.pad(x, same_padding(k), mode=mode))  # type: ignore[misc]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, padding_mode={self.padding_mode!r}"  # type: ignore[misc]


class PaddedMaxPool2d(_PadBefore, nn.MaxPool2d):
    """``MaxPool2d(kernel, stride)`` over a 'same'-padded input."""

    def __init__(self, kernel_size: int, stride: int, padding_mode: str = "zeros") -> None:
        super().__init__(kernel_size, stride)
        self.padding_mode = padding_mode


class PaddedAvgPool2d(_PadBefore, nn.AvgPool2d):
    """``AvgPool2d(kernel, stride)`` over a 'same'-padded input."""

    def __init__(self, kernel_size: int, stride: int, padding_mode: str = "zeros") -> None:
        super().__init__(kernel_size, stride)
        self.padding_mode = padding_mode


def pool_layer(kind: str, kernel: int, stride: int, padding_mode: str) -> nn.Module:
    """Max or average pooling over a 'same'-padded input (output ``ceil(H / stride)``)."""
    pool_cls = PaddedMaxPool2d if kind == "maxpool" else PaddedAvgPool2d
    return pool_cls(kernel, stride, padding_mode)


@register_downsample("conv")
def _conv_down(ch: int, kernel: int, stride: int, padding_mode: str, norm: str) -> nn.Module:
    """A strided conv-norm-ReLU block."""
    return conv_block(ch, ch, kernel, stride, padding_mode, norm)


@register_downsample("maxpool")
def _max_down(ch: int, kernel: int, stride: int, padding_mode: str, norm: str) -> nn.Module:
    return pool_layer("maxpool", kernel, stride, padding_mode)


@register_downsample("avgpool")
def _avg_down(ch: int, kernel: int, stride: int, padding_mode: str, norm: str) -> nn.Module:
    return pool_layer("avgpool", kernel, stride, padding_mode)


@register_downsample("none")
def _no_down(ch: int, kernel: int, stride: int, padding_mode: str, norm: str) -> None:
    return None


class CNN(nn.Module):
    """``len(widths)`` stages of ``depth`` conv3x3 blocks; downsampling between stages.

    Args:
        widths: channels of each stage.
        depth: conv3x3-norm-ReLU blocks per stage.
        downsample: ``conv`` (a strided conv block, kernel ``down_kernel``), ``maxpool``,
            ``avgpool`` (kernel ``down_kernel``), ``none`` or a kind registered with
            ``models.register_downsample``; stride ``down_stride``.
        padding_mode: padding of every conv and pooling layer (zeros, reflect, replicate,
            circular). Pools pad 'same'-style (total ``down_kernel - 1``): their output is
            ``ceil(H / down_stride)`` like the strided conv's.
        norm: ``batch`` or ``none``.
        head: ``gap`` (global average pool + Linear) or ``flatten`` (flatten + Linear; the
            Linear's size is fixed by ``input_size``, set ``model.kwargs.input_size`` to match
            ``data.image_size``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        depth: int = 1,
        downsample: str = "conv",
        down_kernel: int = 3,
        down_stride: int = 2,
        padding_mode: str = "zeros",
        norm: str = "batch",
        head: str = "gap",
        input_size: int = 32,
    ) -> None:
        super().__init__()
        make_down = get_downsample(downsample)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")
        if head not in ("gap", "flatten"):
            raise ValueError(f"head must be 'gap' or 'flatten', got {head!r}.")
        if not widths or depth < 1:
            raise ValueError("widths must be non-empty and depth >= 1.")
        self.head_kind = head
        self.input_size = input_size
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        ch = in_chans
        for i, width in enumerate(widths):
            down = make_down(ch, down_kernel, down_stride, padding_mode, norm) if i > 0 else None
            if down is not None:
                stages[f"down{i}"] = down
            stages[f"stage{i}"] = nn.Sequential(
                *[
                    conv_block(ch if j == 0 else width, width, 3, 1, padding_mode, norm)
                    for j in range(depth)
                ]
            )
            ch = width
        self.features = nn.Sequential(stages)
        self.num_features = ch
        if head == "gap":
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
            in_features = ch
        else:
            self.pool = nn.Identity()
            with torch.no_grad():
                probe = self.features.eval()(torch.zeros(1, in_chans, input_size, input_size))
            self.features.train()
            in_features = probe.numel()
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        if x.shape[1] != self.fc.in_features:
            raise ValueError(
                f"The flatten head was built for {self.input_size}x{self.input_size} inputs "
                f"({self.fc.in_features} features), got {x.shape[1]} features: set "
                "model.kwargs.input_size to the image size, or use model.head=gap."
            )
        return self.fc(x)


@register_model
def cnn(num_classes: int = 10, in_chans: int = 3, **arch) -> CNN:
    """The configurable family: every model.* architecture knob applies."""
    return CNN(num_classes, in_chans, **arch)


@register_model
def cnn_tiny(num_classes: int = 10, in_chans: int = 3, **arch) -> CNN:
    """Widths [8, 16], depth 1 (tests, smoke runs); other knobs from the config."""
    return CNN(num_classes, in_chans, **{**arch, "widths": (8, 16), "depth": 1})


@register_model
def allconv(num_classes: int = 10, in_chans: int = 3, **arch) -> CNN:
    """All-convolutional: widths [32, 64, 128], depth 2, 3x3 stride-2 convs, GAP head.

    Springenberg et al.'s all-convolutional design (no pooling); padding and norm from the config.
    """
    fixed = {"widths": (32, 64, 128), "depth": 2, "downsample": "conv", "down_kernel": 3}
    return CNN(num_classes, in_chans, **{**arch, **fixed, "down_stride": 2, "head": "gap"})


@register_model
def vgg_small(num_classes: int = 10, in_chans: int = 3, **arch) -> CNN:
    """VGG-like: widths [32, 64, 128], depth 2, 2x2 max-pools, flatten + FC head.

    The setting of Azulay & Weiss; padding and norm from the config; ``model.kwargs.input_size``
    sizes the head (default 32).
    """
    fixed = {"widths": (32, 64, 128), "depth": 2, "downsample": "maxpool", "down_kernel": 2}
    return CNN(num_classes, in_chans, **{**arch, **fixed, "down_stride": 2, "head": "flatten"})
