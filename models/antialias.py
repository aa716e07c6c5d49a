"""Antialias any CNN in place by Zhang's rules (Zhang, "Making Convolutional Networks
Shift-Invariant Again", ICML 2019), or make it exactly circular-shift invariant with adaptive
polyphase sampling (Chaman & Dokmanic, 2021).

Rules (``s`` = stride > 1):

- strided ``Conv2d``            -> the same conv at stride 1, then ``BlurDownsample(s)`` after
  the conv's norm and activation when the conv opens an ``nn.Sequential`` of conv, pointwise
  norm and activation layers (the built-in CNN's blocks, torchvision's ``Conv2dNormActivation``):
  Zhang's ConvBlurPool. Elsewhere (e.g. inside residual blocks, whose order lives in
  ``forward``) right after the conv; strided 1x1 shortcut convs included. Blurring before the
  activation would make conv and blur one linear low-pass filter: the layer could no longer
  respond to fine patterns, and such models train much more slowly.
- ``MaxPool2d(k, s)``           -> ``MaxPool2d(k, 1)``, then ``BlurDownsample(s)`` (MaxBlurPool).
- ``AvgPool2d(k, s)``           -> ``BlurDownsample(s)`` (the binomial filter replaces the box).

``method="maxblur"`` applies the two pooling rules only (kornia's ``MaxBlurPool2D`` for max-pools)
and leaves strided convs alone: the "antialias the pools only" ablation. ``method="aps"``
replaces each subsampling by a stride-1 blur (circular padding; none when
``filt_size=1``) and :class:`~models.polyphase.PolyphaseDownsample`. Methods are entries of
``models.antialias_methods`` (add one with ``register_antialias``).

State-dict keys do not change: a strided conv or max-pool keeps its identity and parameters, its
stride becomes 1, and its class (or, for a conv-norm-activation block, the activation's class)
gains a ``downsample`` child that holds non-persistent buffers only; an average pool has no state
and is replaced. A baseline checkpoint therefore
loads with ``strict=True`` into its antialiased version. Output sizes equal the baseline's.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from .antialias_methods import ANTIALIAS_METHODS, get_antialias
from .blur import BlurDownsample


class DownsampleAfter:
    """Mixin for a layer rewritten to stride 1: its output goes through ``self.downsample``."""

    downsample: nn.Module

    def forward(self, *args, **kwargs):
        return self.downsample(super().forward(*args, **kwargs))  # type: ignore[misc]


class AntialiasedConv2d(DownsampleAfter, nn.Conv2d):
    """``nn.Conv2d`` at stride 1 followed by its ``downsample`` child."""


class AntialiasedMaxPool2d(DownsampleAfter, nn.MaxPool2d):
    """``nn.MaxPool2d`` at stride 1 followed by its ``downsample`` child."""


class AntialiasedReLU(DownsampleAfter, nn.ReLU):
    """``nn.ReLU`` followed by its ``downsample`` child (the end of a ConvBlurPool block)."""


_NAMED = {
    nn.Conv2d: AntialiasedConv2d,
    nn.MaxPool2d: AntialiasedMaxPool2d,
    nn.ReLU: AntialiasedReLU,
}

# Layers that act on each pixel alone (BatchNorm in eval mode): subsampling commutes with them,
# so with ``filt_size=1`` a ConvBlurPool block computes what the strided block computed.
_POINTWISE_NORMS = (nn.modules.batchnorm._BatchNorm, nn.Identity)
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Mish,
)


@cache
def _antialiased_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The stride-1-then-downsample variant of a layer class (made once per subclass, e.g.
    timm's ``Conv2dSame``)."""
    if cls in _NAMED:
        return _NAMED[cls]
    return type(f"Antialiased{cls.__name__}", (DownsampleAfter, cls), {})


def _stride(module: nn.Module) -> int:
    stride = module.stride
    if isinstance(stride, tuple | list):
        return int(max(stride))
    return int(stride if stride is not None else module.kernel_size)  # AvgPool2d(stride=None)


def is_downsampling(module: nn.Module) -> bool:
    """A conv / max-pool / avg-pool with an equal stride > 1 along both axes that has not been
    antialiased yet (anisotropic strides are left alone)."""
    if isinstance(module, DownsampleAfter):
        return False
    if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        stride = module.stride if module.stride is not None else module.kernel_size
        if isinstance(stride, tuple | list) and len(set(stride)) > 1:
            return False
        return _stride(module) > 1
    return False


def _block_activation(model: nn.Module, name: str, module: nn.Module) -> nn.Module | None:
    """The last activation of the conv-norm-activation ``nn.Sequential`` that ``module`` (a
    conv) opens, or None when the conv is not the first of such a block."""
    if not isinstance(module, nn.Conv2d):
        return None
    parent_name, _, _ = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential) or len(parent) < 2 or parent[0] is not module:
        return None
    tail = list(parent)[1:]
    if not all(isinstance(m, _POINTWISE_NORMS + _ACTIVATIONS) for m in tail):
        return None
    act = tail[-1]
    if not isinstance(act, _ACTIVATIONS):
        return None
    uses = sum(m is act for _, m in model.named_modules(remove_duplicate=False))
    return act if uses == 1 else None  # a shared activation module runs elsewhere too


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return "conv"
    return "maxpool" if isinstance(module, nn.MaxPool2d) else "avgpool"


def describe_layer(module: nn.Module) -> str:
    """Compact description, e.g. ``Conv2d(64->128, k3, s2)``."""
    k = module.kernel_size
    k = k[0] if isinstance(k, tuple) else k
    name = type(module).__name__
    if isinstance(module, nn.Conv2d):
        groups = f", groups={module.groups}" if module.groups > 1 else ""
        return (
            f"{name}({module.in_channels}->{module.out_channels}, k{k}, s{_stride(module)}{groups})"
        )
    return f"{name}(k{k}, s{_stride(module)})"


def _rewrite_text(
    kind: str, method: str, stride: int, filt_size: int, pad_mode: str, after: str | None = None
) -> str:
    down = get_antialias(method).describe(stride, filt_size, pad_mode)
    if kind == "avgpool":
        return down
    layer = f"{'Conv2d' if kind == 'conv' else 'MaxPool2d'}(s1)"
    return f"{layer} + {down}" if after is None else f"{layer} ... {after} + {down}"


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if name and is_downsampling(m)]


def _rewritten_by(method: str, module: nn.Module) -> bool:
    if method == "none":
        return False
    return get_antialias(method).convs or not isinstance(module, nn.Conv2d)


def _probe_input_sizes(
    model: nn.Module, modules: list[tuple[str, nn.Module]], input_size: int
) -> dict[str, int]:
    """Spatial input size of each module in one dry forward pass (eval mode, no grad)."""
    sizes: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            sizes.setdefault(name, args[0].shape[-2] * args[0].shape[-1])

        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in modules]
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    in_chans = first.in_channels if first is not None else 3
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sizes


def _skipped(model: nn.Module, modules: list[tuple[str, nn.Module]], input_size: int) -> set[str]:
    """Names of the downsampling layers that see the highest resolution (skip_first)."""
    if not modules:
        return set()
    sizes = _probe_input_sizes(model, modules, input_size)
    if not sizes:
        return {modules[0][0]}
    top = max(sizes.values())
    return {name for name, size in sizes.items() if size == top}


def _check(method: str, filt_size: int, pad_mode: str) -> None:
    if method != "none" and method not in ANTIALIAS_METHODS:
        choices = ", ".join(["none", *ANTIALIAS_METHODS.names()])
        raise ValueError(f"antialias method must be one of {choices}, got {method!r}.")
    if not 1 <= filt_size <= 7:
        raise ValueError(f"filt_size must be in 1..7, got {filt_size}.")
    BlurDownsample(1, 1, pad_mode)  # validates pad_mode


def _targets(
    model: nn.Module, method: str, skip_first: bool, input_size: int
) -> list[tuple[str, nn.Module, str | None]]:
    """Every downsampling layer with why it is kept (None: it is rewritten): the one walk that
    :func:`antialias` and its dry run share (arguments already checked)."""
    modules = _candidates(model)
    skipped = _skipped(model, modules, input_size) if skip_first else set()
    targets = []
    for name, m in modules:
        kept = None
        if name in skipped:
            kept = "kept (skip_first)"
        elif not _rewritten_by(method, m):
            kept = "kept" if method == "none" else f"kept ({method}: pools only)"
        targets.append((name, m, kept))
    return targets


def antialias(
    model: nn.Module,
    method: str = "blur",
    filt_size: int = 4,
    pad_mode: str = "reflect",
    skip_first: bool = False,
    input_size: int = 32,
    *,
    dry_run: bool = False,
) -> nn.Module | list[tuple[str, str, str]]:
    """Rewrite every strided conv / max-pool / avg-pool of ``model`` in place; returns ``model``.

    ``dry_run=True`` changes nothing and returns the plan instead: ``(module path, current layer,
    rewrite)`` per downsampling layer, in module order (layers kept by ``skip_first`` have the
    rewrite ``"kept (skip_first)"``).

    Args:
        method: ``blur`` (Zhang's BlurPool), ``maxblur`` (the pooling rules only: max-pools
            become ``MaxPool(k, 1) -> blur-downsample``, average pools the blur; strided convs
            are kept), ``aps`` (adaptive polyphase
            sampling, optional stride-1 blur first) or ``none`` (no change).
        filt_size: binomial filter size 1-7 (1 = no blur).
        pad_mode: padding of the blur: ``reflect`` (Zhang), ``replicate``, ``circular``, ``zeros``.
            ``aps`` always pads its blur circularly. APS makes a network exactly invariant to
            circular shifts of its input only if every subsampling is APS, every conv and pool
            pads circularly (built-in CNN: ``padding_mode="circular"``), the head pools
            globally (``head="gap"``) and BatchNorm is in eval mode.
        skip_first: leave the downsampling layer(s) at the highest resolution alone (found with
            one dry forward pass of an ``input_size`` image; parallel branches such as a residual
            block's conv and its 1x1 shortcut are both kept).
    """
    _check(method, filt_size, pad_mode)
    if dry_run:
        return _plan(model, method, filt_size, pad_mode, skip_first, input_size)
    if method == "none":
        return model
    param = next(model.parameters(), None)
    for name, m, kept in _targets(model, method, skip_first, input_size):
        if kept:
            continue
        down = get_antialias(method).downsampler(_stride(m), filt_size, pad_mode)
        if param is not None:
            down = down.to(device=param.device)
        if isinstance(m, nn.AvgPool2d):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, down)
            continue
        # Zhang's ConvBlurPool: after the block's activation; else right after the layer.
        host = _block_activation(model, name, m) or m
        m.stride = (1, 1) if isinstance(m, nn.Conv2d) else 1
        host.__class__ = _antialiased_class(type(host))
        host.downsample = down
    return model


def _plan(
    model: nn.Module, method: str, filt_size: int, pad_mode: str, skip_first: bool, input_size: int
) -> list[tuple[str, str, str]]:
    plan = []
    for name, m, kept in _targets(model, method, skip_first, input_size):
        act = _block_activation(model, name, m)
        after = None if act is None else type(act).__name__
        rewrite = kept or _rewrite_text(_kind(m), method, _stride(m), filt_size, pad_mode, after)
        plan.append((name, describe_layer(m), rewrite))
    return plan
