"""Cost of antialiasing: forward+backward time and parameters, baseline vs BlurPool vs APS.

Claim: antialiasing adds no parameters; its time cost comes from running each strided layer at
stride 1 (4x the work of that layer at stride 2) plus the depthwise blur, so it is small for a
network whose cost is dominated by stride-1 layers and larger where strided layers dominate.

Every variant of a model shares the baseline's weights; variants are timed interleaved (in turn,
within each trial, as many steps as the baseline needs for ``--min-trial-s`` seconds) so machine
load affects them alike. Reported: median time per step over the trials and its ratio to the
baseline.

    python benchmarks/antialias_cost.py [--trials 5] [--batch 128] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from _common import spread

import models

VARIANTS = {
    "baseline": None,
    "blur k3": ("blur", 3),
    "blur k5": ("blur", 5),
    "aps": ("aps", 1),
    "aps + blur k3": ("aps", 3),
}
MODELS = {
    "cnn": {"name": "cnn"},
    "timm:resnet18 (small_input)": {"name": "timm:resnet18", "small_input": True},
}


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeat: int = 1) -> float:
    """Seconds per training step (forward + backward), averaged over ``repeat`` steps."""
    start = time.perf_counter()
    for _ in range(repeat):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-trial-s", type=float, default=2.0, help="steps per trial >= this")
    parser.add_argument("--quick", action="store_true", help="tiny batch, one trial of one step")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.batch, args.size, args.min_trial_s = 1, 4, 16, 0.0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"machine: {platform.machine()} {platform.processor() or platform.platform()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s); "
        f"batch {args.batch} x 3 x {args.size} x {args.size}, {args.trials} trials, "
        "forward+backward of a training step"
    )
    print(
        "claim: antialiasing adds no parameters and a time cost that depends on the share of "
        "strided layers; ms/step min / median / max over interleaved trials"
    )
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    header = (
        f"{'model':<30}{'variant':<16}{'params':>10}{'ms/step (min / med / max)':>28}"
        f"{'x baseline':>12}"
    )
    print(header)
    print("-" * len(header))
    for model_name, cfg in MODELS.items():
        base = models.build(cfg, num_classes=10).train()
        nets = {}
        for variant, spec in VARIANTS.items():
            net = copy.deepcopy(base)
            if spec is not None:
                models.antialias(net, method=spec[0], filt_size=spec[1])
            nets[variant] = net
        times: dict[str, list[float]] = {v: [] for v in nets}
        warm = [step(net, x, y) for net in nets.values()]
        repeat = max(1, round(args.min_trial_s / warm[0]))  # steps per timed trial
        for _ in range(args.trials):
            for variant, net in nets.items():
                times[variant].append(step(net, x, y, repeat))
        base_ms = statistics.median(times["baseline"]) * 1e3
        base_params = sum(p.numel() for p in base.parameters())
        for variant, net in nets.items():
            ms = statistics.median(times[variant]) * 1e3
            params = sum(p.numel() for p in net.parameters())
            assert params == base_params
            print(
                f"{model_name:<30}{variant:<16}{params / 1e6:>9.3f}M"
                f"{spread([t * 1e3 for t in times[variant]], '{:.1f}'):>28}"
                f"{ms / base_ms:>11.2f}x"
            )


if __name__ == "__main__":
    main()
