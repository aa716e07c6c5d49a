"""Claim: every augmentation preset costs a small fraction of one training step.

For each preset, the time to augment one batch (256 x 3 x 32 x 32, float in [0, 1]) is divided by
the time of one training step (forward + backward + SGD step) of the default model on the same
batch. Steps and augmentations are timed interleaved in the same run (one step, then every
preset, per trial), so machine load affects both alike; medians over the trials are reported.
Target: ``heavy`` at most 25% of a step on a 2-core CPU.

Run: ``.venv/bin/python benchmarks/augment_overhead.py [--trials 7] [--batch 256] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from _common import spread
from torch import nn

import augment
from train.config import load_config

PRESETS = augment.list_presets()


def stand_in_cnn(num_classes: int = 10) -> nn.Module:
    """Fallback when ``models.build`` is unavailable: 3 stages 32/64/128, BN, ReLU,
    strided-conv downsampling, global average pooling + Linear (the default model's shape)."""
    layers: list[nn.Module] = []
    c_in = 3
    for i, c in enumerate((32, 64, 128)):
        stride = 1 if i == 0 else 2
        layers += [nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        layers += [nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
    )


def default_model() -> tuple[nn.Module, str]:
    try:
        import models

        return models.build(load_config().model, num_classes=10), "models.build(default config)"
    except (ImportError, AttributeError):
        return stand_in_cnn(), "stand-in CNN (models.build not importable)"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 by default: on a shared, loaded CPU two threads spend most of "
        "the time of small ops in synchronisation)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny batch, one trial")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.batch, args.size = 1, 8, 16
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model, model_name = default_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    augmenters = {}
    for name in PRESETS:
        aug = augment.build(load_config(overrides=[f"augment.presets=[{name}]"]).augment)
        aug.reseed(0)
        augmenters[name] = aug
        aug(x)  # warm-up (builds size-dependent ops)
    step()

    step_times: list[float] = []
    aug_times: dict[str, list[float]] = {name: [] for name in PRESETS}
    for _ in range(args.trials):
        step_times.append(timed(step))
        with torch.no_grad():
            for name, aug in augmenters.items():
                aug_times[name].append(timed(lambda aug=aug: aug(x)))

    step_ms = 1e3 * statistics.median(step_times)
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"model: {model_name}; batch {args.batch} x 3 x {args.size} x {args.size}; "
        f"{args.trials} interleaved trials, medians (min / median / max of augment ms)"
    )
    print("claim: every augmentation preset costs a small fraction of one training step")
    print(f"training step (forward + backward + SGD): {step_ms:.1f} ms\n")
    print(f"{'preset':<20}{'augment ms (min / med / max)':>30}{'% of step':>11}")
    for name, times in aug_times.items():
        ms = 1e3 * statistics.median(times)
        trials = spread([1e3 * t for t in times], "{:.2f}")
        print(f"{name:<20}{trials:>30}{100 * ms / step_ms:>10.1f}%")
    print(
        "\nOn a GPU the step shrinks far more than the augmentation's Python/kernel-launch "
        "overhead: kornia ops and the per-sample RandAugment/TrivialAugment grouping (up to "
        "num_ops x 15 small launches, one host sync each) become the larger share, while the "
        "batched integer shift stays a single gather."
    )


if __name__ == "__main__":
    main()
