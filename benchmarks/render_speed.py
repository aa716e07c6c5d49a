"""Claim: rendering 10,000 training images of 32 px takes under 10 s on 2 CPU cores.

Renders N images with ``train.data.render.render_split`` for each object source (procedural
shapes, sklearn digits, and in-memory stand-ins with the layouts of MNIST strokes and CIFAR
rectangles, so nothing is downloaded) and each background, and prints images/s, the time for
10,000 images and the ratio to the fastest configuration. The median of ``--trials`` runs is
reported; object loading is part of the timing (shapes are rasterised while rendering). Each
configuration runs with 1 intra-op thread (the library's setting while rendering) and with all
cores, side by side.

    .venv/bin/python benchmarks/render_speed.py [--n 10000] [--trials 2] [--size 32] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from _common import spread

from invlab.config import PlacementConfig
from train.config import load_config
from train.data import ArrayPool, build_datamodule, build_source
from train.data.colorize import stroke_objects
from train.data.render import render_split


def stand_in_pools(seed: int) -> dict[str, ArrayPool]:
    """Random arrays with the shapes of MNIST (28 px strokes) and CIFAR (32 px RGB) pools."""
    gen = torch.Generator().manual_seed(seed)
    strokes = torch.randint(0, 256, (5000, 28, 28), generator=gen, dtype=torch.uint8)
    images, masks = stroke_objects(strokes, seed)
    labels = torch.randint(0, 10, (5000,), generator=gen)
    rgb = torch.randint(0, 256, (5000, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return {
        "mnist-like": ArrayPool(images, labels, masks),
        "cifar-like": ArrayPool(rgb, labels),
    }


def time_render(pool: ArrayPool, placement: PlacementConfig, args, object_px: float) -> list[float]:
    times = []
    for _ in range(args.trials):
        start = time.perf_counter()
        render_split(
            pool,
            args.n,
            split="train",
            seed=0,
            placement=placement,
            canvas=args.size,
            object_px=object_px,
        )
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a few images, one trial")
    args = parser.parse_args()
    if args.quick:
        args.n, args.trials = 64, 1
    threads = (1, os.cpu_count() or 1)

    cfg = load_config(overrides=[f"data.image_size={args.size}"])
    object_px = cfg.data.object_size * args.size
    pools = {name: build_source(name, cfg.data, 0).train for name in ("shapes", "digits")}
    pools.update(stand_in_pools(0))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}; {args.n} images of "
        f"{args.size} px, median of {args.trials} trials, torch intra-op threads {threads[0]} "
        f"vs {threads[1]}"
    )
    print(
        "claim: rendering 10,000 training images of 32 px takes under 10 s on 2 CPU cores; "
        "s/10k at 1 thread min / median / max over trials"
    )
    rows = []
    for name, pool in pools.items():
        for background in ("flat", "noise", "texture"):
            placement = PlacementConfig(background=background)
            per_threads = []
            for t in threads:
                torch.set_num_threads(t)
                per_threads.append(time_render(pool, placement, args, object_px))
            rows.append((name, background, *per_threads))
    best = min(statistics.median(r[2]) for r in rows)
    print(
        f"{'source':11s} {'background':10s} {'img/s @1':>9s} {'s/10k @1':>9s} "
        f"{f'img/s @{threads[1]}':>9s} {f't@{threads[1]}/t@1':>9s} {'x fastest':>9s}  "
        f"s/10k @1 (min / median / max)"
    )
    for name, background, times1, timesn in rows:
        t1, tn = statistics.median(times1), statistics.median(timesn)
        print(
            f"{name:11s} {background:10s} {args.n / t1:9.0f} {1e4 * t1 / args.n:9.2f} "
            f"{args.n / tn:9.0f} {tn / t1:9.2f} {t1 / best:9.2f}  "
            f"{spread([1e4 * t / args.n for t in times1], '{:.2f}')}"
        )
    torch.set_num_threads(threads[1])
    start = time.perf_counter()
    if args.quick:  # a small datamodule
        heldout = ("typical", "position", "scale", "background", "atypical")
        cfg = load_config(
            Path(__file__).resolve().parent.parent / "configs" / "default.yaml",
            overrides=[
                "data.n_train=32",
                "data.n_val=8",
                *(f"data.heldout.{s}.n=8" for s in heldout),
            ],
        )
    dm = build_datamodule(cfg)
    dm.setup()
    n_all = sum(len(dm.split(s)) for s in dm.split_names)
    print(
        f"{'quick' if args.quick else 'default'} datamodule setup (shapes, {n_all} images "
        f"incl. held-out at "
        f"{args.size + 2 * cfg.data.eval_margin_px} px): {time.perf_counter() - start:.2f} s"
    )


if __name__ == "__main__":
    main()
