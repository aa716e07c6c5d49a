"""Throughput of ``eval.evaluate`` against a plain forward pass and a naive per-image loop.

Claim: the batched evaluation (views built on the device in one gather per chunk, every view of
a chunk in one forward pass, bootstrap CIs included) runs at >= 0.85 of the ceiling, a plain
forward pass over the same number of pre-built views in batches of ``eval.batch_size``. A
per-image Python loop over shifts (one view per forward pass) is shown for reference: on a CPU
thread a batch-1 forward of a small CNN is already efficient, so it stays close there; on an
accelerator the loop is launch-bound. All three run side by side in one process on the same
model and images, trials interleaved; the median is reported.

    .venv/bin/python benchmarks/eval_throughput.py [--images 256] [--trials 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from _common import spread
from torch import nn

from eval import evaluate
from eval.views import center_crop, scale_views, trajectory, translate_views
from invlab.config import eval_splits
from train.config import load_config


def build_model(num_classes: int = 10) -> tuple[nn.Module, str]:
    try:
        import models

        return models.build(load_config().model, num_classes=num_classes), "models.build (cnn)"
    except Exception:  # the model registry is optional for this measurement
        net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, num_classes),
        )
        return net, "stand-in CNN"


def timed(fns: dict[str, Callable[[], object]], trials: int) -> dict[str, list[float]]:
    """Seconds per function and trial; trials are interleaved so machine drift hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(trials):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--loop-images", type=int, default=8, help="images for the naive loop")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="eval.batch_size (views)")
    parser.add_argument("--quick", action="store_true", help="a few images, one trial")
    args = parser.parse_args()
    if args.quick:
        args.images, args.loop_images, args.trials = 4, 1, 1
    torch.set_num_threads(args.threads)

    overrides = [f"eval.n_images={args.images}"]
    if args.batch_size:
        overrides.append(f"eval.batch_size={args.batch_size}")
    cfg = load_config(overrides=overrides)
    size, margin = cfg.data.image_size, cfg.data.eval_margin_px
    ev = cfg.eval
    splits = eval_splits(cfg)
    model, model_name = build_model()
    model.eval()
    gen = torch.Generator().manual_seed(0)
    shape = (args.images, 3, size + 2 * margin, size + 2 * margin)
    images = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    data = {s: (images, labels) for s in splits}

    offsets = trajectory(ev.trajectory, ev.max_shift_px)
    views_per_image = 1 + len(offsets) + 2 + len(ev.scales)
    n_views = len(splits) * args.images * views_per_image

    def run_evaluate() -> None:
        evaluate(model, data, ev, image_size=size, progress=False)

    # ceiling: the same number of views, built beforehand, through the model in batches
    prebuilt = torch.rand(n_views, 3, size, size)

    def run_forward() -> None:
        with torch.inference_mode():
            for batch in prebuilt.split(ev.batch_size):
                model(batch)

    loop_images = images[: args.loop_images]
    loop_views = len(splits) * args.loop_images * views_per_image

    def run_loop() -> None:
        kw = dict(protocol=ev.protocol, size=size, max_shift=ev.max_shift_px)
        with torch.inference_mode():
            for _split in splits:
                for img in loop_images:
                    x = img[None]
                    model(center_crop(x, size).float() / 255)
                    for off in [*offsets, *offsets[:2]]:
                        model(translate_views(x, off[None], **kw)[:, 0])
                    for s in ev.scales:
                        model(scale_views(x, [s], size=size, embed_size=ev.embed_size)[:, 0])

    fns = {"forward": run_forward, "evaluate": run_evaluate, "loop": run_loop}
    trials = timed(fns, args.trials)
    counts = {"forward": n_views, "evaluate": n_views, "loop": loop_views}
    names = {
        "forward": "plain forward (ceiling)",
        "evaluate": "eval.evaluate",
        "loop": "per-image loop over shifts",
    }
    per_trial = {names[k]: [counts[k] / s for s in v] for k, v in trials.items()}
    rates = {k: statistics.median(v) for k, v in per_trial.items()}
    ceiling = rates["plain forward (ceiling)"]

    print(
        f"machine: {platform.platform()} | {platform.processor() or 'cpu'} | "
        f"{os.cpu_count()} cores | torch {torch.__version__} | threads {args.threads}"
    )
    print(
        f"model: {model_name}; {size}px inputs; {views_per_image} views/image "
        f"(centre + {len(offsets)} {ev.trajectory} {ev.protocol} + 2 pair + {len(ev.scales)} "
        f"scales); {args.images} images x {len(splits)} splits; batch {ev.batch_size}; "
        f"median of {args.trials} trials"
    )
    print("claim: eval.evaluate runs at >= 0.85 of a plain forward pass over the same views")
    print(f"{'method':<28} {'views/s (min / median / max)':>30} {'vs ceiling':>11}")
    for name, rate in rates.items():
        print(f"{name:<28} {spread(per_trial[name]):>30} {rate / ceiling:>10.2f}x")
    verdict = "meets" if rates["eval.evaluate"] / ceiling >= 0.85 else "misses"
    print(f"eval.evaluate {verdict} the 0.85 x ceiling target.")


if __name__ == "__main__":
    main()
