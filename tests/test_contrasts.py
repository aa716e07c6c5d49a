"""Contrasts between groups of seeds (eval.contrasts) and their table in `invlab report`.

Every expected number is computed by hand: t quantiles from the table (df 2: 4.302653, df 3:
3.182446, df 4: 2.776445, df 5: 2.570582, df 6: 2.446912, df 1: 12.706205) and p-values from
the closed forms of the t distribution with 2 and 4 degrees of freedom.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from eval.contrasts import (
    HIGHER,
    LOWER,
    NOT_RESOLVED,
    PAIRED,
    WELCH,
    adjusted_verdict,
    contrast,
    holm,
    minimal_resolvable_difference,
    paired_difference,
    seeds_needed,
    seeds_to_resolve,
    verdict,
    welch_df,
    welch_difference,
    welch_minimal_resolvable_difference,
    welch_seeds_needed,
)
from eval.study import _marks, write_report
from train.cli import main

T2, T3, T4 = 4.302653, 3.182446, 2.776445  # t_{0.975, df}


def p_df2(t: float) -> float:
    """Two-sided p of a t statistic on 2 df: P(|T| > t) = 1 - t / sqrt(t^2 + 2)."""
    t = abs(t)
    return 1 - t / math.sqrt(t * t + 2)


def p_df4(t: float) -> float:
    """Two-sided p on 4 df: 1 - t (t^2 + 6) / (t^2 + 4)^(3/2)."""
    t = abs(t)
    return 1 - t * (t * t + 6) / (t * t + 4) ** 1.5


def test_closed_forms_agree_with_the_tabulated_quantiles() -> None:
    assert p_df2(T2) == pytest.approx(0.05, abs=1e-6)
    assert p_df4(T4) == pytest.approx(0.05, abs=1e-6)


def test_paired_difference_by_hand() -> None:
    # d = b - a = [1, 2, 2]: mean 5/3, sd sqrt(1/3), se 1/3, df 2, t = 5
    c = paired_difference([1, 2, 3], [2, 4, 5])
    assert c.method == PAIRED and (c.n_a, c.n_b, c.df) == (3, 3, 2)
    assert c.diff == pytest.approx(5 / 3)
    assert c.sd == pytest.approx(math.sqrt(1 / 3)) and c.se == pytest.approx(1 / 3)
    assert c.lo == pytest.approx(5 / 3 - T2 / 3, abs=1e-6)  # 0.232449
    assert c.hi == pytest.approx(5 / 3 + T2 / 3, abs=1e-6)  # 3.100884
    assert c.p == pytest.approx(p_df2(5.0), abs=1e-9)  # 0.037750
    assert c.verdict == HIGHER
    # the other way round: the same interval mirrored
    r = paired_difference([2, 4, 5], [1, 2, 3])
    assert (r.lo, r.hi, r.verdict) == (pytest.approx(-c.hi), pytest.approx(-c.lo), LOWER)
    with pytest.raises(ValueError, match="one per seed"):
        paired_difference([1, 2], [1])


def test_welch_difference_by_hand() -> None:
    # equal n and variances: a = [0, 2], b = [3, 5]: var 2 each, se sqrt(2), df 2, t = 3/sqrt(2)
    c = welch_difference([0, 2], [3, 5])
    assert c.method == WELCH and c.df == pytest.approx(2)
    assert c.diff == pytest.approx(3) and c.se == pytest.approx(math.sqrt(2))
    assert c.lo == pytest.approx(3 - T2 * math.sqrt(2), abs=1e-6)  # -3.084944
    assert c.hi == pytest.approx(3 + T2 * math.sqrt(2), abs=1e-6)
    assert c.p == pytest.approx(p_df2(3 / math.sqrt(2)), abs=1e-9)  # 0.167950
    assert c.verdict == NOT_RESOLVED
    # unequal: a = [1, 2, 3] (var 1), b = [2, 4, 7, 9] (var 29/3): q_a = 1/3, q_b = 29/12,
    # se = sqrt(11/4), df = (11/4)^2 / ((1/3)^2 / 2 + (29/12)^2 / 3) = 3.776879
    u = welch_difference([1, 2, 3], [2, 4, 7, 9])
    assert u.diff == pytest.approx(3.5) and u.se == pytest.approx(math.sqrt(2.75))
    assert u.df == pytest.approx((11 / 4) ** 2 / ((1 / 3) ** 2 / 2 + (29 / 12) ** 2 / 3))
    assert u.df == pytest.approx(3.776879, abs=1e-6)
    assert (u.n_a, u.n_b) == (3, 4)
    # one group without spread: df = n - 1 of the other (a constant: q_a = 0)
    assert welch_df(0.0, 3, 0.01, 3) == pytest.approx(2)
    # fewer than two seeds in a group: no interval, no test
    one = welch_difference([1.0], [2.0, 3.0])
    assert one.diff == pytest.approx(1.5) and math.isnan(one.lo) and math.isnan(one.p)
    assert one.verdict == NOT_RESOLVED


def test_paired_when_the_seeds_match_welch_otherwise() -> None:
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    # the same seeds in another order pair by seed: d = [1, 2, 2]
    assert contrast(a, {2: 5.0, 0: 2.0, 1: 4.0}).diff == pytest.approx(5 / 3)
    assert contrast(a, {2: 5.0, 0: 2.0, 1: 4.0}).method == PAIRED
    other = contrast(a, {0: 2.0, 1: 4.0, 3: 5.0})
    # var 1 and 7/3, n 3 each: q = 1/3 and 7/9, df = (10/9)^2 / ((1/3)^2/2 + (7/9)^2/2) = 100/29
    assert other.method == WELCH and other.df == pytest.approx(100 / 29)
    assert other.se == pytest.approx(math.sqrt(1 / 3 + 7 / 9))
    assert other.diff == pytest.approx(11 / 3 - 2)


def test_verdict_words_at_the_boundary() -> None:
    assert verdict(0.0, 1.0) == NOT_RESOLVED  # touching 0 is not excluding it
    assert verdict(-1.0, 0.0) == NOT_RESOLVED
    assert verdict(0.0, 0.0) == NOT_RESOLVED
    assert verdict(1e-12, 1.0) == HIGHER
    assert verdict(-2.0, -1e-12) == LOWER
    assert verdict(math.nan, math.nan) == NOT_RESOLVED
    # identical per-seed differences: no spread, the interval is the point
    same = paired_difference([1, 2, 3], [2, 3, 4])
    assert (same.lo, same.hi, same.p, same.verdict) == (1.0, 1.0, 0.0, HIGHER)
    # identical groups: no difference and no spread is no test (p NaN)
    nothing = paired_difference([0.99, 0.99, 0.99], [0.99, 0.99, 0.99])
    assert nothing.diff == 0.0 and nothing.verdict == NOT_RESOLVED and math.isnan(nothing.p)
    assert welch_difference([0.99] * 3, [0.99] * 2).diff == 0.0  # exact, no rounding noise
    # an interval that reaches exactly 0: d = [0, 2] -> mean 1, sd sqrt(2), se 1, df 1,
    # half 12.706: not resolved; and with alpha = p exactly the adjusted verdict is not either
    assert paired_difference([0, 0], [0, 2]).verdict == NOT_RESOLVED
    assert adjusted_verdict(0.05, 1.0, 0.05) == NOT_RESOLVED


def test_holm_on_a_known_family() -> None:
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, then monotone
    adjusted = holm([0.01, math.nan, 0.04])  # no test: NaN, not counted in m = 2
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert math.isnan(adjusted[1])
    assert holm([]) == []
    verdicts = [adjusted_verdict(p, d) for p, d in zip([0.03, 0.06, 0.02], [-1, 1, 2], strict=True)]
    assert verdicts == [LOWER, NOT_RESOLVED, HIGHER]
    assert adjusted_verdict(math.nan, 1.0) == NOT_RESOLVED


def test_minimal_resolvable_difference_and_seeds_needed_by_hand() -> None:
    # t_{0.975,2} * 0.1 / sqrt(3) = 0.248414
    assert minimal_resolvable_difference(0.1, 3) == pytest.approx(0.248414, abs=1e-6)
    assert math.isnan(minimal_resolvable_difference(0.1, 1))
    # the paired contrast's half-width is its minimal resolvable difference
    c = paired_difference([1, 2, 3], [2, 4, 5])
    assert c.half == pytest.approx(minimal_resolvable_difference(c.sd, 3))
    # sd 0.1, |d| 0.1: n = 6 gives 2.570582 * 0.1 / sqrt(6) = 0.104944 >= 0.1,
    # n = 7 gives 2.446912 * 0.1 / sqrt(7) = 0.092485 < 0.1
    assert seeds_needed(0.1, 0.1) == 7
    assert seeds_needed(-0.1, 0.1) == 7  # the sign does not matter
    # |d| 0.3: n = 2 gives 12.706205 * 0.1 / sqrt(2) = 0.898 >= 0.3, n = 3 gives 0.248 < 0.3
    assert seeds_needed(0.3, 0.1) == 3
    assert seeds_needed(0.5, 0.0) == 2  # no spread: the fewest seeds that have a spread
    assert seeds_needed(0.0, 0.1) is None  # no difference is ever resolved
    assert seeds_needed(1e-6, 1.0) is None  # beyond MAX_SEEDS
    # the paired example: sd sqrt(1/3), |d| 5/3: n = 2 gives 5.187 >= 5/3, n = 3 gives 1.434
    assert seeds_to_resolve(c) == 3
    # Welch, sd sqrt(2) in each group and n per group: df = 2 (n - 1), half t * sqrt(4 / n).
    # n = 2: 4.302653 * sqrt(2) = 6.085 (the Welch example's half-width);
    # n = 3: 2.776445 * sqrt(4/3) = 3.206 >= 3; n = 4: 2.446912 * 1 = 2.447 < 3
    s = math.sqrt(2)
    assert welch_minimal_resolvable_difference(s, s, 2) == pytest.approx(T2 * s, abs=1e-6)
    assert welch_minimal_resolvable_difference(s, s, 3) == pytest.approx(
        T4 * math.sqrt(4 / 3), abs=1e-6
    )
    assert welch_seeds_needed(3.0, s, s) == 4
    assert seeds_to_resolve(welch_difference([0, 2], [3, 5])) == 4


# --------------------------------------------------------------------------- the report
SHIFT0 = {0: (0.10, 0.30), 1: (0.20, 0.40), 2: (0.30, 0.50)}  # seed: (typical, far) P(change)
SHIFT4 = {0: (0.08, 0.60), 1: (0.17, 0.71), 2: (0.29, 0.79)}  # the same seeds: paired
SHIFT8 = {3: (0.02, 0.90), 4: (0.12, 0.90), 5: (0.22, 0.90)}  # other seeds: Welch


def _stat(mean: float) -> dict:
    return {"mean": mean, "ci": [mean, mean]}


def _run(root: Path, shift: int, seed: int, typ: float, far: float) -> None:
    """A finished run's metrics.json: accuracy 0.9 everywhere, P(change) on two splits."""
    run = root / f"shift{shift}-seed{seed}"
    run.mkdir(parents=True)
    block = lambda p, gap=None: {  # noqa: E731
        "translate": {
            "accuracy": _stat(0.9),
            "p_change": _stat(p),
            **({"gap_to_typical": {"p_change": _stat(gap)}} if gap is not None else {}),
        }
    }
    metrics = {
        "name": run.name,
        "config": {
            "name": run.name,
            "seed": seed,
            "out_dir": str(root),
            "augment": {"max_shift_px": shift},
        },
        "invariance": {"splits": {"typical": block(typ), "far": block(far, far - typ)}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))


def _study(root: Path) -> Path:
    for shift, values in ((0, SHIFT0), (4, SHIFT4), (8, SHIFT8)):
        for seed, (typ, far) in values.items():
            _run(root, shift, seed, typ, far)
    return root


def test_report_contrasts_against_a_baseline_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = _study(tmp_path / "runs")
    out = tmp_path / "rep"
    args = ["report", str(runs), "--out", str(out), "--contrast", "augment.max_shift_px"]
    assert main([*args, "--baseline", "0"]) == 0
    printed = capsys.readouterr().out
    with (out / "contrasts.csv").open() as f:
        rows = {(r["b"], r["split"], r["metric"], r["of"]): r for r in csv.DictReader(f)}
    # 2 pairs (0 -> 4, 0 -> 8) x (typical: accuracy, P(change); far: the same + the gap)
    assert len(rows) == 10 and {r["a"] for r in rows.values()} == {"0"}
    # 0 -> 4, typical, paired: d = [-0.02, -0.03, -0.01]: mean -0.02, sd 0.01, t = -2 sqrt(3)
    r = rows[("4", "typical", "p_change", "value")]
    assert (r["method"], r["n_a"], r["n_b"], r["df"]) == ("paired", "3", "3", "2")
    half = T2 * 0.01 / math.sqrt(3)  # 0.024841
    assert float(r["diff"]) == pytest.approx(-0.02)
    assert float(r["lo"]) == pytest.approx(-0.02 - half, abs=1e-6)
    assert float(r["hi"]) == pytest.approx(-0.02 + half, abs=1e-6)
    assert float(r["mrd"]) == pytest.approx(half, abs=1e-6)
    assert r["verdict"] == "not resolved" and r["seeds_needed"] == "4"  # 3.182446*0.01/2 < 0.02
    assert float(r["mean_a"]) == pytest.approx(0.2) and float(r["mean_b"]) == pytest.approx(0.18)
    # 0 -> 4, far: d = [0.30, 0.31, 0.29]: mean 0.30, sd 0.01, t = 30 sqrt(3)
    f4 = rows[("4", "far", "p_change", "value")]
    assert float(f4["lo"]) == pytest.approx(0.30 - half, abs=1e-6) and f4["verdict"] == "higher"
    # 0 -> 4, far gap: gaps [0.2]*3 vs [0.52, 0.54, 0.50]: d mean 0.32, sd 0.02
    g4 = rows[("4", "far", "p_change", "gap")]
    assert float(g4["diff"]) == pytest.approx(0.32)
    assert float(g4["hi"]) == pytest.approx(0.32 + 2 * half, abs=1e-6)
    # 0 -> 8, typical, Welch: equal variances 0.01 and n 3: se sqrt(0.02 / 3), df 4
    w = rows[("8", "typical", "p_change", "value")]
    se = math.sqrt(0.02 / 3)
    assert (w["method"], w["n_a"], w["n_b"]) == ("welch", "3", "3")
    assert float(w["df"]) == pytest.approx(4)
    assert float(w["diff"]) == pytest.approx(-0.08)
    assert float(w["lo"]) == pytest.approx(-0.08 - T4 * se, abs=1e-6)
    assert w["verdict"] == "not resolved"
    # 0 -> 8, far: 0.9 in every seed (no spread): se sqrt(0.01 / 3), df 2; diff 0.5
    f8 = rows[("8", "far", "p_change", "value")]
    se8 = math.sqrt(0.01 / 3)
    assert float(f8["df"]) == pytest.approx(2)
    assert float(f8["lo"]) == pytest.approx(0.5 - T2 * se8, abs=1e-6)
    # 0 -> 8, far gap: [0.2]*3 vs [0.88, 0.78, 0.68]: diff 0.58, se sqrt(0.01 / 3), df 2
    g8 = rows[("8", "far", "p_change", "gap")]
    assert float(g8["diff"]) == pytest.approx(0.58)
    # accuracy is 0.9 everywhere: no difference, no spread, no test
    acc = rows[("4", "typical", "accuracy", "value")]
    assert acc["p"] == "" and acc["p_holm"] == "" and acc["verdict_holm"] == "not resolved"
    # the p-values by hand and Holm over the family of the 6 tests
    p = {
        "t4": p_df2(0.02 / (0.01 / math.sqrt(3))),  # 0.0742
        "f4": p_df2(0.30 / (0.01 / math.sqrt(3))),  # 0.00037
        "g4": p_df2(0.32 / (0.02 / math.sqrt(3))),  # 0.0013
        "t8": p_df4(0.08 / se),  # 0.383
        "f8": p_df2(0.5 / se8),  # 0.0131
        "g8": p_df2(0.58 / se8),  # 0.0098
    }
    got = {
        "t4": r,
        "f4": f4,
        "g4": g4,
        "t8": w,
        "f8": f8,
        "g8": g8,
    }
    for name, row in got.items():
        assert float(row["p"]) == pytest.approx(p[name], abs=1e-6), name
    # Holm by hand: sorted f4 < g4 < g8 < f8 < t4 < t8, multiplied by 6, 5, 4, 3, 2, 1
    order = sorted(p, key=p.get)
    assert order == ["f4", "g4", "g8", "f8", "t4", "t8"]
    running, expected = 0.0, {}
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (6 - rank) * p[name]))
        expected[name] = running
    assert expected["f8"] == pytest.approx(3 * p["f8"]) and expected["f8"] < 0.05
    for name, row in got.items():
        assert float(row["p_holm"]) == pytest.approx(expected[name], abs=1e-6), name
        assert row["verdict_holm"] == ("higher" if expected[name] < 0.05 else "not resolved")
    assert "10 contrasts (6 tests in the Holm family at alpha 0.05)" in printed
    assert "4 resolved by their 95% interval, 4 after Holm" in printed
    md = (out / "contrasts.md").read_text()
    assert "| augment.max_shift_px: 0 -> 8 | far | translate p_change | +0.5000 [" in md
    assert "| welch | 3/3 | higher |" in md
    # the plot stars the groups resolved from the baseline: far P(change) at 4 and at 8
    result = write_report(
        [runs], tmp_path / "rep2", contrast_key="augment.max_shift_px", baseline="0"
    )
    assert {f.name for f in result["files"]} >= {"contrasts.csv", "contrasts.md"}
    marks = _marks(result["contrasts"], "augment.max_shift_px", 0)
    assert {(m[0], m[1], m[3]) for m in marks} == {
        ("augment.max_shift_px=4", "far", "p_change"),
        ("augment.max_shift_px=8", "far", "p_change"),
    }


def test_report_contrasts_all_pairs_by_default_and_refuses_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = _study(tmp_path / "runs")
    result = write_report([runs], tmp_path / "rep")
    pairs = {(r["a"], r["b"]) for r in result["contrasts"]}
    assert pairs == {("0", "4"), ("0", "8"), ("4", "8")}  # ascending values: B - A
    four_eight = [r for r in result["contrasts"] if (r["a"], r["b"]) == ("4", "8")]
    assert {r["method"] for r in four_eight} == {"welch"}  # seeds 0-2 vs 3-5
    out = str(tmp_path / "bad")
    capsys.readouterr()
    assert main(["report", str(runs), "--out", out, "--contrast", "augment.max_shift"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'augment.max_shift_px'?" in err
    key = ["--contrast", "augment.max_shift_px"]
    assert main(["report", str(runs), "--out", out, *key, "--baseline", "3"]) == 2
    assert "Its values: 0, 4, 8" in capsys.readouterr().err
    assert not Path(out).exists()  # refused before anything was written
