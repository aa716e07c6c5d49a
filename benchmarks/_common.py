"""What every benchmark prints: the machine, min/median/max over trials, side-by-side timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine(threads: int | None = None) -> str:
    """One line naming the machine, torch and its thread count."""
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {platform.system()} {cpu}, {os.cpu_count()} CPUs{gpu}, load {load:.1f}; "
        f"torch {torch.__version__}, {threads or torch.get_num_threads()} thread(s)"
    )


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """``min / median / max`` of trial values."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (a no-op on CPU) before reading a clock."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def interleaved(fns: dict[str, Callable[[], float]], trials: int) -> dict[str, list[float]]:
    """Each ``fn`` returns a rate; trials run every fn in turn, so load drift hits all alike."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(trials):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def seconds(fn: Callable[[], object], device: torch.device, repeat: int = 1) -> float:
    """Wall seconds per call of ``fn`` over ``repeat`` calls (device synchronised)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeat
