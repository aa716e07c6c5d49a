"""Data: object sources, canvas rendering with placement distributions, the datamodule."""

from invlab.imageops import center_crop
from train.data import (  # noqa: F401  (register sources)
    digits,
    folder,
    shapes,
    shards,
    torchvision_sources,
)
from train.data.datamodule import InvDataModule, SplitData, build_datamodule
from train.data.registry import (
    ArrayPool,
    ObjectPool,
    Objects,
    Source,
    build_source,
    list_sources,
    register_source,
)

__all__ = [
    "ArrayPool",
    "InvDataModule",
    "ObjectPool",
    "Objects",
    "Source",
    "SplitData",
    "build_datamodule",
    "build_source",
    "center_crop",
    "list_sources",
    "register_source",
]
