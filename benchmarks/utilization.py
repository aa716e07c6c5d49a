"""Claim: a training step reaches a small fraction of the machine's dense throughput on a CPU.

The machine's limit is measured here: fp32 (and bf16) dense matmul and a 3x3 convolution of 128
channels, as FLOP/s (best trial). A training step's FLOPs (forward + backward) are counted with
``torch.utils.flop_counter.FlopCounterMode``; times achieved steps/s gives the FLOP/s a step
reaches, as a fraction of the machine's limit (fp32; the bf16 matmul limit for levers that
autocast to bf16). For the default CNN and timm resnet18
(``pretrained=False``, small-input stem), levers are timed side by side, interleaved, each on a
copy of the same weights: channels-last, bf16 autocast, both, ``torch.compile`` (default CNN),
one thread instead of all (alone and with channels-last + bf16), and a doubled batch. The
limit is the best of one thread and all threads. min / median / max over the trials.

    .venv/bin/python benchmarks/utilization.py [--trials 5] [--batch 128] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from _common import interleaved, machine, seconds, spread, synchronize
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import models
from train.config import load_config


def best_over_threads(measure: Callable[[], float]) -> float:
    """The best of ``measure()`` with one thread and with all (on a shared machine two threads
    can be slower than one)."""
    threads = torch.get_num_threads()
    best = 0.0
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        best = max(best, measure())
    torch.set_num_threads(threads)
    return best


def matmul_flops(n: int, dtype: torch.dtype, device: torch.device, trials: int) -> float:
    """Best FLOP/s of an n x n x n matmul."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    repeat = max(1, int(2e9 / (2 * n**3)))
    return max(2 * n**3 / seconds(lambda: a @ b, device, repeat) for _ in range(trials))


def conv_flops(channels: int, size: int, batch: int, device: torch.device, trials: int) -> float:
    """Best FLOP/s of a 3x3, stride-1 convolution (forward), FLOPs as FlopCounterMode counts."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
    x = torch.randn(batch, channels, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        conv(x)
    flops = counter.get_total_flops()
    with torch.no_grad():
        return max(flops / seconds(lambda: conv(x), device, 3) for _ in range(trials))


def step_flops(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class Variant:
    """One lever: a copy of the network with its own optimizer, input and settings."""

    def __init__(
        self,
        base: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        channels_last: bool = False,
        bf16: bool = False,
        compile_backend: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.net = copy.deepcopy(base)
        self.x, self.y = x, y
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.x = x.contiguous(memory_format=torch.channels_last)
        if compile_backend:
            self.net.compile(backend=compile_backend)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        self.bf16, self.threads = bf16, threads
        self.device = x.device

    def step(self) -> None:
        autocast = torch.autocast(self.device.type, torch.bfloat16) if self.bf16 else nullcontext()
        with autocast:
            loss = F.cross_entropy(self.net(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def rate(self, repeat: int) -> float:
        """Steps per second over ``repeat`` steps."""
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return 1.0 / seconds(self.step, self.device, repeat)
        finally:
            torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--timm-batch", type=int, default=32, help="batch of timm resnet18")
    parser.add_argument("--trial-s", type=float, default=1.5, help="seconds per variant and trial")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile lever")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one trial")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trials = 1 if args.quick else args.trials
    batch, size = (4, 16) if args.quick else (args.batch, args.size)
    if args.quick:  # correctness only: one thread avoids contention on a shared machine
        torch.set_num_threads(1)
    threads = torch.get_num_threads()
    torch.manual_seed(0)

    n = 128 if args.quick else 1024
    channels = 16 if args.quick else 128
    limit = {
        "fp32 matmul": best_over_threads(lambda: matmul_flops(n, torch.float32, device, trials)),
        "bf16 matmul": best_over_threads(lambda: matmul_flops(n, torch.bfloat16, device, trials)),
        "fp32 conv3x3 (128 and 256 channels)": best_over_threads(
            lambda: max(
                conv_flops(channels, size, batch // 2, device, trials),
                conv_flops(2 * channels, size // 2, batch // 2, device, trials),
            )
        ),
    }
    peak = max(limit["fp32 matmul"], limit["fp32 conv3x3 (128 and 256 channels)"])
    peak_bf16 = max(peak, limit["bf16 matmul"])  # the limit for levers that autocast to bf16
    print(machine())
    print(
        f"claim: a training step reaches a small fraction of the machine's fp32 limit; "
        f"{trials} interleaved trial(s), inputs of 3 x {size} x {size}, min / median / max"
    )
    print("machine's limit (best of trials, 1 or all threads): " + ", ".join(
        f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in limit.items()
    ))  # fmt: skip

    widths = "[8,16]" if args.quick else "[32,64,128]"
    nets = {  # name: (model config, batch)
        "default cnn": (load_config(overrides=[f"model.widths={widths}"]).model, batch),
        "timm resnet18": (
            {"name": "timm:resnet18", "small_input": True},
            batch if args.quick else args.timm_batch,
        ),
    }
    best: dict[str, tuple[str, float, float]] = {}
    for name, (cfg, batch) in nets.items():
        base = models.build(cfg, num_classes=10).to(device).train()
        x = torch.rand(batch, 3, size, size, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        x2, y2 = torch.cat([x, x]), torch.cat([y, y])
        flops = step_flops(base, x, y)
        variants: dict[str, Variant] = {
            "fp32 (baseline)": Variant(base, x, y),
            "channels_last": Variant(base, x, y, channels_last=True),
            "bf16 autocast": Variant(base, x, y, bf16=True),
            "channels_last + bf16": Variant(base, x, y, channels_last=True, bf16=True),
            f"batch {2 * batch}": Variant(base, x2, y2),
        }
        if threads > 1:
            variants["1 thread"] = Variant(base, x, y, threads=1)
            variants["1 thread + cl + bf16"] = Variant(
                base, x, y, channels_last=True, bf16=True, threads=1
            )
        if not args.no_compile and name == "default cnn":
            backend = "aot_eager" if args.quick else "inductor"
            variants[f"compile ({backend})"] = Variant(base, x, y, compile_backend=backend)
        start = time.perf_counter()
        for v in variants.values():  # warm-up (and compilation)
            v.step()
            v.step()
        warm = time.perf_counter() - start
        per_step = 1.0 / variants["fp32 (baseline)"].rate(2)
        repeat = 2 if args.quick else max(2, round(args.trial_s / per_step))

        def runner(v: Variant, repeat: int = repeat) -> Callable[[], float]:
            return lambda: v.rate(repeat)

        rates = interleaved({k: runner(v) for k, v in variants.items()}, trials)
        print(
            f"\n{name}, batch {batch}: {flops / batch / 1e6:.1f} MFLOP per image per step "
            f"(forward + backward), "
            f"{repeat} steps per trial, warm-up and compilation {warm:.0f} s"
        )
        print(f"{'lever':<24}{'img/s (min / median / max)':>28}{'GFLOP/s':>9}{'of limit':>10}"
              f"{'x baseline':>11}")  # fmt: skip
        base_rate = statistics.median(rates["fp32 (baseline)"])
        for lever, r in rates.items():
            imgs = len(variants[lever].y)
            achieved = statistics.median(r) * flops * imgs / batch
            gain = statistics.median(r) * imgs / (base_rate * batch)
            limit_of = peak_bf16 if variants[lever].bf16 else peak
            print(
                f"{lever:<24}{spread([v * imgs for v in r]):>28}{achieved / 1e9:>9.1f}"
                f"{achieved / limit_of:>9.1%}{gain:>10.2f}x"
            )
            if lever != "fp32 (baseline)" and gain > best.get(name, ("", 0.0, 0.0))[1]:
                best[name] = (lever, gain, achieved / limit_of)
    for name, (lever, gain, frac) in best.items():
        print(f"largest lever, {name}: {lever} ({gain:.2f}x baseline, {frac:.1%} of the limit)")
    synchronize(device)


if __name__ == "__main__":
    main()
