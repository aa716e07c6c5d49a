"""SIGTERM and SIGINT end a run with a meaningful exit code (143 / 130), never 0.

Lightning turns SIGTERM into ``SIGTERMException`` (a ``SystemExit`` with code 0) at the next step
boundary, and Ctrl-C into ``sys.exit(1)``: a killed run would look finished, or like any failure.
``record_signals`` notes which signal arrived; ``fit`` then raises :class:`Interrupted` with the
signal's conventional exit code. Inside ``trainer.fit`` Lightning's own handler runs first (it
composes with ours), so the step in flight finishes and SLURM's requeue handling is unchanged;
outside it, SIGTERM stops at once, like Python's default.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Interrupted(SystemExit):
    """A run stopped by a signal; ``code`` is 128 + the signal number (SIGINT 130, SIGTERM 143)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message


@contextlib.contextmanager
def record_signals() -> Iterator[list[int]]:
    """Yield a list that receives each SIGTERM/SIGINT number as it arrives (main thread only;
    elsewhere nothing is installed and the list stays empty)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if signal.getsignal(signum) is not on_signal:
            return  # composed into Lightning's handler: it stops at the next step boundary
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum, "stopped by SIGTERM")

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, on_signal)
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
