"""The datamodule: ``train``, ``val`` and the named held-out splits, in memory as uint8 tensors,
or (``data.render=false`` images too large for memory, ``data.stream``) streamed from their
files by DataLoader workers (:mod:`train.data.stream`); rendered training data too large for
memory is rendered per batch on the training device (:mod:`train.data.render_batches`).

Held-out splits (``data.heldout``) render held-out instances with the training placement
except for the factors each split sets. ``val`` and every held-out split get disjoint instances
of their source's held-out pool; when the pool is too small for that, each split cycles its own
disjoint share and the reuse is announced (``notes``) and recorded, so that bootstrap intervals
can resample instances rather than images.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from invlab.config import (
    Config,
    ConfigError,
    PlacementConfig,
    changed_factors,
    heldout_placement,
    heldout_splits,
    ordered_heldout,
)
from invlab.imageops import center_crop
from train.data import stream
from train.data.background import TEXTURE_CELLS
from train.data.device_loader import DeviceBatches, use_on_device
from train.data.folder import decode_side, heldout_folder
from train.data.heap import fix_mmap_threshold
from train.data.placement import FrameRule
from train.data.registry import ObjectPool, Source, build_source
from train.data.render import Scene, render_scene, render_split, resize_split
from train.data.render_batches import RenderBatches, RenderedImages, SplitRenderer
from train.data.sampler import EpochSeededSampler

__all__ = [
    "InvDataModule",
    "SplitData",
    "allocate_instances",
    "build_datamodule",
    "describe_placement",
]


@dataclass
class SplitData:
    """One split: uint8 ``images`` [N, 3, S + 2m, S + 2m] (a lazy
    :class:`~train.data.stream.StreamImages` when streamed, or
    :class:`~train.data.render_batches.RenderedImages` for a training split rendered per batch),
    int64 ``labels`` [N], ``margin`` m; ``indices`` [N] are the instances' indices in their
    source (provenance, and the unit a bootstrap resamples); ``scene`` holds the placements of
    rendered splits (neither is kept for a split rendered per batch)."""

    images: Tensor
    labels: Tensor
    margin: int
    indices: Tensor | None = None
    scene: Scene | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def boxes(self) -> Tensor | None:
        """[N, 4] object boxes (x0, x1, y0, y1), px from the model window's centre."""
        if self.scene is None:
            return None
        return torch.as_tensor(self.scene.boxes(), dtype=torch.float64)


def describe_placement(p: PlacementConfig) -> str:
    where = {
        "gaussian": f"gaussian(sigma={p.sigma_px:g}px, <= {p.max_offset_px:g}px)",
        "uniform": f"uniform(+-{p.max_offset_px:g}px)",
        "ring": f"ring(r={p.radius_px[0]:g}..{p.radius_px[1]:g}px)",
        "center": "center",
    }[p.position]
    look = "" if p.appearance == "colour" else f", {p.appearance}"
    bg = "flat or noise" if p.background == "mixed" else p.background
    return f"{where}, scale {p.scale[0]:g}..{p.scale[1]:g}, {bg} background{look}"


def allocate_instances(
    pool_size: int, demands: dict[str, int]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Disjoint shares of a pool of ``pool_size`` instances for splits needing ``demands`` images.

    Returns (draw positions per split, distinct instances per split). Positions index a seeded
    permutation of the pool: split ``s`` owns a contiguous block of it, of ``demands[s]``
    positions when everything fits, else of a share proportional to its demand (at least one),
    which its images cycle through. Blocks never overlap.
    """
    total = sum(demands.values())
    if total <= pool_size:
        sizes = dict(demands)
    else:
        active = {s: n for s, n in demands.items() if n > 0}
        if len(active) > pool_size:
            raise ConfigError(
                f"{len(active)} splits need instances but the held-out pool has only "
                f"{pool_size}: give fewer splits images."
            )
        exact = {s: pool_size * n / total for s, n in active.items()}
        sizes = {s: max(1, math.floor(v)) for s, v in exact.items()}
        for s in sorted(exact, key=lambda s: exact[s] - math.floor(exact[s]), reverse=True):
            if sum(sizes.values()) >= pool_size:
                break
            sizes[s] += 1
        while sum(sizes.values()) > pool_size:  # the minimum of one pushed us over
            biggest = max(sizes, key=sizes.__getitem__)
            sizes[biggest] -= 1
        sizes.update({s: 0 for s in demands if s not in active})
    positions, start = {}, 0
    for split, n in demands.items():
        size = sizes[split]
        positions[split] = start + np.arange(n) % max(size, 1)
        start += size
    return positions, sizes


FOLDER_SPLIT = "folder-split:"  # source name of a held-out split's own folder (heldout.<s>.root)


class InvDataModule(L.LightningDataModule):
    """Renders every split once (``setup`` is idempotent; a training split too large for memory
    is rendered per batch instead, see ``data.stream``) and serves uint8 batches.

    ``split(name)`` gives the full-size tensors (held-out splits keep their margin for crop-based
    shift evaluation); the dataloaders give the model-input window. ``notes`` collects what a
    user should know about the data (instance reuse).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self._sources: dict[str, Source] = {}
        self._splits: dict[str, SplitData] = {}
        self._eval_sets: dict[str, Dataset] = {}
        self._positions: dict[str, np.ndarray] | None = None
        self.instance_counts: dict[str, int] = {}
        self.notes: list[str] = []
        self.train_on_device: bool | None = None  # which path train_dataloader took
        self.streaming: bool | None = None  # data.render=false splits decoded from files

    # ---------------------------------------------------------------------------- sources
    def _source(self, name: str) -> Source:
        """A source, loaded once; one with fewer than two classes is refused (every image would
        be classified right by construction)."""
        if name not in self._sources and name.startswith(FOLDER_SPLIT):
            root = name.removeprefix(FOLDER_SPLIT)
            split = next(s for s, v in self.cfg.data.heldout.items() if v.get("root") == root)
            pool = heldout_folder(root, split, self.class_names, decode_side(self.cfg.data))
            self._sources[name] = Source(name, self.class_names, pool, pool)
        if name not in self._sources:
            source = build_source(name, self.cfg.data, int(self.cfg.seed))
            if source.num_classes < 2:
                found = ", ".join(repr(c) for c in source.class_names) or "none"
                raise ConfigError(
                    f"Data source {name!r} has {source.num_classes} class(es) ({found}) at "
                    f"data.root={self.cfg.data.root!r}: a classifier needs at least two, and with "
                    f"one every prediction is right (100% accuracy). Give it at least two classes "
                    f"(for 'folder': one sub-folder per class, e.g. <root>/train/<class>/*.png)."
                )
            self._sources[name] = source
        return self._sources[name]

    @property
    def source(self) -> Source:
        return self._source(self.cfg.data.source)

    def source_name(self, split: str) -> str:
        spec = self.cfg.data.heldout.get(split)
        if spec is not None and spec.get("root"):
            return f"{FOLDER_SPLIT}{spec.root}"
        return spec.source if spec is not None and spec.source else self.cfg.data.source

    def source_of(self, split: str) -> Source:
        """The source a split draws from; another source must have the same classes."""
        name = self.source_name(split)
        if name == self.cfg.data.source:
            return self.source
        if name.startswith(FOLDER_SPLIT):  # the split's own folder, labelled like training
            return self._source(name)
        other = self._source(name)
        if other.num_classes != self.source.num_classes:
            raise ConfigError(
                f"data.heldout.{split}.source={name!r} has {other.num_classes} classes but "
                f"data.source={self.cfg.data.source!r} has {self.source.num_classes}; the "
                f"split needs the same classes. Choose a source with "
                f"{self.source.num_classes} classes or remove data.heldout.{split}.source."
            )
        return other

    def load_sources(self) -> None:
        """Load every source once (the only place a download may happen); a class-count
        mismatch fails here, before anything is rendered."""
        for split in self.split_names:
            self.source_of(split)

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    # ----------------------------------------------------------------------------- splits
    @property
    def split_names(self) -> list[str]:
        """``train``, ``val`` and every held-out split, in config order."""
        return ["train", "val", *ordered_heldout(self.cfg.data)]

    @property
    def heldout_names(self) -> list[str]:
        """Held-out splits with images."""
        return heldout_splits(self.cfg.data)

    def size(self, split: str) -> int:
        d = self.cfg.data
        if split in ("train", "val"):
            return int(d[f"n_{split}"])
        return int(d.heldout[split].n)

    def placement(self, split: str) -> PlacementConfig:
        if split in ("train", "val"):
            return self.cfg.data.placement
        return heldout_placement(self.cfg.data, split)

    def margin(self, split: str) -> int:
        """Real extra pixels around the model input: held-out splits only. Images used as they
        are (``data.render=false``) have them only where ``data.crop_pct`` leaves room around
        the crop (resizing them larger would change their scale against training); otherwise
        shift evaluation pads them (``eval.pad_mode``)."""
        d = self.cfg.data
        if split == "train":
            return 0
        m = int(d.eval_margin_px)
        if d.render:
            return m
        fit = self.fit_side
        return m if fit is not None and fit >= int(d.image_size) + 2 * m else 0

    @property
    def fit_side(self) -> int | None:
        """``data.render=false`` with ``data.crop_pct`` < 1: the side the shorter side of an
        image is resized to before its centre is cropped (None: resized to the crop itself)."""
        d = self.cfg.data
        if d.render or float(d.crop_pct) >= 1:
            return None
        return int(round(int(d.image_size) / float(d.crop_pct)))

    @property
    def frame(self) -> FrameRule | None:
        """The in-frame rule every rendered split obeys (None with ``keep_in_frame=false``)."""
        d = self.cfg.data
        if not d.keep_in_frame:
            return None
        return FrameRule(int(d.image_size), float(d.eval_margin_px), float(d.frame_scale))

    def _allocate(self) -> dict[str, np.ndarray]:
        """Draw positions of ``val`` and the held-out splits in their sources' held-out pools."""
        if self._positions is not None:
            return self._positions
        by_source: dict[str, dict[str, int]] = {}
        for split in self.split_names[1:]:
            by_source.setdefault(self.source_name(split), {})[split] = self.size(split)
        positions: dict[str, np.ndarray] = {}
        for name, demands in by_source.items():
            pool = len(self._source(name).heldout)
            got, sizes = allocate_instances(pool, demands)
            positions.update(got)
            self.instance_counts.update(sizes)
            reused = {s: n for s, n in demands.items() if n > sizes[s]}
            if reused:
                parts = ", ".join(
                    f"{s} {n} images of {sizes[s]} instances" for s, n in reused.items()
                )
                note = (
                    f"Instance reuse: data.source {name!r} has {pool} held-out instances but "
                    f"{', '.join(demands)} need {sum(demands.values())} images; every split keeps "
                    f"its own instances ({parts}). Bootstrap intervals resample instances."
                )
                self.notes.append(note)
                warnings.warn(note, stacklevel=2)
        self._positions = positions
        return positions

    def _render(self, split: str) -> SplitData:
        d = self.cfg.data
        n = self.size(split)
        if split == "train":
            pool: ObjectPool = self.source.train
            positions = np.arange(n)
        else:
            pool = self.source_of(split).heldout
            positions = self._allocate()[split]
        margin = self.margin(split)
        canvas = int(d.image_size) + 2 * margin
        if not d.render and self._streams() and stream.streamable(pool):
            images, labels, indices = stream.stream_split(
                pool,
                positions,
                seed=int(self.cfg.seed),
                size=canvas,
                num_workers=d.num_workers,
                fit=self.fit_side,
            )
            return SplitData(images, labels, margin, indices)
        if not d.render:
            fit = self.fit_side
            images, labels, indices = resize_split(
                pool, n, seed=int(self.cfg.seed), size=canvas, positions=positions, fit=fit
            )
            return SplitData(images, labels, margin, indices)
        how = dict(
            split=split,
            seed=int(self.cfg.seed),
            placement=self.placement(split),
            canvas=canvas,
            object_px=self.object_px,
            positions=positions,
            frame=self.frame,
            cell_px=int(d.image_size) / TEXTURE_CELLS,
        )
        if split == "train" and self._streams():  # rendered per batch (train_dataloader)
            renderer = SplitRenderer(pool, n, **how)
            return SplitData(RenderedImages(renderer), renderer.labels, margin)
        images, labels, indices, scene = render_split(pool, n, **how)
        return SplitData(images, labels, margin, indices, scene)

    def _streams(self) -> bool:
        """Whether splits are streamed (``data.stream``, decided once and noted); streaming fixes
        glibc's mmap threshold (:mod:`train.data.heap`)."""
        if self.streaming is None:
            self.streaming, note = stream.plan_stream(self)
            self.notes.append(note)
            heap = fix_mmap_threshold() if self.streaming else None
            if heap:
                self.notes.append(heap)
        return self.streaming

    @property
    def object_px(self) -> float:
        return float(self.cfg.data.object_size) * int(self.cfg.data.image_size)

    def prepare_data(self) -> None:
        """Lightning runs this on one process: the only place a download may happen."""
        if self.cfg.data.download:
            self.load_sources()

    def setup(self, stage: str | None = None) -> None:
        if len(self._splits) == len(self.split_names):
            return
        self.load_sources()
        for split in self.split_names:
            if split not in self._splits:
                self._splits[split] = self._render(split)

    def split(self, name: str) -> SplitData:
        if name not in self.split_names:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(self.split_names)}")
        self.setup()
        return self._splits[name]

    def render_scales(self, split: str, scales: Sequence[float], n: int | None = None) -> Tensor:
        """The first ``n`` images of a split re-rendered with every drawn scale multiplied by
        each factor (same instances, offsets, backgrounds) -> uint8 [n, len(scales), 3, H, W]."""
        if not self.cfg.data.render:
            raise ConfigError("render_scales needs data.render=true (objects are re-rendered).")
        data = self.split(split)
        count = len(data) if n is None else n
        if isinstance(data.images, RenderedImages):  # rendered per batch: no scene kept
            scene = data.images.renderer.scene(np.arange(count))
        else:
            assert data.scene is not None
            scene = data.scene.head(count)
        pool = self.source.train if split == "train" else self.source_of(split).heldout
        views = [
            render_scene(
                pool,
                scene,
                split=split,
                seed=int(self.cfg.seed),
                placement=self.placement(split),
                canvas=int(data.images.shape[-1]),
                object_px=self.object_px,
                scale_factor=float(s),
                cell_px=int(self.cfg.data.image_size) / TEXTURE_CELLS,
            )
            for s in scales
        ]
        return torch.stack(views, 1)

    # -------------------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int | None) -> DataLoader:
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
            pin_memory=self.device.type == "cuda",
        )

    @property
    def device(self) -> torch.device:
        """The training device (CPU until a Trainer is attached)."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def train_dataloader(self) -> DataLoader | DeviceBatches | RenderBatches:
        """Shuffled training batches: sliced from the split on the device (``data.on_device``,
        see :func:`use_on_device`), from a DataLoader, or rendered per batch (on the device
        unless ``data.on_device=false``); all give the same batches."""
        s = self.split("train")
        if isinstance(s.images, stream.StreamImages):  # decoded by the DataLoader's workers
            self.train_on_device = False
            return self._loader(s.images.dataset, True, None)
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if isinstance(s.images, RenderedImages):
            self.train_on_device = str(self.cfg.data.on_device) != "false"
            return RenderBatches(
                s.images.renderer,
                int(self.cfg.data.batch_size),
                int(self.cfg.seed),
                self.device,
                rank=rank,
                world_size=world,
                num_workers=int(self.cfg.data.num_workers),
                paint_on_device=self.train_on_device,
            )
        nbytes = s.images.nbytes + s.labels.nbytes
        self.train_on_device = use_on_device(str(self.cfg.data.on_device), nbytes, self.device)
        if not self.train_on_device:
            return self._loader(TensorDataset(s.images, s.labels), True, None)
        return DeviceBatches(
            s.images,
            s.labels,
            int(self.cfg.data.batch_size),
            int(self.cfg.seed),
            self.device,
            rank=rank,
            world_size=world,
        )

    def eval_dataloader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """Centre-cropped (model-input window) batches of a split, in order."""
        if split not in self._eval_sets:
            s = self.split(split)
            side = s.images.shape[-1] - 2 * s.margin
            if isinstance(s.images, stream.StreamImages):
                self._eval_sets[split] = s.images.dataset.with_window(side)
            else:
                window = center_crop(s.images, side).contiguous()
                self._eval_sets[split] = TensorDataset(window, s.labels)
        return self._loader(self._eval_sets[split], False, batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> list[DataLoader]:
        return [self.eval_dataloader(s) for s in self.heldout_names]

    # ---------------------------------------------------------------------------- report
    def split_info(self) -> dict[str, dict[str, Any]]:
        """Per split with images: size, distinct instances, source, the factors it changes
        against training, its placement, and the share of positions redrawn to stay in frame."""
        self.setup()
        d = self.cfg.data
        info: dict[str, dict[str, Any]] = {}
        for name in self.split_names:
            s = self._splits[name]
            if not len(s):
                continue
            heldout = name not in ("train", "val")
            info[name] = {
                "n_images": len(s),
                "n_instances": self.instance_counts.get(name, len(s)) if name != "train" else None,
                "source": self.source_name(name),
                "changes": changed_factors(d, name) if heldout else [],
                "placement": describe_placement(self.placement(name)) if d.render else "as-is",
                "redrawn_to_stay_in_frame": (
                    None if s.scene is None else float((s.scene.redrawn > 0).mean())
                ),
                "margin_px": s.margin,
            }
        return info

    def describe(self) -> str:
        """One line per split: size, image shape, source, instances, what changes, placement."""
        self.setup()
        d = self.cfg.data
        lines = []
        for name in self.split_names:
            s = self._splits[name]
            if not len(s):
                continue
            if name == "train":
                role, changes = "train instances", "training distribution"
            else:
                distinct = self.instance_counts.get(name, len(s))
                role = f"{distinct} held-out instances"
                changed = changed_factors(d, name) if name != "val" else []
                changes = "changes " + "+".join(changed) if changed else "training distribution"
            how = describe_placement(self.placement(name)) if d.render else "as-is (resized)"
            redrawn = ""
            if s.scene is not None and s.scene.redrawn.any():
                share = float((s.scene.redrawn > 0).mean())
                redrawn = f"; {100 * share:.0f}% of positions redrawn to stay in frame"
            shape = "x".join(str(v) for v in s.images.shape[1:])
            lines.append(
                f"{name:10s} {len(s):6d} x {shape}, {self.source_name(name)} ({role}), "
                f"{changes}: {how}{redrawn}"
            )
        return "\n".join(lines)


def build_datamodule(cfg: Config) -> InvDataModule:
    """The datamodule for a full config (nothing is loaded or rendered until used)."""
    return InvDataModule(cfg)
