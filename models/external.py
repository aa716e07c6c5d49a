"""timm and torchvision models by name (``timm:<name>``, ``tv:<name>``), with the library's own
pretrained weights when asked (``model.pretrained=true``: timm's hub or cache, or a
``pretrained_cfg_overlay`` file), and the small-input stem rewrite for 16-64 px images."""

from __future__ import annotations

from typing import Any

from torch import nn

from invlab.config import ConfigError
from invlab.suggest import close_matches


def _unknown(kind: str, name: str, known: list[str]) -> ConfigError:
    close = close_matches(name, known, n=3)
    hint = f" Closest: {', '.join(close)}." if close else ""
    return ConfigError(f"Unknown {kind} model '{name}'.{hint}")


def timm_blurpool(filt_size: int, pad_mode: str) -> type[nn.Module]:
    """timm's ``BlurPool2d`` with our filter size and padding, as a class (timm's ``aa_layer``
    accepts a class, not a ``partial``).

    Native vs rewrite: timm places the blur where its architecture chooses (ResNet: after the
    strided 3x3 conv's activation, as Zhang does, and after a stride-1 stem max-pool) but leaves
    the strided 1x1 shortcut conv un-blurred; :func:`models.antialias` blurs every strided layer,
    shortcuts included, right after the conv. timm pads even filter sizes symmetrically (one
    pixel more output), so only odd sizes are accepted here.
    """
    from timm.layers import BlurPool2d

    if filt_size < 2 or filt_size % 2 == 0:
        raise ConfigError(
            f"model.antialias.native=true needs an odd filt_size >= 3, got {filt_size}: timm's "
            "BlurPool2d pads even filters symmetrically (32 px -> 17 px at filt_size=4), which "
            "breaks residual additions. Use filt_size 3/5/7, or native=false (invlab's rewrite "
            "pads like Zhang: 32 px -> 16 px for every size)."
        )
    mode = "constant" if pad_mode == "zeros" else pad_mode

    class TimmBlurPool2d(BlurPool2d):
        def __init__(self, channels: int | None = None, stride: int = 2, **kwargs: Any) -> None:
            super().__init__(channels, filt_size=filt_size, stride=stride, pad_mode=mode, **kwargs)

    return TimmBlurPool2d


def create_timm(
    name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any], pretrained: bool = False
) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    except TypeError as err:
        raise ConfigError(f"timm model '{name}' rejected model.kwargs {kwargs}: {err}") from None
    except (OSError, RuntimeError) as err:  # no network / no cached file / a hub error
        if not pretrained:
            raise
        raise ConfigError(
            f"timm could not load the pretrained weights of '{name}': {err}. On a machine "
            f"without network, fetch them once where there is one (timm caches them), or give a "
            f"local file: model.kwargs.pretrained_cfg_overlay={{file: PATH}}."
        ) from None


def pretrained_preprocessing(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The input a timm model's pretrained weights expect (``pretrained_cfg``: input size,
    mean/std, interpolation, crop), with ``pretrained_cfg_overlay`` applied; built without
    weights."""
    import timm
    from timm.data import resolve_data_config

    model = timm.create_model(name, pretrained=False, **kwargs)
    cfg = resolve_data_config(model=model)
    return {
        "input_size": list(cfg["input_size"]),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }


def create_torchvision(
    name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any], pretrained: bool = False
) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        raise _unknown("torchvision", name, known)
    if in_chans != 3:
        raise ConfigError(f"torchvision models take 3 input channels, got in_chans={in_chans}.")
    weights = "DEFAULT" if pretrained else None
    try:
        return torchvision.models.get_model(
            name, weights=weights, num_classes=num_classes, **kwargs
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"torchvision model '{name}' rejected model.kwargs {kwargs}: {err}"
        ) from None


def _stem_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A 3x3 stride-1 'same' conv with the channels (and bias) of ``conv``."""
    return nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        3,
        stride=1,
        padding=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device)


def adapt_small_input(model: nn.Module, name: str) -> nn.Module:
    """Rewrite the stem for 16-64 px inputs in place: 3x3 stride-1 first conv, no stem max-pool.

    Known stems: ResNet-style ``conv1`` + ``maxpool`` (timm and torchvision), timm
    EfficientNet/MobileNet ``conv_stem``, torchvision MobileNet/EfficientNet ``features[0]``;
    VGG-style models have no strided stem and are left as they are. Anything else raises.
    """
    conv1 = getattr(model, "conv1", None)
    if hasattr(model, "maxpool") and isinstance(conv1, nn.Conv2d | nn.Sequential):
        if isinstance(conv1, nn.Conv2d):
            model.conv1 = _stem_conv(conv1)
        else:  # timm deep stem (resnet*d): three 3x3 convs, the first strided
            for m in conv1.modules():
                if isinstance(m, nn.Conv2d):
                    m.stride = (1, 1)
        model.maxpool = nn.Identity()
        return model
    if isinstance(getattr(model, "conv_stem", None), nn.Conv2d):
        model.conv_stem = _stem_conv(model.conv_stem)
        return model
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features) > 0:
        first = features[0]
        if isinstance(first, nn.Sequential) and isinstance(first[0], nn.Conv2d):
            first[0] = _stem_conv(first[0])  # torchvision Conv2dNormActivation
            return model
        if isinstance(first, nn.Conv2d) and first.stride == (1, 1):
            return model  # VGG: no strided stem
    raise ConfigError(
        f"model.small_input=true: the stem of '{name}' ({type(model).__name__}) is not one "
        "invlab knows how to rewrite (ResNet, EfficientNet, MobileNet, VGG). Set "
        "model.small_input=false."
    )
