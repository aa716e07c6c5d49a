"""``shards``: WebDataset-layout tar shards at ``data.root``, read like the ``folder`` source.

WebDataset's tar layout is read here with the standard library (``tarfile``: no dependency
beyond the fixed stack) and is also read by ``tar`` itself, the ``webdataset`` package and
litdata's converters; an index of member offsets built once makes each image a seek + read, so
shards take the same index-based (and ``data.stream``) path as folders, with the same pixels.

Layout: ``root/train/*.tar`` (+ optional ``root/val/*.tar`` held out), or ``root/*.tar`` split
per class like the folder source (a fixed fifth held out). In a shard, the members of one sample
share a key: ``<key>.jpg`` (or .jpeg, .png, .webp, ...) and ``<key>.cls``, the integer class as
text (as ``webdataset.ShardWriter`` writes them; other members, e.g. ``<key>.json``, are
ignored). Class names: ``root/classes.txt``, one per line (line index = class id), else
``class_<id>``. Samples are ordered by (class, key), whatever the number of shards.

Write shards from an ImageFolder tree: ``python -m train.data.shards write SRC OUT
[--per-shard N]`` (:func:`write_shards`).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

from invlab.config import ConfigError, DataConfig
from train.data.folder import FolderPool, _held_out_split, decode_image, decode_side
from train.data.registry import Source, register_source

__all__ = ["IMAGE_EXTENSIONS", "ShardPool", "index_shard", "load_shards", "write_shards"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff")
CLASSES_FILE = "classes.txt"
WRITE_HINT = "python -m train.data.shards write <ImageFolder tree> <out dir>"

# A sample's image inside a shard: (shard path, member name, data offset, data size).
Locator = tuple[str, str, int, int]


class ShardPool(FolderPool):
    """A :class:`FolderPool` whose images are tar members: each read by a seek and a read at
    the offset found when the shard was indexed (picklable, so DataLoader workers stream it)."""

    def decode(self, i: int, side: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Instance ``i`` fitted to ``side``: its member's bytes through :func:`decode_image`."""
        shard, member, offset, size = self.paths[i]  # type: ignore[misc]
        name = f"{shard}:{member}"
        try:
            with open(shard, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as err:
            raise ConfigError(
                f"Cannot read {name} ({err}); the shard moved or is unreadable since it was "
                f"indexed: restore it, or rerun."
            ) from None
        if len(data) != size:
            raise ConfigError(
                f"The shard {shard} is shorter than when it was indexed ({member} is cut off); "
                f"restore it, or rewrite the shards ({WRITE_HINT})."
            )
        return decode_image(data, side, name=name)


def _split_name(member: str) -> tuple[str, str]:
    """WebDataset's (key, extension): the extension starts at the first dot of the base name."""
    folder, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def index_shard(path: Path) -> list[tuple[str, Locator, int]]:
    """The samples of one shard, scanning its headers once: (key, locator, class id) each.

    Raises ``ConfigError`` naming the shard for a corrupt or truncated tar, an image without a
    ``.cls`` member or the reverse, two images under one key, and a ``.cls`` that is not a
    non-negative integer."""
    fix = f"rewrite it ({WRITE_HINT}) or remove it from the folder"
    try:
        end = path.stat().st_size
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in members:
                if not m.isfile():
                    continue
                if m.offset_data + m.size > end:
                    raise ConfigError(
                        f"The shard {path} is truncated ({m.name} is cut off); {fix}."
                    )
                key, ext = _split_name(m.name)
                groups.setdefault(key, {})[ext] = m
            samples = []
            for key, parts in groups.items():
                images = [e for e in parts if e in IMAGE_EXTENSIONS]
                if "cls" not in parts and not images:
                    continue  # some other member (metadata), not a sample
                if not images or "cls" not in parts:
                    has, lacks = ("an image", ".cls") if images else (".cls", "image")
                    raise ConfigError(
                        f"The shard {path} has {has} for key {key!r} but no {lacks} member "
                        f"(each sample needs <key>.jpg|png|... and <key>.cls); {fix}."
                    )
                if len(images) > 1:
                    raise ConfigError(
                        f"The shard {path} has {len(images)} images for key {key!r} "
                        f"({', '.join(images)}); keep one per key, or {fix}."
                    )
                raw = tar.extractfile(parts["cls"]).read()  # type: ignore[union-attr]
                text = raw.decode("utf-8", "replace").strip()
                if not text.isdigit() or not text.isascii():
                    raise ConfigError(
                        f"The shard {path} has the class {text[:40]!r} in "
                        f"{parts['cls'].name}, not a non-negative integer; a .cls member holds "
                        f"the class id as text (e.g. '3'); {fix}."
                    )
                m = parts[images[0]]
                samples.append(
                    (key, (str(path), m.name, int(m.offset_data), int(m.size)), int(text))
                )
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ConfigError(
            f"Cannot read the shard {path} as a tar file ({type(err).__name__}: {err}); it is "
            f"damaged or not a tar: {fix}."
        ) from None
    return samples


def _read_dir(folder: Path, what: str) -> list[tuple[Locator, int]]:
    shards = sorted(p for p in folder.glob("*.tar") if p.is_file()) if folder.is_dir() else []
    if not shards:
        raise ConfigError(
            f"No .tar shards in {folder} ({what}). Expected WebDataset shards: root/train/*.tar "
            f"(and optionally root/val/*.tar), or root/*.tar; set data.root to that folder, or "
            f"write shards from an image folder with: {WRITE_HINT}."
        )
    indexed = [s for shard in shards for s in index_shard(shard)]
    if not indexed:
        raise ConfigError(
            f"The shards in {folder} hold no samples (<key>.jpg|png|... with <key>.cls); "
            f"rewrite them with: {WRITE_HINT}."
        )
    indexed.sort(key=lambda s: (s[2], s[0]))
    return [(loc, label) for _, loc, label in indexed]


def _class_names(root: Path, samples: list[tuple[Locator, int]]) -> list[str]:
    top = max(label for _, label in samples)
    file = root / CLASSES_FILE
    if not file.is_file():
        return [f"class_{k}" for k in range(top + 1)]
    names = file.read_text(encoding="utf-8").splitlines()
    while names and not names[-1].strip():
        names.pop()
    names = [n.strip() for n in names]
    if top >= len(names):
        raise ConfigError(
            f"{file} names {len(names)} classes but the shards hold class id {top}; add the "
            f"missing names (one per line, line index = class id) or remove the file."
        )
    return names


@register_source("shards")
def load_shards(cfg: DataConfig, seed: int) -> Source:
    """The ``shards`` source: train and held-out pools of the tar shards at ``data.root``."""
    root = Path(cfg.root)
    split = (root / "train").is_dir()
    train_dir = root / "train" if split else root
    train = _read_dir(train_dir, f"data.root={cfg.root!r}")
    if split and (root / "val").is_dir():
        held = _read_dir(root / "val", "the held-out split, root/val")
    else:
        train, held = _held_out_split(train)
    classes = _class_names(root, train + held)
    if not train or not held:
        raise ConfigError(
            f"The shards at data.root={cfg.root!r} need training and held-out samples (found "
            f"{len(train)} and {len(held)}): add samples, or a root/val/*.tar held-out split."
        )
    size = decode_side(cfg)
    return Source("shards", classes, ShardPool(train, size), ShardPool(held, size))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    tar.addfile(info, io.BytesIO(data))


def write_shards(src: str | Path, out: str | Path, per_shard: int = 1000) -> list[Path]:
    """Write the ImageFolder tree ``src`` as WebDataset shards under ``out``: ``train/`` and
    ``val/`` when ``src`` has them (else ``out/*.tar``), ``per_shard`` samples per shard, and
    ``out/classes.txt``; keys number the images in the folder source's order, so the ``shards``
    source at ``out`` gives the very samples the ``folder`` source at ``src`` gives.

    Returns the shards written. Refuses (``ConfigError``) to overwrite shards in ``out``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    src, out = Path(src), Path(out)
    if int(per_shard) < 1:
        raise ConfigError(f"--per-shard must be at least 1 (got {per_shard}).")
    split = (src / "train").is_dir()
    parts = [("train", src / "train")] if split else [("", src)]
    if split and (src / "val").is_dir():
        parts.append(("val", src / "val"))
    try:
        classes, class_to_idx = find_classes(str(parts[0][1]))
        plans = [(name, make_dataset(str(d), class_to_idx, IMG_EXTENSIONS)) for name, d in parts]
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(
            f"No image folder at {src} ({err}). Expected {src}/train/<class>/*.png|jpg (and "
            f"optionally {src}/val/<class>/...), or {src}/<class>/*.png|jpg."
        ) from None
    existing = [p for name, _ in plans for p in sorted((out / name).glob("*.tar"))]
    if existing or (out / CLASSES_FILE).exists():
        found = existing[0] if existing else out / CLASSES_FILE
        raise ConfigError(
            f"{out} already holds shards ({found}); refusing to overwrite them. Remove them "
            f"first, or write to another folder."
        )
    written: list[Path] = []
    for name, samples in plans:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        stem = name or "shard"
        for n, start in enumerate(range(0, len(samples), int(per_shard))):
            path = folder / f"{stem}-{n:06d}.tar"
            partial = path.with_name(path.name + ".partial")
            with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i, (file, label) in enumerate(samples[start : start + int(per_shard)]):
                    key = f"{start + i:08d}"
                    ext = Path(file).suffix.lower().lstrip(".")
                    _add(tar, f"{key}.{ext}", Path(file).read_bytes())
                    _add(tar, f"{key}.cls", str(label).encode())
            os.replace(partial, path)
            written.append(path)
    (out / CLASSES_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m train.data.shards write SRC OUT [--per-shard N]``; 2 on a ``ConfigError``."""
    parser = argparse.ArgumentParser(
        prog="python -m train.data.shards",
        description="WebDataset tar shards for data.source=shards.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write WebDataset shards from an ImageFolder tree")
    w.add_argument("src", help="ImageFolder tree: SRC/train/<class>/*, or SRC/<class>/*")
    w.add_argument("out", help="folder for the shards (data.root of data.source=shards)")
    w.add_argument("--per-shard", type=int, default=1000, help="samples per shard (1000)")
    args = parser.parse_args(argv)
    try:
        shards = write_shards(args.src, args.out, args.per_shard)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {len(shards)} shard(s) to {args.out}: data.source=shards data.root={args.out}")
    return 0
