"""Contrasts between two groups of seeds: the difference, its interval, a verdict, and power.

A study's replicate is the seed. Two groups that hold the same seeds are compared **paired**:
the difference per seed (B - A), then a Student-t interval over the seeds. Otherwise the
groups are compared with **Welch's** interval (unequal variances, Welch-Satterthwaite degrees of
freedom). Every contrast gets a two-sided t p-value; over the contrasts of one report the
p-values are adjusted with Holm's step-down procedure. Verdict words:

- ``higher``: the interval lies entirely above 0 (B > A);
- ``lower``: the interval lies entirely below 0 (B < A);
- ``not resolved``: the interval contains 0 (touching 0 counts as containing it).

The raw verdict reads the unadjusted interval; the adjusted verdict is ``higher``/``lower``
(by the sign of the mean difference) where the Holm-adjusted p-value is below ``alpha``.

Power at the observed spread: the *minimal resolvable difference* is the smallest
``|mean difference|`` whose interval would exclude 0 with these seeds and this spread, i.e.
the interval's half-width; ``seeds_needed`` is the smallest number of seeds for which a given
difference would be resolved at that spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

HIGHER = "higher"
LOWER = "lower"
NOT_RESOLVED = "not resolved"
PAIRED = "paired"
WELCH = "welch"
MAX_SEEDS = 1000  # seeds_needed gives up (returns None) beyond this many


@lru_cache(maxsize=4096)  # a report asks for the same few df many times
def t_quantile(df: float, level: float = 0.95) -> float:
    """The two-sided Student-t quantile ``t_{(1 + level) / 2, df}`` (4.303 for df 2, 95%)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def t_p_value(stat: float, df: float) -> float:
    """Two-sided p-value of a t statistic with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(2 * t.sf(abs(stat), df))


def _mean(xs: Sequence[float]) -> float:
    """The mean; exactly the value when all values are equal (no rounding in the sum)."""
    if all(x == xs[0] for x in xs):
        return xs[0]
    return math.fsum(xs) / len(xs)


def _var(xs: Sequence[float]) -> float:
    """Sample variance (n - 1 in the denominator); exactly 0 when all values are equal."""
    m = _mean(xs)
    return math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)


@dataclass(frozen=True)
class Contrast:
    """B - A with its interval. ``sd`` is the spread the interval was computed from: the SD of
    the per-seed differences (paired) or ``sqrt(sd_a^2 + sd_b^2)`` (Welch). ``half`` is the
    interval's half-width, which is also the minimal resolvable difference. Undefined values
    (fewer than two seeds) are NaN."""

    method: str  # PAIRED or WELCH
    diff: float
    lo: float
    hi: float
    n_a: int
    n_b: int
    df: float
    se: float
    sd: float
    p: float
    sd_a: float = math.nan  # each group's own SD across seeds
    sd_b: float = math.nan
    level: float = 0.95

    @property
    def half(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def verdict(self) -> str:
        return verdict(self.lo, self.hi)


def _sd(xs: Sequence[float]) -> float:
    return math.sqrt(_var(xs)) if len(xs) > 1 else math.nan


def _interval(
    method: str,
    diff: float,
    se: float,
    df: float,
    sd: float,
    a: Sequence[float],
    b: Sequence[float],
    level: float,
) -> Contrast:
    """The interval and p-value from a difference, its standard error and degrees of freedom.
    No spread and no difference: nothing to test (p NaN); no spread and a difference: p 0."""
    if se == 0:
        half, p = 0.0, math.nan if diff == 0 else 0.0
    else:
        half, p = t_quantile(df, level) * se, t_p_value(diff / se, df)
    lo, hi = diff - half, diff + half
    return Contrast(method, diff, lo, hi, len(a), len(b), df, se, sd, p, _sd(a), _sd(b), level)


def _undefined(
    method: str, diff: float, a: Sequence[float], b: Sequence[float], level: float
) -> Contrast:
    nan = math.nan
    return Contrast(
        method, diff, nan, nan, len(a), len(b), nan, nan, nan, nan, _sd(a), _sd(b), level
    )


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Contrast:
    """Paired contrast of ``b - a`` (``a[i]`` and ``b[i]`` from the same seed): the mean of the
    per-seed differences with a Student-t interval on ``n - 1`` degrees of freedom."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one per seed in each group: {len(a)} vs {len(b)}")
    a, b = [float(x) for x in a], [float(x) for x in b]
    d = [y - x for x, y in zip(a, b, strict=True)]
    n = len(d)
    if n < 2:
        return _undefined(PAIRED, d[0] if d else math.nan, a, b, level)
    sd = math.sqrt(_var(d))
    return _interval(PAIRED, _mean(d), sd / math.sqrt(n), n - 1, sd, a, b, level)


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom; ``n_a + n_b - 2`` when both variances are 0."""
    qa, qb = var_a / n_a, var_b / n_b
    if qa + qb == 0:
        return float(n_a + n_b - 2)
    return (qa + qb) ** 2 / (qa**2 / (n_a - 1) + qb**2 / (n_b - 1))


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Contrast:
    """Welch's contrast of ``mean(b) - mean(a)`` for independent groups with unequal variances:
    standard error ``sqrt(var_a / n_a + var_b / n_b)`` and Welch-Satterthwaite df."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    na, nb = len(a), len(b)
    diff = _mean(b) - _mean(a) if na and nb else math.nan
    if na < 2 or nb < 2:
        return _undefined(WELCH, diff, a, b, level)
    va, vb = _var(a), _var(b)
    se = math.sqrt(va / na + vb / nb)
    return _interval(WELCH, diff, se, welch_df(va, na, vb, nb), math.sqrt(va + vb), a, b, level)


def contrast(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> Contrast:
    """``b - a`` for two groups' per-seed values (seed -> value): paired when both hold the
    same seeds, Welch otherwise."""
    if set(a) == set(b):
        seeds = sorted(a)
        return paired_difference([a[s] for s in seeds], [b[s] for s in seeds], level)
    return welch_difference(list(a.values()), list(b.values()), level)


def verdict(lo: float, hi: float) -> str:
    """``higher`` when the interval lies entirely above 0, ``lower`` entirely below, else
    ``not resolved`` (an interval that touches 0, or an undefined one)."""
    if lo > 0:
        return HIGHER
    if hi < 0:
        return LOWER
    return NOT_RESOLVED


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order. With the ``m`` defined p-values
    sorted ascending, the ``i``-th (1-based) becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.
    NaN p-values (contrasts that are no test) stay NaN and do not count in ``m``."""
    defined = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    order = sorted(defined, key=lambda i: p_values[i])
    m = len(order)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def adjusted_verdict(p_adjusted: float, diff: float, alpha: float = 0.05) -> str:
    """``higher``/``lower`` (the sign of the mean difference) where the adjusted p-value is
    below ``alpha``; else ``not resolved``."""
    if math.isnan(p_adjusted) or p_adjusted >= alpha or diff == 0:
        return NOT_RESOLVED
    return HIGHER if diff > 0 else LOWER


def minimal_resolvable_difference(sd: float, n: int, level: float = 0.95) -> float:
    """The smallest ``|mean difference|`` whose interval would exclude 0 at this spread:
    ``t_{(1 + level) / 2, n - 1} * sd / sqrt(n)`` for ``n`` paired seeds whose per-seed
    differences have standard deviation ``sd`` (a difference must exceed it to be resolved).
    NaN for fewer than two seeds."""
    if n < 2:
        return math.nan
    return t_quantile(n - 1, level) * sd / math.sqrt(n)


def welch_minimal_resolvable_difference(
    sd_a: float, sd_b: float, n: int, level: float = 0.95
) -> float:
    """The Welch analogue of :func:`minimal_resolvable_difference` for ``n`` seeds in each
    group: ``t_{(1 + level) / 2, df} * sqrt((sd_a^2 + sd_b^2) / n)``, df Welch-Satterthwaite."""
    if n < 2:
        return math.nan
    va, vb = sd_a**2, sd_b**2
    return t_quantile(welch_df(va, n, vb, n), level) * math.sqrt((va + vb) / n)


def seeds_needed(diff: float, sd: float, level: float = 0.95) -> int | None:
    """The smallest number of paired seeds ``n`` (at least 2) with
    ``t_{(1 + level) / 2, n - 1} * sd / sqrt(n) < |diff|``: how many seeds would resolve a
    difference of ``diff`` at the spread ``sd``. None for no difference, or beyond
    ``MAX_SEEDS``."""
    return _first_n(diff, lambda n: minimal_resolvable_difference(sd, n, level))


def welch_seeds_needed(diff: float, sd_a: float, sd_b: float, level: float = 0.95) -> int | None:
    """Seeds per group that would resolve ``diff`` with Welch's interval at the groups' spreads
    (:func:`welch_minimal_resolvable_difference` below ``|diff|``)."""
    return _first_n(diff, lambda n: welch_minimal_resolvable_difference(sd_a, sd_b, n, level))


def seeds_to_resolve(c: Contrast, diff: float | None = None) -> int | None:
    """Seeds (per group) that would resolve ``diff`` (default: the contrast's own difference)
    at the contrast's observed spread, by the contrast's method."""
    d = c.diff if diff is None else diff
    if c.method == PAIRED:
        return None if math.isnan(c.sd) else seeds_needed(d, c.sd, c.level)
    if math.isnan(c.sd_a) or math.isnan(c.sd_b):
        return None
    return welch_seeds_needed(d, c.sd_a, c.sd_b, c.level)


def _first_n(diff: float, mrd: Callable[[int], float]) -> int | None:
    """The smallest ``n`` in 2..MAX_SEEDS with ``mrd(n) < |diff|`` (``mrd`` decreases in n)."""
    target = abs(diff)
    if math.isnan(target) or target == 0 or not mrd(MAX_SEEDS) < target:
        return None
    lo, hi = 2, MAX_SEEDS  # invariant: mrd(hi) < target
    if mrd(lo) < target:
        return lo
    while hi - lo > 1:  # mrd(lo) >= target > mrd(hi)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if mrd(mid) < target else (mid, hi)
    return hi
