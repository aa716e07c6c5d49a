"""The claim's own control: does a held-out factor's gap close when the factor is trained on?

"Invariance is learned only near the training set" predicts that the gap of a factor split
(``scale``: smaller objects) to the training distribution shrinks when the training
distribution is widened to include that factor. A study tests it with two arms per factor that
differ in one ``data.placement`` key (``scale: [0.9, 1.1]`` vs ``[0.65, 1.1]``), the same
held-out splits in both, and a fixed ``reference`` split equal to the narrow arm's training
distribution (in the wide arm ``typical`` follows training, so it cannot be the reference).
Per factor this is a 2 x 2 (factor in training: no / yes x split: reference / factor), and the
test is one contrast: **gap with the factor out of training - gap with it in**, paired by seed.
What remains of the gap with the factor in training is the intrinsic part.

The arms are told apart by the reference split: the *out* arm is the one whose training
distribution the reference equals. A factor split is a held-out split that changes exactly
that factor relative to the out arm's training distribution (``invlab.config.changed_factors``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.contrasts import HIGHER, LOWER, NOT_RESOLVED, adjusted_verdict, holm
from eval.study import GAP, TYPICAL, Group
from invlab.config import FACTORS, REFERENCE, ConfigError, as_config, changed_factors
from invlab.figures import (
    DPI,
    PAGE_WIDTH,
    categorical_axis,
    interval_handle,
    legend_outside,
    mean_and_seeds,
    new_figure,
    save_figure,
    seed_handle,
    styled,
    suptitle,
)

# (transform, metric) rows of the Markdown table; controls.csv holds every metric.
HEADLINE = (("translate", "p_change"), ("translate", "accuracy"), ("scale", "p_change"))
COLUMNS = (
    "factor",
    "key",
    "out",
    "in",
    "split",
    "transform",
    "metric",
    "gap_out",
    "gap_in",
    "gap_in_lo",
    "gap_in_hi",
    "out_minus_in",
    "lo",
    "hi",
    "method",
    "seeds",
    "verdict",
    "gap",
    "p",
    "p_holm",
    "verdict_holm",
    "gap_holm",
)
CLOSES, WIDENS = "closes", "widens"


def _flip(verdict: str) -> str:
    """The verdict of -(B - A) from that of B - A."""
    return {HIGHER: LOWER, LOWER: HIGHER}.get(verdict, verdict)


def _reading(verdict: str, gap_out: float | None) -> str:
    """What a resolved out - in means for the gap: it ``closes`` when the factor is trained on
    (out - in has the sign of the gap out of training: its size shrinks) or ``widens``."""
    if verdict == NOT_RESOLVED or gap_out is None or gap_out == 0:
        return NOT_RESOLVED
    return CLOSES if (verdict == HIGHER) == (gap_out > 0) else WIDENS


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _data(group: Group) -> Any:
    """The typed ``data`` section of the group's first run."""
    nested = _unflatten({k: v for k, v in group.runs[0].config.items() if k.startswith("data.")})
    return as_config(nested).data


def factor_of(key: str) -> str | None:
    """The factor a ``data.placement`` key belongs to (``data.placement.scale`` -> ``scale``)."""
    if not key.startswith("data.placement."):
        return None
    leaf = key.rsplit(".", 1)[1]
    return next((name for name, keys in FACTORS.items() if leaf in keys), None)


def _narrow(group: Group) -> bool:
    """Whether the group's training distribution is the reference split's."""
    data = _data(group)
    return REFERENCE in data.heldout and not changed_factors(data, REFERENCE)


def check_gap_to(splits: Sequence[str], gap_to: str) -> None:
    """``--gap-to`` names a held-out split of the runs (ConfigError naming the choices)."""
    if gap_to not in splits:
        from invlab.suggest import did_you_mean

        found = f"Their splits: {', '.join(splits)}." if splits else "They evaluated no split."
        raise ConfigError(
            f"--gap-to {gap_to}: no held-out split of that name in these runs."
            f"{did_you_mean(gap_to, list(splits))} {found}"
        )


def control_rows(
    groups: Sequence[Group],
    rows: list[dict[str, Any]],
    contrasts: list[dict[str, Any]],
    gap_to: str = REFERENCE,
) -> list[dict[str, Any]]:
    """One row per factor arm pair, factor split and metric: the gap (to ``gap_to``) with the
    factor out of training and in it (with its interval: the intrinsic part), and out - in
    with its interval and verdicts (``higher``: the gap closes when the factor is trained on),
    read from the report's gap contrasts, whose Holm family they belong to."""
    if gap_to == TYPICAL:
        return []
    by_label = {g.label: g for g in groups}
    summary = {(r["group"], r["split"], r["transform"], r["metric"]): r for r in rows}
    found = []
    for c in contrasts:
        factor = factor_of(c["key"])
        if c["of"] != GAP or factor is None or c["lo"] is None:
            continue
        a, b = by_label[c["group_a"]], by_label[c["group_b"]]
        narrow_a, narrow_b = _narrow(a), _narrow(b)
        if narrow_a == narrow_b:
            continue  # neither (or both) arms train on the reference distribution
        out, inside = (a, b) if narrow_a else (b, a)
        if changed_factors(_data(out), c["split"]) != [factor]:
            continue
        sign = -1.0 if narrow_a else 1.0  # contrasts are B - A; the control is out - in
        in_row = summary.get((inside.label, c["split"], c["transform"], c["metric"])) or {}
        lo, hi = sorted((sign * c["lo"], sign * c["hi"]))
        found.append(
            {
                "factor": factor,
                "key": c["key"],
                "out": c["a"] if narrow_a else c["b"],
                "in": c["b"] if narrow_a else c["a"],
                "split": c["split"],
                "transform": c["transform"],
                "metric": c["metric"],
                "gap_out": c["mean_a"] if narrow_a else c["mean_b"],
                "gap_in": c["mean_b"] if narrow_a else c["mean_a"],
                "gap_in_lo": in_row.get("gap_lo"),
                "gap_in_hi": in_row.get("gap_hi"),
                "out_minus_in": sign * c["diff"],
                "lo": lo,
                "hi": hi,
                "method": c["method"],
                "seeds": f"{c['n_a']}/{c['n_b']}",
                "verdict": _flip(c["verdict"]) if narrow_a else c["verdict"],
                "p": c["p"],
            }
        )
    # Holm over the factors, per metric: each metric's control is a family of planned tests
    # (one per factor), not one of the report's every pairwise contrast.
    alpha = 0.05
    for metric in {(r["transform"], r["metric"]) for r in found}:
        family = [r for r in found if (r["transform"], r["metric"]) == metric]
        adjusted = holm([math.nan if r["p"] is None else float(r["p"]) for r in family])
        for r, p_holm in zip(family, adjusted, strict=True):
            r["p_holm"] = None if math.isnan(p_holm) else p_holm
            r["verdict_holm"] = adjusted_verdict(p_holm, r["out_minus_in"], alpha)
    for r in found:
        r["gap"] = _reading(r["verdict"], r["gap_out"])
        r["gap_holm"] = _reading(r["verdict_holm"], r["gap_out"])
    return [{k: r[k] for k in COLUMNS} for r in found]


def _fmt(value: float | None, fmt: str = "{:+.3f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def controls_markdown(found: list[dict[str, Any]], gap_to: str, level: float = 0.95) -> str:
    """The headline metrics of :func:`control_rows` as a Markdown table with how to read it."""
    pct = f"{100 * level:.0f}%"
    header = [
        "factor",
        "arms (out -> in)",
        "split",
        "metric",
        f"gap out of training (to {gap_to})",
        f"gap in training [{pct} CI]",
        f"out - in [{pct} CI]",
        "method, seeds",
        "verdict",
        "the gap",
        "p (Holm over factors)",
        "the gap (Holm)",
    ]
    body = []
    for r in found:
        if (r["transform"], r["metric"]) not in HEADLINE:
            continue
        body.append(
            [
                r["factor"],
                f"{r['key']}: {r['out']} -> {r['in']}",
                r["split"],
                f"{r['transform']} {r['metric']}",
                _fmt(r["gap_out"]),
                f"{_fmt(r['gap_in'])} [{_fmt(r['gap_in_lo'])}, {_fmt(r['gap_in_hi'])}]",
                f"{_fmt(r['out_minus_in'])} [{_fmt(r['lo'])}, {_fmt(r['hi'])}]",
                f"{r['method']}, {r['seeds']}",
                r["verdict"],
                r["gap"],
                _fmt(r["p_holm"], "{:.3g}"),
                r["gap_holm"],
            ]
        )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    table = "\n".join([*lines, *("| " + " | ".join(c) + " |" for c in body)])
    notes = (
        f"Each factor's 2 x 2: its split's gap to `{gap_to}` (the narrow training distribution) "
        "when the factor is out of training and when it is in, and out - in with its interval "
        "(paired by seed where the arms share seeds). The gap `closes` where out - in is "
        "resolved with the sign of the gap out of training (its size shrinks when the factor is "
        "trained on), as 'invariance is learned only near the training set' predicts; it "
        "`widens` where resolved the other way. The gap that remains in training is the "
        "intrinsic part. Holm: over the factors, per metric (one planned test per factor)."
    )
    return f"# The factor-in-training control\n\n{notes}\n\n{table}\n"


@styled
def plot_controls(
    groups: Sequence[Group],
    found: list[dict[str, Any]],
    path: Path,
    gap_to: str = REFERENCE,
    metric: tuple[str, str] = ("translate", "p_change"),
    level: float = 0.95,
) -> Path | None:
    """One panel per factor: its split's gap to ``gap_to`` with the factor out of training and
    in it (mean, across-seed t-interval, each seed), the out - in verdict in the panel title.
    None when no control row has ``metric``."""
    from eval.study import _interval_text, seed_values, t_interval

    rows = [r for r in found if (r["transform"], r["metric"]) == metric]
    if not rows:
        return None
    fig = new_figure(PAGE_WIDTH, 2.8, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    plotted: list[Group] = []
    for ax, r in zip(axes, rows, strict=True):
        arms = _arms(groups, r)
        plotted += [g for g in arms if g not in plotted]
        categorical_axis(ax, [f"out\n{r['out']}", f"in\n{r['in']}"], r["key"])
        for x, (group, colour) in enumerate(zip(arms, ("C0", "C1"), strict=True)):
            values = seed_values(group, r["split"], metric[0], metric[1], gap_to)
            stat = t_interval(values, level)
            interval = stat["ci"] if stat["n"] > 1 else None
            mean_and_seeds(ax, float(x), stat["mean"], interval, values, colour)
        ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle=":")
        ax.set_title(
            f"{r['factor']}: out - in {r['out_minus_in']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"
            f"\nthe gap: {r['gap']} (Holm: {r['gap_holm']})",
            fontsize="small",
        )
    name = "P(top-1 change)" if metric[1] == "p_change" else metric[1]
    axes[0].set_ylabel(f"gap to {gap_to}: {name}, {metric[0]}")
    handles = [interval_handle(f"mean ± {100 * level:.0f}% t-interval"), seed_handle()]
    legend_outside(fig, handles)
    suptitle(
        fig,
        f"Does a factor's gap close when the factor is put into training? Each split's gap to "
        f"`{gap_to}` (the narrow training distribution)",
        _interval_text(level, plotted),
        "out - in paired by seed",
    )
    return save_figure(fig, path)


def _arms(groups: Sequence[Group], row: dict[str, Any]) -> tuple[Group, Group]:
    """The (out, in) groups of a control row."""
    from eval.study import _show

    key = row["key"]
    pair = [g for g in groups if _show(g.key.get(key)) in (row["out"], row["in"])]
    out = next(g for g in pair if _show(g.key.get(key)) == row["out"] and _narrow(g))
    inside = next(
        g
        for g in pair
        if _show(g.key.get(key)) == row["in"]
        and all(_show(g.key.get(k)) == _show(out.key.get(k)) for k in out.key if k != key)
    )
    return out, inside
