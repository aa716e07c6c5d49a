"""Augmentation pipelines built from the ``augment`` config section (kornia + exact shifts)."""

from .factory import build
from .mix import RandomMix
from .ops import build_op, kornia_op_names
from .pipeline import Augmenter, strip_state
from .registry import list_presets, register_preset
from .shift import RandomIntegerShift, shift_batch

__all__ = [
    "Augmenter",
    "RandomIntegerShift",
    "RandomMix",
    "build",
    "build_op",
    "kornia_op_names",
    "list_presets",
    "register_preset",
    "shift_batch",
    "strip_state",
]
