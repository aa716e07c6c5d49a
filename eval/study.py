"""``invlab report``: finished runs grouped by everything but the seed, with across-seed intervals.

Runs whose configs differ only by ``seed`` (and keys that do not change the model: names,
output paths, logging) form a group. For every group, held-out split, transform and metric the
report gives the mean over seeds of the runs' means, a t-interval across seeds (the seeds are
the replicates: this is the uncertainty a study reports, not one run's bootstrap), the number of
seeds, and the same for the gap to ``typical``. ``invlab eval`` outputs found below the runs
(``invariance.json`` with the config it used) are results too: an evaluation of the same
checkpoints under another protocol forms its own groups. It writes ``report.csv`` (every number),
``report.md`` (the headline table) and the plots: each metric against the swept variable, one
line per split with an interval band, and, when typicality by distance was evaluated, the metric
against typicality decile, one line per value of the swept variable. A per-layer
shift-equivariance profile (``eval.equivariance``) is tabulated per layer and metric (transform
``equivariance``, metric ``<layer>/<metric>``) and drawn against depth, one line per group.

Contrasts (``contrasts.csv``, ``contrasts.md``): for every two groups that differ in exactly one
key, every split, transform and metric (and every gap to ``typical``), the difference B - A
with its 95% interval, paired by seed where both groups hold the same seeds and Welch
otherwise, the verdict word, the Holm-adjusted p-value and verdict over all contrasts of the
report, the minimal resolvable difference and the seeds the observed difference would need
(``eval.contrasts``).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import textwrap
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.contrasts import NOT_RESOLVED, adjusted_verdict, contrast, holm, seeds_to_resolve
from eval.plots import (
    EQUIVARIANCE_LABELS,
    draw_cosine_map,
    equivariance_subtitle,
    layer_label,
    space,
)
from eval.report import cell, read_metrics, render_rows
from eval.runner import SCALAR_METRICS, TRANSFORMS
from invlab.config import ConfigError, flatten
from invlab.figures import (
    DPI,
    MARKERS,
    PAGE_WIDTH,
    SEED_POINT,
    categorical_axis,
    chance_handle,
    chance_line,
    interval_handle,
    legend_outside,
    mean_and_seeds,
    new_figure,
    save_figure,
    seed_handle,
    styled,
    suptitle,
)
from invlab.suggest import did_you_mean

# Keys that never make two runs different experiments: bookkeeping, and how a run is executed
# rather than what it computes (the on-device path gives the DataLoader's batches, compiled
# models the eager logits).
IGNORED = (
    "name",
    "out_dir",
    "seed",
    "logger",
    "model.init_from",
    "data.num_workers",
    "data.on_device",
    "data.stream",
    "model.compile",
    "model.compile_backend",
)
IGNORED_TRAINER = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")
# cosine_local / cosine_global exist when the exhaustive shift grid was evaluated (shift maps).
METRICS = ("accuracy", *SCALAR_METRICS, "cosine_local", "cosine_global")
TYPICAL = "typical"
DATA = "data"  # report rows about a split's images rather than a transform: homogeneity/<window>
# report rows of the per-layer shift-equivariance profile: <layer>/<cosine_distance | l2>
EQUIVARIANCE = "equivariance"
EQUIVARIANCE_METRICS = ("cosine_distance", "l2")
# (column title, transform, metric, from the gap block): the Markdown table's columns.
HEADLINE = (
    ("accuracy", "translate", "accuracy", False),
    ("P(chg) translate", "translate", "p_change", False),
    ("consistency", "translate", "consistency", False),
    ("P(chg) scale", "scale", "p_change", False),
    ("gap P(chg) translate", "translate", "p_change", True),
    ("P(chg) if correct", "translate", "given_correct/p_change", False),
)


@dataclass
class Run:
    path: Path
    name: str
    seed: int
    config: dict[str, Any]  # flattened, dotted keys
    metrics: dict[str, Any]

    @property
    def splits(self) -> dict[str, Any]:
        """The run's per-split invariance blocks (empty when it evaluated none)."""
        return self.metrics.get("invariance", {}).get("splits", {})


@dataclass
class Group:
    key: dict[str, Any]  # the varied keys' values
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.key.items()) or "all runs"

    @property
    def short_label(self) -> str:
        """:attr:`label` for figures: each key by its last dotted part where that is unique."""
        return short_label(self.key) or "all runs"

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)


def short_label(key: dict[str, Any]) -> str:
    """``a.b.c=1, d.e=2`` -> ``c=1, e=2``: long dotted keys crowd a legend or a panel title."""
    tails = [k.rsplit(".", 1)[-1] for k in key]
    names = [t if tails.count(t) == 1 else k for k, t in zip(key, tails, strict=True)]
    return ", ".join(f"{n}={_show(v)}" for n, v in zip(names, key.values(), strict=True))


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _ignored(key: str) -> bool:
    if any(key == k or key.startswith(f"{k}.") for k in IGNORED):
        return True
    return key.startswith("trainer.") and key.split(".", 1)[1] in IGNORED_TRAINER


RUN_METRICS = "metrics.json"  # written by `invlab fit`
EVAL_REPORT = "invariance.json"  # written by `invlab eval`
RESULT_FILES = (RUN_METRICS, EVAL_REPORT)


def _is_result(path: Path) -> bool:
    return any((path / name).is_file() for name in RESULT_FILES)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Result directories given directly or found below the paths: finished runs (holding
    ``metrics.json``) and ``invlab eval`` outputs (holding ``invariance.json``)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if _is_result(path):
            found.append(path)
        elif path.is_dir():
            hits = {p.parent for p in path.rglob("*.json") if p.name in RESULT_FILES}
            found.extend(sorted(hits))
        else:
            raise ConfigError(
                f"'{path}' is neither a run directory nor a folder of runs. Give run "
                f"directories written by `invlab fit` or a sweep's out_dir."
            )
    if not found:
        raise ConfigError(
            f"No finished runs (metrics.json) under {', '.join(map(str, paths))}: a run writes "
            f"metrics.json when its training and evaluation finished."
        )
    return list(dict.fromkeys(found))


def _read_result(path: Path) -> dict[str, Any]:
    """A run's ``metrics.json``, or an ``invlab eval`` output in the same shape (its report is
    the run's ``invariance`` block; its name is the run's name and the output folder's)."""
    if (path / RUN_METRICS).is_file():
        return read_metrics(path / RUN_METRICS)
    report = read_metrics(path / EVAL_REPORT)
    config = report.get("config")
    if not isinstance(config, dict):
        raise ConfigError(
            f"'{path / EVAL_REPORT}' does not record the config it was evaluated with (written "
            f"by an older invlab): re-run `invlab eval` on its checkpoint, or leave it out."
        )
    return {
        "name": f"{config.get('name', path.name)}:{path.name}",
        "config": config,
        "invariance": report,
    }


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """The finished runs below ``paths``. A key a run's config lacks (the run predates the key)
    takes the key's default, which keeps the behaviour the run had, so such runs still group
    with newer ones."""
    from invlab.config import schema, to_container

    defaults = flatten(to_container(schema()))
    runs = []
    for path in find_runs(paths):
        metrics = _read_result(path)
        config = metrics.get("config") or {}
        flat = flatten(config)
        runs.append(
            Run(
                path,
                metrics.get("name", path.name),
                int(config.get("seed", 0)),
                {**defaults, **flat},
                metrics,
            )
        )
    return runs


def varied_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys (other than the seed and bookkeeping) whose values differ between runs."""
    keys = sorted({k for r in runs for k in r.config if not _ignored(k)})
    return [k for k in keys if len({_show(r.config.get(k)) for r in runs}) > 1]


def group_runs(runs: Sequence[Run]) -> tuple[list[Group], list[str]]:
    """Runs that differ only by seed form a group; returns the groups and the varied keys."""
    keys = varied_keys(runs)
    groups: dict[str, Group] = {}
    for run in runs:
        key = {k: run.config.get(k) for k in keys}
        groups.setdefault(json.dumps(key, sort_keys=True, default=str), Group(key)).runs.append(run)
    for group in groups.values():
        seeds = [r.seed for r in group.runs]
        if len(seeds) != len(set(seeds)):
            names = ", ".join(str(r.path) for r in group.runs)
            raise ConfigError(
                f"Results {names} have the same config and the same seed: a group needs one "
                f"result per seed. Remove the duplicates, or give `invlab report` the run "
                f"directories themselves (an `invlab eval` output with its run's own settings "
                f"repeats the run's evaluation)."
            )
    return list(groups.values()), keys


def t_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and Student-t interval over replicates (seeds); no width for a single value."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return {"mean": math.nan, "ci": [math.nan, math.nan], "n": 0}
    mean = sum(xs) / n
    if n == 1:  # one seed has no spread to estimate
        return {"mean": mean, "ci": [math.nan, math.nan], "n": 1}
    from scipy.stats import t  # scipy comes with scikit-learn

    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "ci": [mean - half, mean + half], "n": n}


def _equivariance(run: Run) -> dict[str, Any]:
    """The run's per-layer equivariance profile (empty when it was not evaluated)."""
    return run.metrics.get("invariance", {}).get(EQUIVARIANCE) or {}


def _value(
    run: Run, split: str, transform: str, metric: str, gap: bool | str = False
) -> float | None:
    """The run's mean of ``metric``; with ``gap`` its gap to ``typical`` (True) or to the named
    split (the difference of the two means, as the stored gap to ``typical`` is)."""
    if isinstance(gap, str) and gap != TYPICAL:
        if split == gap:
            return None
        here, base = _value(run, split, transform, metric), _value(run, gap, transform, metric)
        return None if here is None or base is None or transform == DATA else here - base
    if transform == EQUIVARIANCE:  # <layer>/<metric>; layer names hold dots, never slashes
        layer, name = metric.rsplit("/", 1)
        block = (_equivariance(run).get("splits") or {}).get(split, {}).get(layer) or {}
        stat = (block.get("gap_to_typical") or {}).get(name) if gap else block.get(name)
        return stat["mean"] if isinstance(stat, dict) and "mean" in stat else None
    if transform == DATA:  # a property of the split's images, e.g. homogeneity/2: no gap
        if gap:
            return None
        transform, metric = metric.split("/", 1)
    block = run.splits.get(split, {}).get(transform)
    if not block:
        return None
    if gap:
        block = block.get("gap_to_typical") or {}
    for part in metric.split("/"):
        block = block.get(part) if isinstance(block, dict) else None
    return block["mean"] if isinstance(block, dict) and "mean" in block else None


def splits_of(runs: Sequence[Run]) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.splits))
    return list(names)


def _clip(metric: str, ci: Sequence[float]) -> tuple[float, float]:
    """A t-interval clipped to the metric's range (rates in [0, 1], cosines in [-1, 1], cosine
    distances in [0, 2], normalised L2 distances >= 0): with three seeds near a bound the
    symmetric interval would cross it."""
    if metric.endswith("/cosine_distance"):
        return max(ci[0], 0.0), min(ci[1], 2.0)
    if metric.endswith("/l2"):
        return max(ci[0], 0.0), ci[1]
    low = -1.0 if "cosine" in metric else 0.0
    return max(ci[0], low), min(ci[1], 1.0)


def _cases(groups: Sequence[Group]) -> list[tuple[str, str]]:
    """Every (transform, metric) the report tabulates: the metrics of each transform
    (conditional ones as ``given_correct/<metric>``), the splits' homogeneity windows and the
    equivariance profile's ``<layer>/<metric>`` (layers in forward order)."""
    metrics = [*METRICS, *(f"given_correct/{m}" for m in SCALAR_METRICS)]
    cases = [(tr, m) for tr in TRANSFORMS for m in metrics]
    for measure in ("homogeneity", "homogeneity_input"):  # of the pixels; of the first
        windows = {  # downsampling layer's input
            w
            for g in groups
            for r in g.runs
            for block in r.splits.values()
            for w in (block.get(measure) or {})
        }
        cases += [(DATA, f"{measure}/{w}") for w in sorted(windows, key=int)]
    layers = equivariance_layers(groups)
    return cases + [(EQUIVARIANCE, f"{n}/{m}") for n in layers for m in EQUIVARIANCE_METRICS]


def equivariance_layers(groups: Sequence[Group]) -> list[str]:
    """The layers of the runs' equivariance profiles in forward order (each run's order; a
    layer only some runs have goes after the last layer it follows), ``penultimate`` last."""
    order: list[str] = []
    for run in (r for g in groups for r in g.runs):
        previous = -1
        for name in _equivariance(run).get("layers") or []:
            if name in order:
                previous = order.index(name)
            else:
                order.insert(previous + 1, name)
                previous += 1
    if "penultimate" in order:
        order.append(order.pop(order.index("penultimate")))
    return order


def summarise(
    groups: Sequence[Group], level: float = 0.95, gap_to: str = TYPICAL
) -> list[dict[str, Any]]:
    """One row per group, split, transform and metric (conditional metrics as
    ``given_correct/<metric>``): across-seed mean, interval (clipped to the metric's range),
    seeds, and the gap to ``gap_to`` (``typical`` unless a study names a reference split)."""
    rows = []
    splits = splits_of([r for g in groups for r in g.runs])
    cases = _cases(groups)
    for group in groups:
        for split in splits:
            for tr, metric in cases:
                values = [_value(r, split, tr, metric, False) for r in group.runs]
                if all(v is None for v in values):
                    continue
                stat = t_interval([v for v in values if v is not None], level)
                lo, hi = _clip(metric, stat["ci"])
                gaps = [_value(r, split, tr, metric, gap_to) for r in group.runs]
                gap = t_interval([g for g in gaps if g is not None], level)
                rows.append(
                    {
                        "group": group.label,
                        **{k: _show(v) for k, v in group.key.items()},
                        "split": split,
                        "transform": tr,
                        "metric": metric,
                        "mean": stat["mean"],
                        "lo": lo,
                        "hi": hi,
                        "n_seeds": stat["n"],
                        "gap_mean": gap["mean"] if gap["n"] else None,
                        "gap_lo": gap["ci"][0] if gap["n"] else None,
                        "gap_hi": gap["ci"][1] if gap["n"] else None,
                    }
                )
    return rows


def _lookup(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    return {(r["group"], r["split"], r["transform"], r["metric"]): r for r in rows}


def markdown_table(
    groups: Sequence[Group], rows: list[dict[str, Any]], keys: list[str], gap_to: str = TYPICAL
) -> str:
    """Per group and split: seeds, then the headline metrics as ``mean [lo, hi]`` across seeds
    (gaps to ``gap_to``)."""
    index = _lookup(rows)
    titles = [c[0] if not c[3] or gap_to == TYPICAL else f"{c[0]} (to {gap_to})" for c in HEADLINE]
    header = [*keys, "seeds", "split", *titles]
    body = []
    for group in groups:
        for split in splits_of(group.runs):
            cells = []
            for _, tr, metric, gap in HEADLINE:
                row = index.get((group.label, split, tr, metric))
                p = "gap_" if gap else ""
                if row is None or row[f"{p}mean"] is None:
                    cells.append("-")
                    continue
                stat = {"mean": row[f"{p}mean"], "ci": [row[f"{p}lo"], row[f"{p}hi"]]}
                if row["n_seeds"] == 1:  # no interval from one seed: the mean alone, marked
                    cells.append(
                        ("{:+.3f}" if gap else "{:.3f}").format(stat["mean"]) + " (1 seed)"
                    )
                    continue
                cells.append(cell(stat, signed=gap))
            seeds = ",".join(map(str, group.seeds))
            body.append([*(_show(group.key[k]) for k in keys), seeds, split, *cells])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in body)])


def text_table(
    groups: Sequence[Group], rows: list[dict[str, Any]], keys: list[str], gap_to: str = TYPICAL
) -> str:
    """The Markdown table's content as aligned plain text (for the terminal)."""
    md = markdown_table(groups, rows, keys, gap_to).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in md]
    return "\n".join(render_rows(cells[0], cells[2:]))


def write_csv(rows: list[dict[str, Any]], path: Path, columns: Sequence[str] | None = None) -> Path:
    """The rows as CSV; ``columns`` default to every key in the rows, in order of appearance."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    return path


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


# --------------------------------------------------------------------------- contrasts
GAP = "gap"  # a contrast of the gap to typical (or the report's gap_to) rather than the value
VALUE = "value"
# contrasts.csv: what is compared, the two groups' means, B - A with its interval and verdicts,
# power at the observed spread, and the two groups' labels as report.csv writes them.
CONTRAST_COLUMNS = (
    "key",
    "a",
    "b",
    "fixed",
    "split",
    "transform",
    "metric",
    "of",
    "mean_a",
    "mean_b",
    "group_a",
    "group_b",
    "diff",
    "lo",
    "hi",
    "method",
    "n_a",
    "n_b",
    "df",
    "p",
    "verdict",
    "p_holm",
    "verdict_holm",
    "mrd",
    "seeds_needed",
)


def key_values(groups: Sequence[Group], key: str) -> list[Any]:
    """The values ``key`` takes among the groups: ascending when all are numbers, else in the
    order the groups first show them."""
    values: dict[str, Any] = {}
    for g in groups:
        values.setdefault(_show(g.key.get(key)), g.key.get(key))
    found = list(values.values())
    return sorted(found) if _numeric(found) else found


def _same_value(text: str, value: Any) -> bool:
    """Whether a value typed on the command line names ``value`` (``4`` for 4, ``true`` for
    True, ``[1,2]`` for [1, 2])."""
    shown = _show(value)
    squash = lambda v: v.replace(" ", "").lower()  # noqa: E731
    return text == shown or squash(text) == squash(shown)


def check_contrast(
    groups: Sequence[Group], keys: list[str], key: str | None, baseline: str | None
) -> tuple[str | None, str | None]:
    """``--contrast`` / ``--baseline`` checked against the groups: the key (None: every varied
    key) and the baseline value as the report shows it (None: all pairs). Raises ConfigError
    naming the fix."""
    if key is None and baseline is not None:
        if len(keys) != 1:
            varied = ", ".join(keys) if keys else "none"
            raise ConfigError(
                f"--baseline {baseline}: give the key it is a value of with --contrast KEY "
                f"(varied keys: {varied})."
            )
        key = keys[0]
    if key is not None and key not in keys:
        varied = f"Varied keys: {', '.join(keys)}." if keys else "No config key varies."
        raise ConfigError(
            f"--contrast {key}: not a key that varies between the runs.{did_you_mean(key, keys)}"
            f" {varied}"
        )
    if baseline is None:
        return key, None
    values = key_values(groups, key)
    for value in values:
        if _same_value(baseline, value):
            return key, _show(value)
    shown = [_show(v) for v in values]
    raise ConfigError(
        f"--baseline {baseline}: not a value of {key} in these runs.{did_you_mean(baseline, shown)}"
        f" Its values: {', '.join(shown)}."
    )


def contrast_pairs(
    groups: Sequence[Group], keys: list[str], key: str | None = None, baseline: str | None = None
) -> list[tuple[str, Group, Group]]:
    """``(key, A, B)`` for every two groups that differ in exactly that key (only ``key`` when
    given), A holding the earlier value in :func:`key_values` order, or the ``baseline`` value
    (as :func:`check_contrast` returns it) when one is given (then only pairs with it)."""
    pairs = []
    for k in [key] if key is not None else keys:
        order = [_show(v) for v in key_values(groups, k)]
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                differ = [x for x in keys if _show(a.key.get(x)) != _show(b.key.get(x))]
                if differ != [k]:
                    continue
                first, second = sorted((a, b), key=lambda g: order.index(_show(g.key.get(k))))
                if baseline is not None:
                    if _show(second.key.get(k)) == baseline:
                        first, second = second, first
                    if _show(first.key.get(k)) != baseline:
                        continue
                pairs.append((k, first, second))
    return pairs


def _per_seed(group: Group, split: str, tr: str, metric: str, gap: bool | str) -> dict[int, float]:
    values = {r.seed: _value(r, split, tr, metric, gap) for r in group.runs}
    return {s: v for s, v in values.items() if v is not None and not math.isnan(v)}


def seed_values(group: Group, split: str, tr: str, metric: str, gap: bool | str = False) -> list:
    """The group's per-seed values (see :func:`_per_seed`) in seed order: a figure's points."""
    per_seed = _per_seed(group, split, tr, metric, gap)
    return [per_seed[s] for s in sorted(per_seed)]


def _none_if_nan(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def contrast_rows(
    groups: Sequence[Group],
    keys: list[str],
    pairs: Sequence[tuple[str, Group, Group]],
    level: float = 0.95,
    gap_to: str = TYPICAL,
) -> list[dict[str, Any]]:
    """One row per pair, split, transform and metric (``of``: the value, or its gap to
    ``gap_to``): B - A with its interval (paired by seed where the groups hold the same seeds,
    else Welch), the raw verdict, the Holm-adjusted p-value and verdict over all rows, the
    minimal resolvable difference (the interval's half-width) and the seeds the observed
    difference would need at the observed spread. Undefined numbers are None."""
    cases = _cases(groups)
    found = []
    for k, a, b in pairs:
        fixed = ", ".join(f"{x}={_show(a.key.get(x))}" for x in keys if x != k)
        for split in splits_of([*a.runs, *b.runs]):
            for tr, metric in cases:
                for of in (VALUE, GAP):
                    va = _per_seed(a, split, tr, metric, of == GAP and gap_to)
                    vb = _per_seed(b, split, tr, metric, of == GAP and gap_to)
                    if not va or not vb:
                        continue
                    c = contrast(va, vb, level)
                    row = {
                        "key": k,
                        "a": _show(a.key.get(k)),
                        "b": _show(b.key.get(k)),
                        "fixed": fixed,
                        "split": split,
                        "transform": tr,
                        "metric": metric,
                        "of": of,
                        "mean_a": sum(va.values()) / len(va),
                        "mean_b": sum(vb.values()) / len(vb),
                        "group_a": a.label,
                        "group_b": b.label,
                    }
                    found.append((row, c))
    adjusted = holm([c.p for _, c in found])
    alpha = round(1 - level, 12)  # 0.05, not 0.050000000000000044
    rows = []
    for (row, c), p_holm in zip(found, adjusted, strict=True):
        row.update(
            {
                "diff": c.diff,
                "lo": c.lo,
                "hi": c.hi,
                "method": c.method,
                "n_a": c.n_a,
                "n_b": c.n_b,
                "df": c.df,
                "p": c.p,
                "verdict": c.verdict,
                "p_holm": p_holm,
                "verdict_holm": adjusted_verdict(p_holm, c.diff, alpha),
                "mrd": c.half,
                "seeds_needed": seeds_to_resolve(c),
            }
        )
        rows.append({k: _none_if_nan(v) for k, v in row.items()})
    return rows


def _num(value: float | None, fmt: str = "{:+.4f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def contrast_summary(rows: list[dict[str, Any]], level: float = 0.95) -> str:
    """One line: contrasts, tests in the Holm family, resolved before and after Holm."""
    tests = sum(r["p"] is not None for r in rows)
    raw = sum(r["verdict"] != NOT_RESOLVED for r in rows)
    held = sum(r["verdict_holm"] != NOT_RESOLVED for r in rows)
    return (
        f"{len(rows)} contrasts ({tests} tests in the Holm family at alpha "
        f"{round(1 - level, 12):g}): {raw} resolved by their {100 * level:.0f}% interval, "
        f"{held} after Holm"
    )


def contrasts_markdown(
    rows: list[dict[str, Any]], keys: list[str], level: float = 0.95, gap_to: str = TYPICAL
) -> str:
    """The contrasts as a Markdown table, with the summary line above it."""
    fixed = len(keys) > 1
    header = [
        "contrast",
        *(["fixed"] if fixed else []),
        "split",
        "metric",
        f"B - A [{100 * level:.0f}% CI]",
        "method",
        "seeds A/B",
        "verdict",
        "p (Holm)",
        "verdict (Holm)",
        "min. resolvable",
        "seeds needed",
    ]
    body = []
    for r in rows:
        gap = f" (gap to {gap_to})" if r["of"] == GAP else ""
        metric = f"{r['transform']} {r['metric']}{gap}"
        interval = f"{_num(r['diff'])} [{_num(r['lo'])}, {_num(r['hi'])}]"
        body.append(
            [
                f"{r['key']}: {r['a']} -> {r['b']}",
                *([r["fixed"] or "-"] if fixed else []),
                r["split"],
                metric,
                interval if r["lo"] is not None else f"{_num(r['diff'])} (no interval)",
                r["method"],
                f"{r['n_a']}/{r['n_b']}",
                r["verdict"],
                _num(r["p_holm"], "{:.3g}"),
                r["verdict_holm"],
                _num(r["mrd"], "{:.4f}"),
                "-" if r["seeds_needed"] is None else str(r["seeds_needed"]),
            ]
        )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    table = "\n".join([*lines, *("| " + " | ".join(c) + " |" for c in body)])
    notes = (
        "B - A: difference of the means over seeds; paired by seed where both groups hold the "
        "same seeds, else Welch. Verdicts: higher / lower where the interval excludes 0, "
        "not resolved where it contains 0; Holm adjusts over every contrast in this table. "
        "min. resolvable: the smallest |B - A| whose interval would exclude 0 at the observed "
        "spread with these seeds; seeds needed: seeds (per group) that would resolve the "
        "observed B - A at that spread (- : never, or over 1000)."
    )
    return f"# {contrast_summary(rows, level)}\n\n{notes}\n\n{table}\n"


# --------------------------------------------------------------------------------- figures
# Every figure says what it shows: its title names the seeds, the images and the interval;
# each group's mean carries its across-seed interval as an error bar, each seed's value is a
# small hollow point beside it, and accuracy axes show chance (1 / classes).
FEW = 8  # at most this many numeric values of a swept key are drawn as evenly spaced categories
Y_LABELS = {
    "accuracy": "accuracy",
    "p_change": "P(top-1 change)",
    "consistency": "consistency",
    "mac": "mean abs. change of p(top-1)",
    "worst_case_accuracy": "worst-case accuracy",
    "cosine_local": "feature cosine, local",
    "cosine_global": "feature cosine, global",
}


def _count(values: Collection[int], noun: str) -> str:
    """``3 seeds``, ``2-3 seeds``: the counts a figure's groups or splits hold."""
    low, high = min(values), max(values)
    plural = "s" if high != 1 else ""
    return f"{low}{'' if low == high else f'–{high}'} {noun}{plural}"


def _seeds_text(groups: Sequence[Group]) -> str:
    return _count([len(g.runs) for g in groups] or [0], "seed")


def _images_text(runs: Sequence[Run], splits: Sequence[str] | None = None) -> str:
    """``300 images per split`` from the runs' protocol blocks ('' when none records it)."""
    counts = [
        int(n)
        for r in runs
        for s, n in (
            r.metrics.get("invariance", {}).get("protocol", {}).get("n_images") or {}
        ).items()
        if splits is None or s in splits
    ]
    return f"{_count(counts, 'image')} per split" if counts else ""


def num_classes(runs: Sequence[Run]) -> int | None:
    """The runs' number of classes (``metrics.json["num_classes"]``) when they agree."""
    found = {r.metrics.get("num_classes") for r in runs}
    found.discard(None)
    return int(found.pop()) if len(found) == 1 else None


def _interval_text(level: float, groups: Sequence[Group]) -> str:
    return f"mean and {100 * level:.0f}% t-interval across {_seeds_text(groups)}"


def _tick(value: Any) -> str:
    """A config value as a tick or legend label: a list as its items joined by "+"."""
    if isinstance(value, list):
        return "+".join(map(_tick, value)) if value else "(none)"
    return _show(value)


def _x_positions(values: list[Any]) -> tuple[list[float], list[str], bool]:
    """Where the values of a swept key go on the x axis: evenly spaced categories (in ascending
    order when numeric) unless there are many numbers; their tick labels; ordered or not."""
    numeric = _numeric(values)
    labels = [_tick(v).replace("+", "+\n") for v in values]  # a list of presets: one per line
    if numeric and len(set(values)) > FEW:
        return [float(v) for v in values], labels, True
    return [float(i) for i in range(len(values))], labels, numeric


@styled
def plot_by(
    groups: Sequence[Group],
    rows: list[dict[str, Any]],
    by: str,
    keys: list[str],
    path: Path,
    marks: Collection[tuple[str, str, str, str]] = (),
    mark_label: str = "resolved (Holm)",
    level: float = 0.95,
) -> Path | None:
    """Each headline metric against ``by``: per split (colour) the group's mean with its
    across-seed interval and each seed's value beside it, the values of ``by`` as evenly spaced
    categories; one row of panels per combination of the other varied keys. A point whose
    ``(group label, split, transform, metric)`` is in ``marks`` is a star (a resolved
    contrast). None when no group measured any headline metric."""
    from matplotlib.lines import Line2D

    index = _lookup(rows)
    marked = False
    others = [k for k in keys if k != by]
    facets: dict[str, list[Group]] = {}
    for g in groups:
        label = short_label({k: g.key[k] for k in others})
        facets.setdefault(label, []).append(g)
    splits = splits_of([r for g in groups for r in g.runs])
    panels = [  # a metric no group measured (a transform not evaluated) gets no empty panel
        (t, tr, m)
        for t, tr, m, gap in HEADLINE
        if not gap
        and "/" not in m
        and any((g.label, s, tr, m) in index for g in groups for s in splits)
    ]
    if not panels:
        return None
    chance = num_classes([r for g in groups for r in g.runs])
    colours = {s: _colour(i, len(splits)) for i, s in enumerate(splits)}
    fig = new_figure(PAGE_WIDTH, 2.0 * len(facets) + 0.9, dpi=DPI, layout="constrained")
    # one row (a subfigure titled by the other keys' values) per facet
    rows_ = fig.subfigures(len(facets), 1, squeeze=False)[:, 0]
    axes = [sub.subplots(1, len(panels), squeeze=False)[0] for sub in rows_]
    slot = 0.8 / max(1, len(splits))
    for r, (row_axes, (facet, members)) in enumerate(zip(axes, facets.items(), strict=True)):
        if facet:
            rows_[r].suptitle(facet, fontsize="medium")
        last = r == len(facets) - 1
        values = [g.key.get(by) for g in members]
        order = sorted(range(len(members)), key=lambda i: values[i] if _numeric(values) else i)
        xs, labels, ordered = _x_positions([values[i] for i in order])
        width = slot * (min(b - a for a, b in zip(xs, xs[1:], strict=False)) if len(xs) > 1 else 1)
        for ax, (_, tr, metric) in zip(row_axes, panels, strict=True):
            for j, split in enumerate(splits):
                stats = [index.get((members[i].label, split, tr, metric)) for i in order]
                if all(s is None for s in stats):
                    continue
                dx = (j - (len(splits) - 1) / 2) * width
                centres = [x + dx - 0.15 * width for x in xs]
                if ordered:  # a thin line through the means of an ordered variable
                    ax.plot(
                        centres,
                        [s["mean"] if s else math.nan for s in stats],
                        color=colours[split],
                        linewidth=0.7,
                        alpha=0.6,
                    )
                for x, s, i in zip(xs, stats, order, strict=True):
                    if s is None:
                        continue
                    star = (members[i].label, split, tr, metric) in marks
                    marked |= star
                    seeds = seed_values(members[i], split, tr, metric)
                    mean_and_seeds(
                        ax,
                        x + dx,
                        s["mean"],
                        (s["lo"], s["hi"]),
                        seeds,
                        colours[split],
                        width=width,
                        star=star,
                    )
            if metric == "accuracy":
                chance_line(ax, chance)
            if not (ordered and len(xs) > FEW):  # many numbers keep a numeric axis
                categorical_axis(ax, labels)
            if last:  # the x axis is the same in every row: named once, at the bottom
                ax.set_xlabel(by)
            ax.set_ylabel(f"{Y_LABELS.get(metric, metric)}, {tr}")
    for column in zip(*axes, strict=True):  # one y range per metric: rows compare by eye
        low = min(ax.get_ylim()[0] for ax in column)
        high = max(ax.get_ylim()[1] for ax in column)
        for ax in column:
            ax.set_ylim(low, high)
    handles: list[Any] = [
        Line2D([], [], color=colours[s], marker="o", linestyle="", label=s) for s in splits
    ]
    handles += [interval_handle(f"mean ± {100 * level:.0f}% t-interval"), seed_handle()]
    if marked:
        handles.append(
            Line2D([], [], color="0.3", marker="*", markersize=8, linestyle="", label=mark_label)
        )
    if chance:
        handles.append(chance_handle(chance))
    legend_outside(fig, handles)
    runs = [r for g in groups for r in g.runs]
    suptitle(
        fig,
        f"Per held-out split against {by}: {_interval_text(level, groups)}",
        _images_text(runs),
    )
    return save_figure(fig, path)


def _typicality_curves(group: Group) -> list[dict[str, Any]]:
    """Each seed's invariance-by-typicality curve (runs that scored typicality)."""
    curves = [r.metrics.get("invariance", {}).get("typicality", {}) for r in group.runs]
    return [c for c in curves if c.get("curve")]


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


@styled
def plot_typicality(
    groups: Sequence[Group], by: str, path: Path, level: float = 0.95, within: bool = False
) -> Path | None:
    """Accuracy and P(top-1 change) against typicality bin (distance to the training set): per
    value of ``by`` (colour) the mean over seeds with its t-interval and each seed's value
    beside it; bins of the images pooled from every split, or (``within``) one row per split
    with bins of that split's images. None when no run scored typicality."""
    from matplotlib.lines import Line2D

    curves: dict[str, list[dict[str, Any]]] = {}
    scored: list[Group] = []
    for g in groups:
        found = _typicality_curves(g)
        if within:
            found = [t for t in found if t.get("curve_by_split")]
        if found:
            curves.setdefault(_tick(g.key.get(by)), []).extend(found)
            scored.append(g)
    if not curves:
        return None
    first = next(iter(curves.values()))[0]
    rows: list[tuple[str, Any]] = (
        [
            (s, lambda t, s=s: (t.get("curve_by_split") or {}).get(s))
            for s in first["curve_by_split"]
        ]
        if within
        else [("", lambda t: t["curve"])]
    )
    n_bins = min(len(t["curve"]["accuracy"]) for per in curves.values() for t in per)
    chance = num_classes([r for g in scored for r in g.runs])
    colours = {label: _colour(i, len(curves)) for i, label in enumerate(curves)}
    fig = new_figure(PAGE_WIDTH, 0.4 + 2.5 * len(rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    width = 0.8 / len(curves)
    xs = [float(b) for b in range(n_bins)]
    picks = (
        ("accuracy", lambda c: c["accuracy"]),
        ("P(top-1 change), translate", lambda c: c.get("translate", {}).get("p_change")),
    )
    for r, (split, curve_of) in enumerate(rows):
        for ax, (ylabel, pick) in zip(axes[r], picks, strict=True):
            categorical_axis(ax, [str(b) for b in range(1, n_bins + 1)])
            for k, (label, per_seed) in enumerate(curves.items()):
                series = [pick(c) for c in map(curve_of, per_seed) if c]
                series = [x for x in series if x]
                if not series:
                    continue
                dx = (k - (len(curves) - 1) / 2) * width
                means = []
                for b, x in enumerate(xs):
                    seeds = _finite([x_[b] for x_ in series])
                    stat = t_interval(seeds, level)
                    means.append(stat["mean"])
                    lo, hi = _clip("rate", stat["ci"]) if stat["n"] > 1 else (math.nan, math.nan)
                    mean_and_seeds(
                        ax, x + dx, stat["mean"], (lo, hi), seeds, colours[label], width=width
                    )
                ax.plot(
                    [x + dx - 0.15 * width for x in xs],
                    means,
                    color=colours[label],
                    linewidth=0.7,
                    alpha=0.6,
                )
            if ylabel == "accuracy":
                chance_line(ax, chance)
            ax.set_ylabel(f"{ylabel}\n{split}" if split else ylabel)
            if r == len(rows) - 1:
                ax.set_xlabel("typicality bin (1 = nearest the training set)")
    handles: list[Any] = [
        Line2D([], [], color=colours[c], marker="o", linestyle="", label=c) for c in curves
    ]
    handles += [interval_handle(f"mean ± {100 * level:.0f}% t-interval"), seed_handle()]
    if chance:
        handles.append(chance_handle(chance))
    legend_outside(fig, handles, title=by)
    pooled = len(first.get("pooled_splits") or [])
    where = (
        "bins within each split (row)"
        if within
        else (f"images pooled from {pooled} held-out splits" if pooled else "")
    )
    suptitle(
        fig,
        f"By typicality ({n_bins} equal-count bins of the "
        f"{space(str(first.get('method')), first.get('checkpoint'))} "
        f"distance to the {first.get('k')} nearest training images)",
        _interval_text(level, scored),
        where,
    )
    return save_figure(fig, path)


def _colour(i: int, n: int) -> Any:
    """Distinct colours for up to 20 groups (matplotlib's default cycle has 10)."""
    if n <= 10:
        return f"C{i}"
    from matplotlib import colormaps

    return colormaps["tab20"](i % 20)


@styled
def plot_scatter(
    groups: Sequence[Group],
    rows: list[dict[str, Any]],
    x: tuple[str, str | Callable[[Group], str], str],
    panels: Sequence[tuple[str, str, str]],
    path: Path,
    level: float = 0.95,
    title: str = "",
) -> Path:
    """One panel per ``(transform, metric, label)`` against ``x`` (the same triple; its metric
    may be a function of the group, e.g. each model's own window): one colour per group, one
    marker per split, the across-seed mean with its interval on both axes and each seed's own
    point (hollow); the legend below the panels."""
    from matplotlib.lines import Line2D  # lazily, like every matplotlib import here

    index = _lookup(rows)
    splits = splits_of([r for g in groups for r in g.runs])
    colours = [_colour(gi, len(groups)) for gi in range(len(groups))]
    chance = num_classes([r for g in groups for r in g.runs])
    fig = new_figure(PAGE_WIDTH, 3.3, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (tr, metric, label) in zip(axes, panels, strict=True):
        for gi, g in enumerate(groups):
            x_metric = x[1](g) if callable(x[1]) else x[1]
            for si, split in enumerate(splits):
                xs = index.get((g.label, split, x[0], x_metric))
                ys = index.get((g.label, split, tr, metric))
                if xs is None or ys is None:
                    continue
                marker = MARKERS[si % len(MARKERS)]
                px = _per_seed(g, split, x[0], x_metric, False)
                py = _per_seed(g, split, tr, metric, False)
                both = sorted(set(px) & set(py))
                ax.plot(
                    [px[s] for s in both],
                    [py[s] for s in both],
                    marker=marker,
                    linestyle="",
                    color=colours[gi],
                    markerfacecolor="none",
                    **SEED_POINT,
                )
                ax.errorbar(
                    xs["mean"],
                    ys["mean"],
                    xerr=_err(xs),
                    yerr=_err(ys),
                    fmt=marker,
                    color=colours[gi],
                    markersize=4.5,
                    markeredgecolor="white",
                    markeredgewidth=0.4,
                    elinewidth=0.9,
                    zorder=3,
                )
        if x[1] == "accuracy":
            chance_line(ax, chance, axis="x")
        if metric == "accuracy":
            chance_line(ax, chance)
        ax.set_xlabel(x[2])
        ax.set_ylabel(label)
        ax.grid(True, axis="both")
    # One legend entry per group (colour) and per split (marker), not per combination.
    handles: list[Any] = [
        Line2D([], [], color=colour, marker="o", linestyle="", label=g.short_label)
        for colour, g in zip(colours, groups, strict=True)
    ] + [
        Line2D([], [], color="0.3", marker=MARKERS[si % len(MARKERS)], linestyle="", label=split)
        for si, split in enumerate(splits)
    ]
    handles += [interval_handle(f"mean ± {100 * level:.0f}% t-interval"), seed_handle()]
    if chance:
        handles.append(chance_handle(chance))
    legend_outside(fig, handles)
    runs = [r for g in groups for r in g.runs]
    suptitle(
        fig,
        title,
        f"{_interval_text(level, groups)} on both axes",
        _images_text(runs),
    )
    return save_figure(fig, path)


def _err(row: dict[str, Any]) -> list[list[float]] | None:
    """An error bar from a report row's interval; None where it has none (one seed)."""
    if any(v is None or math.isnan(v) for v in (row["lo"], row["hi"])):
        return None
    return [[max(row["mean"] - row["lo"], 0.0)], [max(row["hi"] - row["mean"], 0.0)]]


def plot_tradeoff(
    groups: Sequence[Group], rows: list[dict[str, Any]], path: Path, level: float = 0.95
) -> Path:
    """Accuracy against invariance under translation. Where the groups lie on a line,
    invariance is being bought with accuracy (or the reverse)."""
    return plot_scatter(
        groups,
        rows,
        ("translate", "accuracy", "accuracy"),
        [
            ("translate", "consistency", "consistency, translate"),
            ("translate", "p_change", "P(top-1 change), translate"),
        ],
        path,
        level,
        "Invariance against accuracy per group (colour) and split (marker)",
    )


def pooling_window(group: Group) -> int | None:
    """The window of the group's first downsampling layer (kernel + 1: the neighbourhood a
    1-px shift moves through it, ``protocol.homogeneity_layer``); None when its runs do not
    agree or never recorded it."""
    found = {
        ((r.metrics.get("invariance") or {}).get("protocol") or {})
        .get("homogeneity_layer", {})
        .get("window")
        for r in group.runs
    }
    return found.pop() if len(found) == 1 and None not in found else None


def _own_window(measure: str, group: Group) -> str:
    return f"{measure}/{pooling_window(group)}"


def plot_homogeneity(
    groups: Sequence[Group],
    rows: list[dict[str, Any]],
    window: str | None,
    path: Path,
    level: float = 0.95,
    measure: str = "homogeneity",
) -> Path:
    """Accuracy and P(top-1 change) against the splits' local homogeneity (Mouton et al.), at
    ``window`` or, with ``window=None``, at each group's own first-pooling window (k + 1).
    ``measure``: ``homogeneity`` (the pixels) or ``homogeneity_input`` (the first downsampling
    layer's input, each channel rescaled by its own range)."""
    what = "of the split" if measure == "homogeneity" else "of the first pooling layer's input"
    metric: str | Callable[[Group], str]
    if window is None:
        metric = functools.partial(_own_window, measure)
        label = f"local homogeneity {what}\n(each model's pooling window, k+1)"
    else:
        metric, label = f"{measure}/{window}", f"local homogeneity {what} ({window}×{window})"
    return plot_scatter(
        groups,
        rows,
        (DATA, metric, label),
        [
            ("translate", "accuracy", "accuracy"),
            ("translate", "p_change", "P(top-1 change), translate"),
        ],
        path,
        level,
        "Against the local homogeneity per group (colour) and split (marker)",
    )


@styled
def plot_cosine_maps(groups: Sequence[Group], path: Path) -> Path | None:
    """The exhaustive shift grid's feature cosine to the centre view, mean over seeds: one row
    per group, one column per split, one shared colour range and colour bar. None when no run
    has a map."""
    import numpy as np

    splits = splits_of([r for g in groups for r in g.runs])
    maps: dict[tuple[int, str], Any] = {}
    n_maps: dict[tuple[int, str], int] = {}
    shift = 0
    for gi, g in enumerate(groups):
        for split in splits:
            blocks = [r.splits.get(split, {}).get("translate") for r in g.runs]
            per_seed = [np.asarray(b["cosine_map"]) for b in blocks if b and b.get("cosine_map")]
            if per_seed:
                maps[gi, split] = np.mean(per_seed, axis=0)
                n_maps[gi, split] = len(per_seed)
                shift = (maps[gi, split].shape[0] - 1) // 2
    if not maps:
        return None
    cols = [s for s in splits if any((gi, s) in maps for gi in range(len(groups)))]
    rows_ = [gi for gi in range(len(groups)) if any((gi, s) in maps for s in cols)]
    low = min(float(m.min()) for m in maps.values())
    side = min(1.9, (PAGE_WIDTH - 0.9) / len(cols))
    fig = new_figure(
        side * len(cols) + 0.9, side * len(rows_) + 0.75, dpi=DPI, layout="constrained"
    )
    axes = fig.subplots(len(rows_), len(cols), squeeze=False, sharex=True, sharey=True)
    image = None
    for r, (ax_row, gi) in enumerate(zip(axes, rows_, strict=True)):
        for c, (ax, split) in enumerate(zip(ax_row, cols, strict=True)):
            if (gi, split) not in maps:
                ax.axis("off")
                continue
            title = f"{groups[gi].short_label}\n{split}"
            image = draw_cosine_map(ax, maps[gi, split], shift, low, title, colorbar=False)
            if r < len(rows_) - 1:
                ax.set_xlabel("")
            if c > 0:
                ax.set_ylabel("")
    fig.colorbar(image, ax=axes, shrink=0.9, label="feature cosine")
    seeds = _count(list(n_maps.values()), "seed")
    images = _images_text([groups[gi].runs[0] for gi in rows_], cols)
    suptitle(
        fig,
        f"Feature cosine of each shifted view to the centre view (±{shift} px grid)",
        f"mean over {seeds}",
        images,
    )
    return save_figure(fig, path)


@styled
def plot_equivariance(
    groups: Sequence[Group], rows: list[dict[str, Any]], path: Path, level: float = 0.95
) -> Path | None:
    """Distance against depth: one row of panels per split, one panel per metric, the layers in
    forward order as categories, one colour per group with its across-seed mean, t-interval and
    each seed's value. None when no run has an equivariance profile."""
    from matplotlib.lines import Line2D

    index = _lookup(rows)
    layers = equivariance_layers(groups)
    if not layers:
        return None
    members = [g for g in groups if any(map(_equivariance, g.runs))]
    splits = [
        s
        for s in splits_of([r for g in members for r in g.runs])
        if any(
            (g.label, s, EQUIVARIANCE, f"{n}/{m}") in index
            for g in members
            for n in layers
            for m in EQUIVARIANCE_METRICS
        )
    ]
    colours = [_colour(i, len(members)) for i in range(len(members))]
    fig = new_figure(PAGE_WIDTH, 1.9 * len(splits) + 0.9, dpi=DPI, layout="constrained")
    axes = fig.subplots(len(splits), len(EQUIVARIANCE_METRICS), squeeze=False, sharex=True)
    width = 0.8 / max(1, len(members))
    for r, split in enumerate(splits):
        for ax, metric in zip(axes[r], EQUIVARIANCE_METRICS, strict=True):
            xs = categorical_axis(ax, [layer_label(n) for n in layers])
            for gi, g in enumerate(members):
                dx = (gi - (len(members) - 1) / 2) * width
                stats = [index.get((g.label, split, EQUIVARIANCE, f"{n}/{metric}")) for n in layers]
                for x, n, st in zip(xs, layers, stats, strict=True):
                    if st is None:
                        continue
                    seeds = seed_values(g, split, EQUIVARIANCE, f"{n}/{metric}")
                    mean_and_seeds(
                        ax,
                        x + dx,
                        st["mean"],
                        (st["lo"], st["hi"]),
                        seeds,
                        colours[gi],
                        width=width,
                    )
                ax.plot(
                    [x + dx - 0.15 * width for x in xs],
                    [st["mean"] if st else math.nan for st in stats],
                    color=colours[gi],
                    linewidth=0.7,
                    alpha=0.6,
                )
            ax.set_ylabel("\n".join(textwrap.wrap(EQUIVARIANCE_LABELS[metric], 16)))
            ax.set_title(split, fontsize="medium")
            ax.set_ylim(bottom=0)
            if r == len(splits) - 1:
                ax.set_xlabel("layer (forward order)")
    for column in zip(*axes, strict=True):  # one y range per metric: splits compare by eye
        high = max(ax.get_ylim()[1] for ax in column)
        for ax in column:
            ax.set_ylim(0, high)
    handles: list[Any] = [
        Line2D([], [], color=c, marker="o", linestyle="", label=g.short_label)
        for c, g in zip(colours, members, strict=True)
    ]
    handles += [interval_handle(f"mean ± {100 * level:.0f}% t-interval"), seed_handle()]
    legend_outside(fig, handles)
    runs = [r for g in members for r in g.runs]
    protocol = _equivariance(runs[0]).get("protocol") or {}
    counts = [
        int(n)
        for r in runs
        for n in ((_equivariance(r).get("protocol") or {}).get("n_images") or {}).values()
    ]
    suptitle(
        fig,
        "Shift equivariance by layer (rows: splits; colour: group): distance between the "
        "features of the shifted image and the shifted features (penultimate: pooled)",
        _interval_text(level, members),
        f"{_count(counts, 'image')} per split" if counts else "",
        equivariance_subtitle(protocol),
    )
    return save_figure(fig, path)


def _marks(
    contrasts: list[dict[str, Any]], by: str, reference: Any
) -> set[tuple[str, str, str, str]]:
    """The ``(group label, split, transform, metric)`` of every group whose value differs from
    the ``reference`` value of ``by`` (other keys equal) with a Holm-resolved contrast."""
    ref = _show(reference)
    return {
        (r["group_b"] if r["a"] == ref else r["group_a"], r["split"], r["transform"], r["metric"])
        for r in contrasts
        if r["key"] == by
        and r["of"] == VALUE
        and ref in (r["a"], r["b"])
        and r["verdict_holm"] != NOT_RESOLVED
    }


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    by: Sequence[str] = (),
    level: float = 0.95,
    contrast_key: str | None = None,
    baseline: str | None = None,
    gap_to: str = TYPICAL,
) -> dict[str, Any]:
    """Read the runs, group them, write ``report.csv``, ``report.md`` and the plots to ``out``.
    Returns ``{"groups", "keys", "rows", "files", "table", "contrasts"}``; ``tradeoff.png``
    (accuracy against invariance) when there are several groups, ``homogeneity.png`` when the
    runs measured the splits' local homogeneity (smallest window), ``cosine_maps.png`` when
    they evaluated the exhaustive shift grid, ``equivariance.png`` when they profiled shift
    equivariance layer by layer. With several groups also ``contrasts.csv`` and
    ``contrasts.md``: the contrasts of every two groups that differ in one key (only
    ``contrast_key`` when given; only against its ``baseline`` value when given), and the
    plots against a key star the groups resolved (Holm) from the baseline or first value.
    Gaps are to ``typical``, or to the split ``gap_to`` names (a fixed ``reference``); then,
    when arms differ in a ``data.placement`` key, ``controls.csv`` and ``controls.md`` hold the
    factor-in-training control (:mod:`eval.controls`)."""
    from eval.controls import check_gap_to, control_rows, controls_markdown, plot_controls

    runs = load_runs(paths)
    groups, keys = group_runs(runs)
    unknown = [k for k in by if k not in keys]
    if unknown:
        hint = f" Varied keys: {', '.join(keys)}." if keys else " No config key varies."
        raise ConfigError(
            f"--by {', '.join(unknown)}: not a key that varies between the runs.{hint}"
        )
    contrast_key, base = check_contrast(groups, keys, contrast_key, baseline)
    if gap_to != TYPICAL:
        check_gap_to(splits_of(runs), gap_to)
    rows = summarise(groups, level, gap_to)
    pairs = contrast_pairs(groups, keys, contrast_key, base) if len(groups) > 1 else []
    contrasts = contrast_rows(groups, keys, pairs, level, gap_to)
    controls = control_rows(groups, rows, contrasts, gap_to)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [write_csv(rows, out / "report.csv")]
    table = markdown_table(groups, rows, keys, gap_to)
    (out / "report.md").write_text(
        f"# {len(runs)} runs in {len(groups)} groups (mean [{100 * level:.0f}% t-interval across "
        f"seeds])\n\n{table}\n"
    )
    files.append(out / "report.md")
    if len(groups) > 1:
        files.append(write_csv(contrasts, out / "contrasts.csv", CONTRAST_COLUMNS))
        (out / "contrasts.md").write_text(contrasts_markdown(contrasts, keys, level, gap_to))
        files.append(out / "contrasts.md")
    if controls:
        from eval.controls import COLUMNS

        files.append(write_csv(controls, out / "controls.csv", COLUMNS))
        (out / "controls.md").write_text(controls_markdown(controls, gap_to, level))
        files.append(out / "controls.md")
        figure = plot_controls(groups, controls, out / "controls.png", gap_to, level=level)
        if figure is not None:
            files.append(figure)
    if len(groups) > 1:
        files.append(plot_tradeoff(groups, rows, out / "tradeoff.png", level))
    maps = plot_cosine_maps(groups, out / "cosine_maps.png")
    if maps is not None:
        files.append(maps)
    profile = plot_equivariance(groups, rows, out / "equivariance.png", level)
    if profile is not None:
        files.append(profile)
    windows = [
        r["metric"].split("/")[1]
        for r in rows
        if r["transform"] == DATA and r["metric"].startswith("homogeneity/")
    ]
    if windows:
        # At each model's own pooling window where every group recorded one (the window that
        # bounds its first pooling layer); else at the smallest window measured.
        own = all(pooling_window(g) is not None for g in groups)
        window = None if own else min(windows, key=int)
        files.append(plot_homogeneity(groups, rows, window, out / "homogeneity.png", level))
        if own and any(r["metric"].startswith("homogeneity_input/") for r in rows):
            files.append(
                plot_homogeneity(
                    groups, rows, None, out / "homogeneity_input.png", level, "homogeneity_input"
                )
            )
    for key in list(by) or keys[:1]:
        reference = base if key == contrast_key and base is not None else key_values(groups, key)[0]
        by_figure = plot_by(
            groups,
            rows,
            key,
            keys,
            out / f"by_{key.replace('.', '_')}.png",
            _marks(contrasts, key, reference),
            f"resolved vs {short_label({key: reference})} (Holm)",
            level,
        )
        if by_figure is not None:
            files.append(by_figure)
        for within, stem in ((False, "typicality"), (True, "typicality_within")):
            typ = plot_typicality(
                groups, key, out / f"{stem}_by_{key.replace('.', '_')}.png", level, within
            )
            if typ is not None:
                files.append(typ)
    return {
        "groups": groups,
        "keys": keys,
        "rows": rows,
        "files": files,
        "table": table,
        "contrasts": contrasts,
        "controls": controls,
    }
