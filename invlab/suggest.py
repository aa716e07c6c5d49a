"""One rule for "did you mean" hints in error messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# difflib ratio a candidate needs to be suggested: 0.6 is difflib's own default; lower cut-offs
# suggest unrelated names for short words ('cnn' -> 'none').
CUTOFF = 0.6


def close_matches(word: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """The ``n`` candidates most similar to ``word`` (difflib ratio >= ``CUTOFF``), best first."""
    return difflib.get_close_matches(str(word), [str(c) for c in candidates], n=n, cutoff=CUTOFF)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest candidate, or ``""`` when none is close."""
    close = close_matches(word, candidates)
    return f" Did you mean '{close[0]}'?" if close else ""
