"""One scale per verdict (issue 15): every interval shown agrees with the p-value or decision next
to it; Fieller relative intervals; adjusted intervals; Bonferroni; counts validated.

The decision is the Welch test of the absolute difference (sequential: its repeated p-value at
the look). ``abs_*`` and ``rel_*`` intervals invert that same test, so an interval excludes zero
exactly when its p-value is at most alpha: ``p_value`` for the unadjusted intervals and
``p_value_adjusted`` (the decision) for the ``*_adjusted`` ones, at level ``alpha * p / p_adj``.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from strata.stats import AggregateError, DesignError, EvaluationConfig, evaluate
from strata.stats.aggregate import aggregate_arrays
from strata.stats.engine import fieller_relative
from strata.stats.multiple import bonferroni
from strata.stats.results import results_frame
from strata.stats.sequential import daily_boundary

ALPHA = 0.05
START = date(2026, 1, 1)
VALUE = {"nominator": "value(user.unit.rev)", "denominator": "count(user.global.exposure)"}
RATIO = {"nominator": "value(user.unit.rev)", "denominator": "count(user.unit.view)"}
RATIO_CROSS = [("count(user.unit.view)", "value(user.unit.rev)")]


def record(exp_id, n_variants, metrics, days=10):
    return {
        "experiment_id": exp_id,
        "variants": [
            {"vid": v, "is_control": v == 1, "weight": 1} for v in range(1, n_variants + 1)
        ],
        "metrics": [
            {"id": i, "name": f"m{i}", "role": "primary", "direction": d, **m}
            for i, (m, d) in enumerate(zip(metrics, ["increase", "decrease"] * 2, strict=False), 1)
        ],
        "start_date": START,
        "end_date": START + timedelta(days=days - 1),
    }


def mixed_inputs(seed: int, n_exp: int = 240, n_variants: int = 4):
    """Experiments with 3 to 60 units per arm, effects from none to large, and degenerate arms:
    a constant-zero treatment, a zero-mean control."""
    rng = np.random.default_rng(seed)
    units = 60
    n = rng.integers(3, units + 1, (n_exp, n_variants))
    present = np.arange(units)[None, None, :] < n[:, :, None]
    lift = rng.choice([0.0, 0.0, 0.3, 1.0, 3.0], (n_exp, n_variants))
    lift[:, 0] = 0.0
    base = rng.choice([0.0, 1.0, 5.0], (n_exp, 1, 1), p=[0.1, 0.45, 0.45])
    rev = base + lift[:, :, None] + rng.standard_normal((n_exp, n_variants, units))
    zero_arm = rng.random((n_exp, n_variants)) < 0.05
    rev = np.where(zero_arm[:, :, None], 0.0, rev)
    views = 1.0 + rng.poisson(3.0, rev.shape)
    mask = np.where(present, 1.0, np.nan)
    data = {"rev": (mask, rev * np.nan_to_num(mask)), "view": (views * mask, views)}
    ids = [f"x{i}" for i in range(n_exp)]
    vids = [[str(v) for v in range(1, n_variants + 1)]] * n_exp
    goals, cross = aggregate_arrays(ids, vids, "user", data, RATIO_CROSS)
    exps = [record(i, n_variants, [VALUE, RATIO]) for i in ids]
    return goals, cross, exps


def excludes_zero(lower, upper):
    return (lower > 0) | (upper < 0)


CONFIGS = [
    ("holm", "variants", False),
    ("holm", "metrics", False),
    ("bh", "variants", False),
    ("bonferroni", "metrics", False),
    ("none", "variants", False),
    ("holm", "variants", True),
    ("bonferroni", "variants", True),
    ("none", "metrics", True),
]


@pytest.mark.parametrize(("correction", "scope", "sequential"), CONFIGS)
def test_every_displayed_interval_agrees_with_its_verdict(correction, scope, sequential):
    goals, cross, exps = mixed_inputs(seed=len(correction) * 7 + sequential)
    config = EvaluationConfig(correction=correction, correction_scope=scope, sequential=sequential)
    ev = evaluate(goals, exps, cross=cross, analysis_date=START + timedelta(days=4), config=config)
    res = results_frame(ev, "run", {})
    tested = res[res["statistic"].isin(["abs_diff", "rel_diff"])]
    unadj = res[res["statistic"].isin(["abs_diff_unadjusted", "rel_diff_unadjusted"])]
    assert len(tested) == len(unadj) > 2000
    srm_ok = ~tested["decision"].eq("invalid_srm")
    testable = tested["p_value"].notna()
    # the decision is the adjusted p-value
    sig = tested["p_value_adjusted"] <= ALPHA
    assert (tested["decision"].isin(["win", "loss"]) == (sig & srm_ok)).all()
    for rows, p in ((tested, tested["p_value_adjusted"]), (unadj, unadj["p_value"])):
        shown = rows["lower"].notna() & rows["upper"].notna()
        assert (shown <= rows["p_value"].notna()).all()  # no interval without a test
        ex = excludes_zero(rows["lower"], rows["upper"])
        assert (ex[shown] == (p[shown] <= ALPHA)).all()
        assert ((rows["lower"] <= rows["point"]) & (rows["point"] <= rows["upper"]))[shown].all()
        assert (rows["lower"] < rows["upper"])[shown].all()  # never zero width
    # wins point the metric's way; every tested absolute row has its interval
    direction = np.where(tested["metric_id"] == "1", 1.0, -1.0)
    win = tested["decision"].eq("win").to_numpy()
    assert (tested["point"].to_numpy()[win] * direction[win] > 0).all()
    abs_rows = tested[tested["statistic"] == "abs_diff"]
    assert abs_rows.loc[abs_rows["p_value"].notna(), "lower"].notna().all()
    # the mix exercises what it should: decisions both ways, some relative not estimable
    assert 0.2 < sig[testable].mean() < 0.8
    rel = tested[(tested["statistic"] == "rel_diff") & testable]
    assert 0 < rel["lower"].isna().sum() < 0.5 * len(rel)


def test_fieller_interval_inverts_the_test_on_the_relative_scale():
    rng = np.random.default_rng(3)
    m_t, m_c = rng.normal(5, 1, 2000), rng.normal(5, 1, 2000)
    a_t, a_c = rng.gamma(2, 0.3, 2000), rng.gamma(2, 0.3, 2000)
    crit = np.full(2000, stats.norm.isf(ALPHA / 2))
    lo, hi = fieller_relative(m_t, m_c, a_t, a_c, crit)
    ok = np.isfinite(lo)
    assert ok.mean() > 0.5
    t = np.abs(m_t - m_c) / np.sqrt(a_t + a_c)
    assert (excludes_zero(lo, hi)[ok] == (t[ok] > crit[ok])).all()
    for bound in (lo, hi):  # each bound is where the test statistic equals the critical value
        rho = 1 + bound * np.sign(m_c)
        stat = np.abs(m_t - rho * m_c) / np.sqrt(a_t + rho**2 * a_c)
        assert stat[ok] == pytest.approx(crit[ok], rel=1e-9)
    # a control mean indistinguishable from zero: no finite set, not estimable
    assert not ok[m_c**2 <= crit**2 * a_c].any()


def _two_arm(control, treatment):
    vals = np.full((1, 2, max(len(control), len(treatment))), np.nan)
    vals[0, 0, : len(control)] = control
    vals[0, 1, : len(treatment)] = treatment
    mask = np.where(np.isnan(vals), np.nan, 1.0)
    goals, _ = aggregate_arrays(["e"], [["1", "2"]], "user", {"rev": (mask, vals)})
    return evaluate(goals, [record("e", 2, [VALUE])], config=EvaluationConfig(sequential=False))


def test_zero_mean_treatment_is_not_estimable_not_zero_width():
    ev = _two_arm([1.0, 2.0, 0.5, 1.5, 3.0], [0.0] * 5).metrics
    row = ev[~ev["is_control"]].iloc[0]
    assert row["rel_diff"] == -1.0
    assert np.isnan(row["rel_lower"])
    assert np.isnan(row["rel_upper"])
    assert row["abs_lower"] < row["abs_upper"]  # the absolute interval stays honest
    assert row["rel_upper_delta"] == row["rel_lower_delta"]  # what ep-stats shows: zero width


def test_zero_mean_control_is_not_estimable():
    ev = _two_arm([1.0, -1.0, 0.5, -0.5, 0.0], [2.0, 3.0, 2.5, 3.5, 4.0]).metrics
    row = ev[~ev["is_control"]].iloc[0]
    assert row["decision"] == "win"
    assert np.isnan(row["rel_lower"])
    assert row["abs_lower"] > 0


def test_issue_case_relative_interval_excludes_zero_when_the_test_wins():
    """Few units, a noisy control: the delta-method interval contains zero beside a win; the
    Fieller interval of the same test does not."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        ev = _two_arm(rng.gamma(0.6, 2.0, 6), rng.gamma(0.6, 2.0, 6) + 1.5).metrics
        row = ev[~ev["is_control"]].iloc[0]
        if row["decision"] == "win" and row["rel_lower_delta"] < 0:
            break
    else:
        pytest.fail("no disagreeing delta-method case found")
    assert row["p_value"] <= ALPHA
    assert np.isnan(row["rel_lower"]) or row["rel_lower"] > 0


def test_bonferroni_matches_statsmodels_and_its_intervals_match_the_decision():
    p = np.random.default_rng(5).uniform(0, 0.1, (50, 3))
    expected = np.array([multipletests(r, method="bonferroni")[1] for r in p])
    assert bonferroni(p) == pytest.approx(expected, rel=1e-12)
    goals, cross, exps = mixed_inputs(seed=9, n_exp=30)
    ev = evaluate(goals, exps, cross=cross, config=EvaluationConfig(correction="bonferroni"))
    t = ev.metrics[ev.metrics["p_value"].notna()]
    m = t.groupby(["exp_id", "metric_id"])["p_value"].transform("count")
    assert t["p_value_adjusted"].to_numpy() == pytest.approx(
        np.minimum(1, m * t["p_value"]).to_numpy(), rel=1e-12
    )
    level = ALPHA * t["p_value"] / t["p_value_adjusted"]
    half = stats.t.isf(level / 2, t["df"]) * t["abs_se"]
    assert (t["abs_upper_adjusted"] - t["abs_diff"]).to_numpy() == pytest.approx(half.to_numpy())


def test_sequential_p_value_is_the_repeated_p_value_of_the_look():
    """Large samples (t ≈ z): the sequential p-value is at most alpha exactly when |t| reaches the
    look's Lan–DeMets boundary, and the unadjusted critical value is that boundary."""
    rng = np.random.default_rng(4)
    vals = rng.standard_normal((300, 2, 400)) + np.array([0, 0.1])[None, :, None]
    ids = [f"s{i}" for i in range(300)]
    goals, _ = aggregate_arrays(ids, [["1", "2"]] * 300, "user", {"rev": (vals * 0 + 1, vals)})
    exps = [record(i, 2, [VALUE], days=10) for i in ids]
    out = evaluate(goals, exps, analysis_date=START + timedelta(days=4)).metrics
    t = out[~out["is_control"]]
    c = daily_boundary(5, 10, ALPHA)
    z = stats.norm.isf(stats.t.sf(t["t_stat"].abs(), t["df"]))
    assert ((t["p_value"] <= ALPHA) == (z >= c)).all()
    assert 0 < t["significant"].mean() < 1
    assert stats.norm.isf(stats.t.sf(t["critical_value"], t["df"])) == pytest.approx(c, rel=1e-6)
    assert (t["p_value"] >= t["p_value_fixed"]).all()  # a look costs evidence


def test_bh_is_refused_in_sequential_mode():
    goals, cross, exps = mixed_inputs(seed=1, n_exp=3)
    with pytest.raises(DesignError, match="Benjamini"):
        evaluate(
            goals, exps, cross=cross, analysis_date=START, config=EvaluationConfig(correction="bh")
        )


class TestCounts:
    def goals(self):
        vals = np.ones((1, 2, 10))
        goals, _ = aggregate_arrays(["e"], [["1", "2"]], "user", {"rev": (vals, vals)})
        return goals

    def run(self, goals):
        evaluate(goals, [record("e", 2, [VALUE])])

    @pytest.mark.parametrize("value", [-3, 2.5, np.nan])
    def test_exposures_must_be_non_negative_integers(self, value):
        goals = self.goals()
        goals.loc[goals["goal"].eq("exposure") & goals["exp_variant_id"].eq("2"), "count"] = value
        with pytest.raises(AggregateError, match=r"'e', variant '2', goal 'user.global.exposure'"):
            self.run(goals)

    def test_more_units_with_a_goal_than_exposed_units(self):
        goals = self.goals()
        row = goals["goal"].eq("rev") & goals["exp_variant_id"].eq("1")
        goals.loc[row, ["count", "sum_sqr_count", "count_unique"]] = 12
        with pytest.raises(AggregateError, match=r"variant '1', goal 'user.unit.rev'.*exposed"):
            self.run(goals)

    def test_count_unique_above_count(self):
        goals = self.goals()
        goals.loc[goals["goal"].eq("rev") & goals["exp_variant_id"].eq("2"), "count_unique"] = 11
        with pytest.raises(AggregateError, match="count_unique = 11 exceeds count = 10"):
            self.run(goals)

    def test_valid_counts_pass(self):
        self.run(self.goals())


def test_results_rows_of_an_unadjusted_interval_carry_no_decision():
    goals, cross, exps = mixed_inputs(seed=2, n_exp=5)
    ev = evaluate(goals, exps, cross=cross, analysis_date=START)
    res = results_frame(ev, "run", {})
    un = res[res["statistic"].str.endswith("_unadjusted")]
    assert un["decision"].isna().all()
    assert un["p_value_adjusted"].isna().all()
    assert set(pd.unique(res["statistic"])) >= {"abs_diff", "rel_diff", "rel_diff_unadjusted"}


def test_report_says_not_estimable_instead_of_an_interval():
    from strata.stats.report import render_experiment_report

    goals, cross, exps = mixed_inputs(seed=2, n_exp=40)
    ev = evaluate(goals, exps, cross=cross, analysis_date=START + timedelta(days=3))
    res = results_frame(ev, "run", {})
    rel = res[(res["statistic"] == "rel_diff") & res["p_value"].notna() & res["lower"].isna()]
    html = render_experiment_report(res, rel["experiment_id"].iloc[0])
    assert "not estimable" in html
    assert "CI (adjusted)" in html


@pytest.mark.parametrize(("correction", "scope", "sequential"), [CONFIGS[0], CONFIGS[5]])
def test_every_guardrail_and_recommendation_row_agrees_with_the_rows_shown(
    correction, scope, sequential
):
    """Metric 2 as a guardrail (a margin on every other experiment): each guardrail row shows the
    adjusted relative interval of its rel_diff row and its outcome is the rule on it (without a
    margin: the decision); each recommendation follows the rows it summarises."""
    goals, cross, exps = mixed_inputs(seed=len(correction) * 5 + sequential, n_exp=120)
    for i, e in enumerate(exps):
        e["metrics"][1]["role"] = "guardrail"
        if i % 2:
            e["metrics"][1]["margin"] = 0.1
    config = EvaluationConfig(correction=correction, correction_scope=scope, sequential=sequential)
    ev = evaluate(goals, exps, cross=cross, analysis_date=START + timedelta(days=4), config=config)
    res = results_frame(ev, "run", {})
    key = ["experiment_id", "metric_id", "variant"]
    guard = res[res["statistic"] == "guardrail"].set_index(key)
    rel = res[res["statistic"] == "rel_diff"].set_index(key).loc[guard.index]
    assert len(guard) == 120 * 3
    cols = ["point", "lower", "upper", "p_value", "p_value_adjusted"]
    assert np.allclose(guard[cols], rel[cols], equal_nan=True)
    margin = np.where(guard.index.get_level_values(0).str[1:].astype(int) % 2, 0.1, np.nan)
    harm_lo, harm_hi = guard["lower"], guard["upper"]  # metric 2 decreases: a rise is harm
    expected = np.where(
        np.isnan(margin),
        rel["decision"].map({"loss": "violated", "win": "ok"}).fillna("inconclusive"),
        np.where(harm_lo > margin, "violated", np.where(harm_hi < margin, "ok", "inconclusive")),
    )
    assert (guard["decision"].to_numpy() == expected).all()
    assert set(guard["decision"]) == {"ok", "violated", "inconclusive"}
    top = res[res["statistic"] == "recommendation"].set_index("experiment_id")["decision"]
    assert len(top) == 120
    primary = res[(res["statistic"] == "rel_diff") & (res["metric_id"] == "1")]
    srm_failed = (
        res[res["statistic"] == "srm_chi2"]
        .groupby("experiment_id")["decision"]
        .apply(lambda d: (d == "failed").any())
    )
    for exp_id, decision in top.items():
        p = primary[primary["experiment_id"] == exp_id].set_index("variant")["decision"]
        g = guard.loc[exp_id]["decision"].droplevel(0)
        shippable = (p == "win") & (g.reindex(p.index) != "violated")
        blocked = (p == "loss") | (g.reindex(p.index) == "violated")
        if srm_failed[exp_id]:
            assert decision == "invalid"
        elif shippable.any():
            assert decision == "ship"
        elif blocked.any():
            assert decision == "dont_ship"
        else:
            assert decision == "keep_running"
    assert set(top) == {"invalid", "ship", "dont_ship", "keep_running"}
