"""The datamodule: train / val / typical / atypical splits held in memory as uint8 tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from train.config import Config, ConfigError, PlacementConfig
from train.data.registry import ObjectPool, Source, build_source
from train.data.render import render_split, resize_split
from train.data.sampler import EpochSeededSampler

__all__ = ["SPLITS", "InvDataModule", "SplitData", "build_datamodule", "center_crop"]

SPLITS = ("train", "val", "typical", "atypical")
_HELDOUT_SLOT = {"val": 0, "typical": 1, "atypical": 2}  # interleaved held-out draw positions


@dataclass
class SplitData:
    """One split: uint8 ``images`` [N, 3, S + 2m, S + 2m], int64 ``labels`` [N], ``margin`` m;
    ``indices`` [N] are the instances' indices in their source (provenance)."""

    images: Tensor
    labels: Tensor
    margin: int
    indices: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def center_crop(images: Tensor, margin: int) -> Tensor:
    """The central window of a margin-padded batch (the model input)."""
    if margin == 0:
        return images
    return images[..., margin:-margin, margin:-margin]


def _describe_placement(p: PlacementConfig) -> str:
    where = {
        "gaussian": f"gaussian(sigma={p.sigma_px:g}px)",
        "uniform": f"uniform(+-{p.max_offset_px:g}px)",
        "ring": f"ring(r={p.radius_px[0]:g}..{p.radius_px[1]:g}px)",
        "center": "center",
    }[p.position]
    return f"{where}, scale {p.scale[0]:g}..{p.scale[1]:g}, {p.background} background"


class InvDataModule(L.LightningDataModule):
    """Renders the four splits once (``setup`` is idempotent) and serves uint8 batches.

    ``split(name)`` gives the full-size tensors (held-out splits keep their margin for crop-based
    shift evaluation); the dataloaders give the model-input window.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self._sources: dict[str, Source] = {}
        self._splits: dict[str, SplitData] = {}
        self._eval_sets: dict[str, TensorDataset] = {}

    # ---------------------------------------------------------------------------- sources
    def _source(self, name: str) -> Source:
        if name not in self._sources:
            self._sources[name] = build_source(name, self.cfg.data, int(self.cfg.seed))
        return self._sources[name]

    @property
    def source(self) -> Source:
        return self._source(self.cfg.data.source)

    def load_sources(self) -> tuple[Source, Source]:
        """(source, atypical-split source), loaded once. The atypical one is
        ``data.atypical_source`` when set and must have the same number of classes."""
        name = self.cfg.data.atypical_source
        if name is None or name == self.cfg.data.source:
            return self.source, self.source
        other = self._source(name)
        if other.num_classes != self.source.num_classes:
            raise ConfigError(
                f"data.atypical_source={name!r} has {other.num_classes} classes but "
                f"data.source={self.cfg.data.source!r} has {self.source.num_classes}; the "
                f"atypical split needs the same classes. Choose a source with "
                f"{self.source.num_classes} classes or set data.atypical_source=null."
            )
        return self.source, other

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    # ----------------------------------------------------------------------------- splits
    def margin(self, split: str) -> int:
        """Real extra pixels around the model input: held-out renderings only. Images used as
        they are (``data.render=false``) have none — resizing them larger would change their
        scale against training — so shift evaluation pads them (``eval.pad_mode``)."""
        if split == "train" or not self.cfg.data.render:
            return 0
        return int(self.cfg.data.eval_margin_px)

    def _split_spec(self, split: str) -> tuple[ObjectPool, PlacementConfig, np.ndarray]:
        d = self.cfg.data
        n = int(d[f"n_{split}"])
        if split == "train":
            return self.source.train, d.placement.train, np.arange(n)
        positions = 3 * np.arange(n) + _HELDOUT_SLOT[split]
        if split == "atypical" and d.atypical_source not in (None, d.source):
            return self.load_sources()[1].heldout, d.placement.train, positions
        placement = d.placement.atypical if split == "atypical" else d.placement.train
        return self.source.heldout, placement, positions

    def _render(self, split: str, scale_factor: float = 1.0, n: int | None = None) -> SplitData:
        d = self.cfg.data
        pool, placement, positions = self._split_spec(split)
        positions = positions if n is None else positions[:n]
        margin = self.margin(split)
        canvas = int(d.image_size) + 2 * margin
        if d.render:
            images, labels, indices = render_split(
                pool,
                len(positions),
                split=split,
                seed=int(self.cfg.seed),
                placement=placement,
                canvas=canvas,
                object_px=float(d.object_size) * int(d.image_size),
                positions=positions,
                scale_factor=scale_factor,
            )
        else:
            images, labels, indices = resize_split(
                pool, len(positions), seed=int(self.cfg.seed), size=canvas, positions=positions
            )
        return SplitData(images, labels, margin, indices)

    def prepare_data(self) -> None:
        """Lightning runs this on one process: the only place a download may happen."""
        if self.cfg.data.download:
            self.load_sources()

    def setup(self, stage: str | None = None) -> None:
        if len(self._splits) == len(SPLITS):
            return
        self.load_sources()  # a class-count mismatch fails before anything is rendered
        for split in SPLITS:
            if split not in self._splits:
                self._splits[split] = self._render(split)

    def split(self, name: str) -> SplitData:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        self.setup()
        return self._splits[name]

    def render_scales(self, split: str, scales: Sequence[float], n: int | None = None) -> Tensor:
        """The first ``n`` images of a split re-rendered with every drawn scale multiplied by
        each factor (same instances, offsets, backgrounds) -> uint8 [n, len(scales), 3, H, W]."""
        if not self.cfg.data.render:
            raise ConfigError("render_scales needs data.render=true (objects are re-rendered).")
        views = [self._render(split, float(s), n).images for s in scales]
        return torch.stack(views, 1)

    # -------------------------------------------------------------------------- loaders
    def _loader(self, dataset: TensorDataset, shuffle: bool, batch_size: int | None) -> DataLoader:
        """Shuffled loaders draw their order from (seed, epoch): a resumed run sees the same
        batches as an uninterrupted one (Lightning calls ``set_epoch``)."""
        workers = int(self.cfg.data.num_workers)
        return DataLoader(
            dataset,
            batch_size=batch_size or int(self.cfg.data.batch_size),
            sampler=EpochSeededSampler(len(dataset), int(self.cfg.seed), shuffle=shuffle),
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        s = self.split("train")
        return self._loader(TensorDataset(s.images, s.labels), True, None)

    def eval_dataloader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """Centre-cropped (model-input window) batches of a split, in order."""
        if split not in self._eval_sets:
            s = self.split(split)
            window = center_crop(s.images, s.margin).contiguous()
            self._eval_sets[split] = TensorDataset(window, s.labels)
        return self._loader(self._eval_sets[split], False, batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> list[DataLoader]:
        return [self.eval_dataloader("typical"), self.eval_dataloader("atypical")]

    # ---------------------------------------------------------------------------- report
    def describe(self) -> str:
        """One line per split: size, image shape, source and placement."""
        self.setup()
        d = self.cfg.data
        lines = []
        for name in SPLITS:
            s = self._splits[name]
            _, placement, _ = self._split_spec(name)
            source = d.atypical_source if name == "atypical" and d.atypical_source else d.source
            instances = "train" if name == "train" else "held-out"
            how = _describe_placement(placement) if d.render else "as-is (resized)"
            shape = "x".join(str(v) for v in s.images.shape[1:])
            lines.append(
                f"{name:9s} {len(s):6d} x {shape} uint8, margin {s.margin}, "
                f"{source} ({instances} instances), {how}"
            )
        return "\n".join(lines)


def build_datamodule(cfg: Config) -> InvDataModule:
    """The datamodule for a full config (nothing is loaded or rendered until used)."""
    return InvDataModule(cfg)
