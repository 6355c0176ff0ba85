"""Agreement with ep-stats (avast/ep-stats 2.5.10, a test dependency) where ep-stats is right, and
the documented cases where it is not.

ep-stats reports the relative difference, its delta-method standard error, the half-width of its
confidence interval and a truncated Welch df; Strata reports the same quantities (``rel_diff``,
``rel_se``, ``rel_upper_delta - rel_diff``, ``df``; the displayed relative interval is
Fieller's, which agrees with the decision) next to the absolute ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from epstats.toolkit import Experiment as EpExperiment
from epstats.toolkit import Metric as EpMetric
from epstats.toolkit import SrmCheck
from epstats.toolkit.parser import Parser
from epstats.toolkit.statistics import Statistics
from scipy import stats

from strata.metrics import parse_linear
from strata.stats import ExpressionError, evaluate
from strata.stats.aggregate import aggregate_arrays

METRICS = [
    ("clicks per user", "count(user.unit.click)", "count(user.global.exposure)"),
    ("revenue per user", "value(user.unit.buy)", "count(user.global.exposure)"),
    ("conversion", "unique(user.unit.buy)", "count(user.global.exposure)"),
    ("revenue per mille", "value(user.unit.buy) * 1000", "count(user.global.exposure)"),
]


def goals_for(seed: int, n: int = 800):
    rng = np.random.default_rng(seed)
    shape = (1, 2, n)
    clicks = rng.poisson(np.array([1.0, 1.1])[None, :, None], shape).astype(float)
    buys = rng.binomial(1, 0.1, shape) * rng.poisson(1.2, shape).astype(float)
    revenue = buys * rng.gamma(2.0, 20.0, shape)
    goals, _ = aggregate_arrays(
        ["e1"], [["1", "2"]], "user", {"click": (clicks, clicks), "buy": (buys, revenue)}
    )
    return goals


def strata_design():
    return {
        "experiment_id": "e1",
        "variants": [{"vid": 1, "is_control": True, "weight": 1}, {"vid": 2, "weight": 1}],
        "metrics": [
            {"id": i, "name": name, "nominator": nom, "denominator": den}
            for i, (name, nom, den) in enumerate(METRICS, 1)
        ],
    }


def epstats_eval(goals: pd.DataFrame):
    exp = EpExperiment(
        "e1",
        "1",
        [EpMetric(i, name, nom, den) for i, (name, nom, den) in enumerate(METRICS, 1)],
        [SrmCheck(1, "SRM", "count(user.global.exposure)")],
        unit_type="user",
    )
    return exp.evaluate_agg(goals)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agrees_with_epstats_on_means_and_relative_differences(seed):
    goals = goals_for(seed)
    ours = evaluate(goals, [strata_design()]).metrics
    ours = ours.assign(metric_id=ours["metric_id"].astype(int)).set_index(["metric_id", "variant"])
    ep = epstats_eval(goals).metrics.set_index(["metric_id", "exp_variant_id"])
    for (metric, variant), row in ep.iterrows():
        mine = ours.loc[(metric, variant)]
        assert mine["count"] == pytest.approx(row["count"], rel=1e-12)
        assert mine["mean"] == pytest.approx(row["mean"], rel=1e-12)
        assert mine["std"] == pytest.approx(row["std"], rel=1e-9)
        if variant == "1":
            continue
        assert mine["rel_diff"] == pytest.approx(row["diff"], rel=1e-9)
        assert mine["rel_se"] == pytest.approx(row["standard_error"], rel=1e-9)
        assert np.floor(mine["df"]) == row["degrees_of_freedom"]
        # ep-stats truncates the df before taking the t quantile: equal to ~1e-5
        half_width = mine["rel_upper_delta"] - mine["rel_diff"]
        assert half_width == pytest.approx(row["confidence_interval"], rel=1e-4)


def test_srm_agrees_with_epstats_for_an_equal_split():
    goals = goals_for(4)
    goals.loc[(goals["goal"] == "exposure") & (goals["exp_variant_id"] == "2"), "count"] = 900
    ours = evaluate(goals, [strata_design()]).srm.iloc[0]
    checks = epstats_eval(goals).checks.set_index("variable_id")["value"]
    assert ours["p_value"] == pytest.approx(checks["p_value"], rel=1e-9)
    assert ours["chi2"] == pytest.approx(checks["test_stat"], rel=1e-9)


def test_epstats_multi_term_variance_is_wrong_where_ours_is_exact():
    """ep-stats takes sum_sqr(a - b) as sum_sqr(a) - sum_sqr(b); with b = a the true per-unit
    variance of (2a - a) is var(a), and ep-stats' differs."""
    rng = np.random.default_rng(5)
    a = rng.poisson(3.0, (1, 2, 500)).astype(float)
    goals, cross = aggregate_arrays(
        ["e1"],
        [["1", "2"]],
        "user",
        {"x": (a, 2 * a), "y": (a, a)},
        [("value(user.unit.x)", "value(user.unit.y)")],
    )
    nom = "value(user.unit.x) - value(user.unit.y)"
    ep = EpExperiment("e1", "1", [EpMetric(1, "m", nom, "count(user.global.exposure)")], [],
                      unit_type="user").evaluate_agg(goals)  # fmt: skip
    design = strata_design() | {
        "metrics": [
            {"id": 1, "name": "m", "nominator": nom, "denominator": "count(user.global.exposure)"}
        ]
    }
    ours = evaluate(goals, [design], cross=cross).metrics.set_index("variant")
    truth = a[0, 0].std(ddof=1)
    assert ours.loc["1", "std"] == pytest.approx(truth, rel=1e-9)
    ep_std = ep.metrics.set_index("exp_variant_id").loc["1", "std"]
    assert abs(ep_std / truth - 1) > 0.5


def test_epstats_sequential_levels_overspend_alpha():
    """ep-stats uses the cumulative spent alpha as each look's nominal level. On Brownian-motion
    paths (the law of cumulative z statistics) that rejects at some look far more than alpha;
    Strata's boundaries (tested in test_sequential.py) spend exactly alpha."""
    looks, paths, alpha = 14, 200_000, 0.05
    rng = np.random.default_rng(6)
    z = np.cumsum(rng.standard_normal((paths, looks)), axis=1) / np.sqrt(np.arange(1, looks + 1))
    levels = np.array(
        [
            1 - Statistics.obf_alpha_spending_function(1 - alpha, looks, k)
            for k in range(1, looks + 1)
        ]
    )
    crit = stats.norm.isf(levels / 2)
    fpr = (np.abs(z) >= crit).any(axis=1).mean()
    assert fpr > alpha + 0.01  # standard error is 0.0005


def test_trailing_garbage_is_ignored_by_epstats_and_refused_by_strata():
    text = "count(user.unit.click) garbage!!"
    assert Parser(text, "count(user.global.exposure)").get_goals_str() == {
        "user.unit.click",
        "user.global.exposure",
    }
    with pytest.raises(ExpressionError, match="trailing 'garbage'"):
        parse_linear(text)
