"""Model registry and factory (built-in CNNs, timm, torchvision), antialiasing, weights I/O."""

from .antialias import antialias
from .antialias_methods import register_antialias
from .blur import BlurDownsample
from .cnn import CNN  # importing models.cnn registers the built-ins
from .downsampling import register_downsample
from .factory import build, describe, model_config
from .polyphase import PolyphaseDownsample
from .registry import list_models, register_model
from .weights import LoadResult, export_weights, load_weights

__all__ = [
    "CNN",
    "BlurDownsample",
    "LoadResult",
    "PolyphaseDownsample",
    "antialias",
    "build",
    "describe",
    "export_weights",
    "list_models",
    "load_weights",
    "model_config",
    "register_antialias",
    "register_downsample",
    "register_model",
]
