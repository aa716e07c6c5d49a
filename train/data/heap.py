"""glibc's heap while data is streamed: a fixed mmap threshold.

Streaming allocates and frees a batch-sized buffer per step for the whole run. With glibc's
default (dynamic) mmap threshold those buffers come from the heap, which fragments:
``benchmarks/stream_memory.py`` measured a long CPU evaluation over streamed folders peaking at
912 vs 2,440 MiB for 2,000 vs 20,000 images, and at 862 vs 939 MiB with
``MALLOC_MMAP_THRESHOLD_=131072``. :func:`fix_mmap_threshold` makes that the default in-process.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["ENV", "M_MMAP_THRESHOLD", "MMAP_THRESHOLD", "fix_mmap_threshold"]

MMAP_THRESHOLD = 131072  # bytes: larger allocations get their own mapping, returned on free
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc reads it at start-up; a value set by the user wins


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> str | None:
    """Set glibc's mmap threshold to ``threshold`` bytes in this process (``mallopt``; forked
    DataLoader workers inherit it), unless ``MALLOC_MMAP_THRESHOLD_`` is set. Returns the
    sentence for the run's notes, or None where nothing was done (not glibc, or mallopt
    refused)."""
    if os.environ.get(ENV):
        return f"Memory: glibc's mmap threshold is {os.environ[ENV]} bytes ({ENV} is set)."
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        # Per-batch buffers fragment glibc's heap (peak grows with the data set); mmap frees them.
        done = libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(int(threshold)))
    except (OSError, AttributeError):
        return None
    if done != 1:
        return None
    return (
        f"Memory: glibc's mmap threshold set to {int(threshold)} bytes while streaming (heap "
        f"fragmentation; {ENV} in the environment overrides)."
    )
