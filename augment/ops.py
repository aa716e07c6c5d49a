"""Explicit kornia ops from config: ``{name: RandomAffine, degrees: 0, translate: [0.1, 0.1]}``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import kornia.augmentation as K
from torch import nn

from invlab.config import ConfigError
from invlab.suggest import did_you_mean


def kornia_op_names() -> list[str]:
    """Names of the concrete 2-D image augmentations in ``kornia.augmentation``."""
    names = []
    for name in K.__all__:
        cls = getattr(K, name, None)
        if (
            inspect.isclass(cls)
            and issubclass(cls, K.AugmentationBase2D)
            and not inspect.isabstract(cls)
            and not name.endswith("Base2D")
        ):
            names.append(name)
    return sorted(names)


def _plain(value: Any) -> Any:
    """YAML lists -> tuples (kornia's range arguments expect tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def build_op(spec: Mapping[str, Any], same_on_batch: bool = False) -> nn.Module:
    """Instantiate ``kornia.augmentation.<spec['name']>(**rest)``.

    Bad names or arguments raise ConfigError listing the valid ones.

    ``same_on_batch`` is passed on unless the spec sets it.
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    valid = kornia_op_names()
    if not isinstance(name, str):
        raise ConfigError(
            f"Each entry of 'augment.ops' needs a 'name' (a kornia.augmentation class), got {spec}."
        )
    if name not in valid:
        raise ConfigError(
            f"Unknown kornia op {name!r} in 'augment.ops'.{did_you_mean(name, valid)} "
            f"Valid names: {', '.join(valid)}."
        )
    cls = getattr(K, name)
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    for key in spec:
        if key not in accepted:
            raise ConfigError(
                f"Unknown argument {key!r} for kornia op {name} in 'augment.ops'."
                f"{did_you_mean(key, accepted)} Accepted arguments: {', '.join(accepted)}."
            )
    kwargs = {k: _plain(v) for k, v in spec.items()}
    if "same_on_batch" in accepted:
        kwargs.setdefault("same_on_batch", same_on_batch)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"Invalid arguments for kornia op {name} in 'augment.ops': {err}"
        ) from None
