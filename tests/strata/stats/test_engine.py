"""Closed-form checks of the engine on small inputs, against independent computations.

References: scipy's Welch t-test on the raw per-unit values, numpy covariances for the delta
method, statsmodels OLS for CUPED (ANCOVA), statsmodels multipletests, scipy's chi-square test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from strata.stats import (
    AggregateError,
    DesignError,
    EvaluationConfig,
    ExpressionError,
    evaluate,
    required_cross_terms,
    verdicts,
)
from strata.stats.aggregate import aggregate_arrays

RNG_SEED = 20261123


def design(metrics, variants=("1", "2"), control="1", weights=None, **extra):
    """An experiments-table record; ``variants`` are vids as the aggregates spell them (text)."""
    weights = weights or [1.0] * len(variants)
    return {
        "experiment_id": extra.pop("experiment_id", "e1"),
        "variants": [
            {"vid": int(v), "name": f"V{v}", "is_control": v == control, "weight": w}
            for v, w in zip(variants, weights, strict=True)
        ],
        "metrics": [
            {"id": i, "name": f"m{i}", "role": "primary", **m} for i, m in enumerate(metrics, 1)
        ],
        **extra,
    }


def units(rng, n_per_variant, n_variants=2):
    """Per-unit clicks, views, revenue and a pre-period covariate for one experiment."""
    shape = (1, n_variants, n_per_variant)
    views = rng.poisson(5.0, shape).astype(float) + 1
    clicks = rng.binomial(views.astype(int), 0.2).astype(float)
    pre = rng.gamma(2.0, 5.0, shape)
    revenue = 0.8 * pre + rng.normal(0, 3.0, shape)
    return {
        "view": (views, views),
        "click": (clicks, clicks * 0.1),
        "rev": (revenue * 0 + 1, revenue),
        "pre": (pre * 0 + 1, pre),
    }


MEAN_METRIC = {"nominator": "count(user.unit.click)", "denominator": "count(user.global.exposure)"}
RATIO_METRIC = {"nominator": "count(user.unit.click)", "denominator": "count(user.unit.view)"}


class TestMeanMetric:
    def test_matches_scipy_welch_on_raw_units(self):
        rng = np.random.default_rng(RNG_SEED)
        data = units(rng, 300)
        data["click"][0][0, 1, :150] += 1  # a real effect in half of variant b
        goals, _ = aggregate_arrays(["e1"], [["1", "2"]], "user", data)
        row = evaluate(goals, [design([MEAN_METRIC])]).metrics.query("variant == '2'").iloc[0]
        a, b = data["click"][0][0, 0], data["click"][0][0, 1]
        ref = stats.ttest_ind(b, a, equal_var=False)
        assert row["mean"] == pytest.approx(b.mean(), rel=1e-12)
        assert row["std"] == pytest.approx(b.std(ddof=1), rel=1e-10)
        assert row["t_stat"] == pytest.approx(ref.statistic, rel=1e-9)
        assert row["df"] == pytest.approx(ref.df, rel=1e-9)
        assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-7)
        ci = ref.confidence_interval(0.95)
        assert (row["abs_lower"], row["abs_upper"]) == pytest.approx((ci.low, ci.high), rel=1e-8)
        # relative difference and its delta-method standard error, by hand
        se_rel = np.sqrt(
            b.var(ddof=1) / b.size + (b.mean() / a.mean()) ** 2 * a.var(ddof=1) / a.size
        )
        assert row["rel_diff"] == pytest.approx(b.mean() / a.mean() - 1, rel=1e-10)
        assert row["rel_se"] == pytest.approx(se_rel / a.mean(), rel=1e-10)

    def test_hand_computed_tiny_example(self):
        # control clicks per user [1, 1, 0, 0], treatment [2, 2, 1, 1]: means 0.5 and 1.5,
        # both variances 1/3, se = sqrt(1/12 + 1/12), t = 1 / se = sqrt(6), df = 6
        goals = pd.DataFrame(
            {
                "exp_id": "e1", "exp_variant_id": ["1", "1", "2", "2"], "unit_type": "user",
                "agg_type": ["global", "unit"] * 2, "goal": ["exposure", "click"] * 2,
                "count": [4, 2, 4, 6], "sum_sqr_count": [4, 2, 4, 10], "sum_value": 0.0,
                "sum_sqr_value": 0.0, "count_unique": [4, 2, 4, 4],
            }
        )  # fmt: skip
        row = evaluate(goals, [design([MEAN_METRIC])]).metrics.query("variant == '2'").iloc[0]
        assert row["abs_diff"] == pytest.approx(1.0)
        assert row["abs_se"] == pytest.approx(np.sqrt(1 / 6))
        assert row["t_stat"] == pytest.approx(np.sqrt(6))
        assert row["df"] == pytest.approx(6.0)
        assert row["rel_diff"] == pytest.approx(2.0)

    def test_multi_term_nominator_uses_cross_products(self):
        # value(rev) - value(pre) per unit: the engine must equal Welch on (rev - pre) per unit;
        # ep-stats computes sum_sqr(rev) - sum_sqr(pre) instead, which is not a sum of squares
        rng = np.random.default_rng(RNG_SEED + 1)
        data = units(rng, 200)
        metric = {
            "nominator": "value(user.unit.rev) - value(user.unit.pre)",
            "denominator": "count(user.global.exposure)",
        }
        pairs = required_cross_terms([design([metric])])
        goals, cross = aggregate_arrays(
            ["e1"], [["1", "2"]], "user", data, list(zip(pairs.term_x, pairs.term_y, strict=True))
        )
        row = evaluate(goals, [design([metric])], cross=cross).metrics.query("variant == '2'")
        diff = data["rev"][1][0] - data["pre"][1][0]
        ref = stats.ttest_ind(diff[1], diff[0], equal_var=False)
        assert row["std"].iloc[0] == pytest.approx(diff[1].std(ddof=1), rel=1e-9)
        assert row["p_value"].iloc[0] == pytest.approx(ref.pvalue, rel=1e-7)


class TestRatioMetric:
    def test_delta_method_matches_numpy_linearisation(self):
        rng = np.random.default_rng(RNG_SEED + 2)
        data = units(rng, 400)
        exp = design([RATIO_METRIC])
        pairs = required_cross_terms([exp])
        assert pairs[["term_x", "term_y"]].values.tolist() == [
            ["count(user.unit.click)", "count(user.unit.view)"]
        ]
        goals, cross = aggregate_arrays(
            ["e1"], [["1", "2"]], "user", data, [tuple(pairs.iloc[0, 1:])]
        )
        out = evaluate(goals, [exp], cross=cross).metrics.set_index("variant")
        var = {}
        for j, vid in enumerate("12"):
            y, x = data["click"][0][0, j], data["view"][0][0, j]
            r = y.sum() / x.sum()
            cov = np.cov(np.vstack([y, x]))  # independent: numpy's covariance of (N, D)
            var[vid] = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / x.mean() ** 2 / y.size
            assert out.loc[vid, "mean"] == pytest.approx(r, rel=1e-12)
        se = np.sqrt(var["1"] + var["2"])
        assert out.loc["2", "abs_se"] == pytest.approx(se, rel=1e-9)
        assert out.loc["2", "kind"] == "ratio"

    def test_missing_cross_product_is_an_error_naming_the_terms(self):
        rng = np.random.default_rng(RNG_SEED + 3)
        goals, _ = aggregate_arrays(["e1"], [["1", "2"]], "user", units(rng, 20))
        with pytest.raises(
            AggregateError, match=r"count\(user.unit.click\).*count\(user.unit.view\)"
        ):
            evaluate(goals, [design([RATIO_METRIC])])


class TestCuped:
    def test_cuped_difference_equals_ancova_coefficient(self):
        rng = np.random.default_rng(RNG_SEED + 4)
        data = units(rng, 500)
        data["rev"][1][0, 1] += 0.7
        metric = {
            "nominator": "value(user.unit.rev)",
            "denominator": "count(user.global.exposure)",
            "covariate": "value(user.unit.pre)",
        }
        exp = design([metric])
        pairs = required_cross_terms([exp])
        goals, cross = aggregate_arrays(
            ["e1"], [["1", "2"]], "user", data, list(zip(pairs.term_x, pairs.term_y, strict=True))
        )
        row = evaluate(goals, [exp], cross=cross).metrics.query("variant == '2'").iloc[0]
        y = data["rev"][1][0].ravel()
        x = data["pre"][1][0].ravel()
        treat = np.repeat([0.0, 1.0], 500)
        ols = sm.OLS(y, sm.add_constant(np.column_stack([treat, x]))).fit()
        assert row["abs_diff"] == pytest.approx(ols.params[1], rel=1e-9)
        # the variance uses per-variant residual variances (Welch-like), close to OLS's pooled one
        assert row["abs_se"] == pytest.approx(ols.bse[1], rel=0.02)
        plain_se = np.sqrt(y[500:].var(ddof=1) / 500 + y[:500].var(ddof=1) / 500)
        assert row["abs_se"] < 0.7 * plain_se  # the covariate explains over half the variance


class TestMultipleVariants:
    @pytest.mark.parametrize("control_position", [0, 1, 3])
    def test_holm_and_bh_wherever_the_control_is(self, control_position):
        rng = np.random.default_rng(RNG_SEED + 5)
        vids = ["10", "11", "12", "13"]
        control = vids[control_position]
        data = units(rng, 150, n_variants=4)
        data["click"][0][0, 2] += rng.binomial(1, 0.5, 150)
        goals, _ = aggregate_arrays(["e1"], [vids], "user", data)
        for method, corr in (("holm", "holm"), ("fdr_bh", "bh")):
            cfg = EvaluationConfig(correction=corr)
            out = evaluate(goals, [design([MEAN_METRIC], vids, control)], config=cfg).metrics
            treat = out[~out["is_control"]].set_index("variant")
            ctrl = data["click"][0][0, control_position]
            raw = [
                stats.ttest_ind(data["click"][0][0, j], ctrl, equal_var=False).pvalue
                for j, v in enumerate(vids) if v != control
            ]  # fmt: skip
            expected = multipletests(raw, method=method)[1]
            names = [v for v in vids if v != control]
            assert treat.loc[names, "p_value"].to_numpy() == pytest.approx(raw, rel=1e-7)
            assert treat.loc[names, "p_value_adjusted"].to_numpy() == pytest.approx(
                expected, rel=1e-7
            )
            assert out.loc[out["is_control"], "decision"].isna().all()

    def test_metric_scope_family_spans_metrics(self):
        rng = np.random.default_rng(RNG_SEED + 6)
        data = units(rng, 100, n_variants=3)
        goals, _ = aggregate_arrays(["e1"], [["1", "2", "3"]], "user", data)
        metrics = [
            MEAN_METRIC,
            {"nominator": "value(user.unit.rev)", "denominator": "count(user.global.exposure)"},
        ]
        cfg = EvaluationConfig(correction_scope="metrics")
        out = evaluate(goals, [design(metrics, ["1", "2", "3"])], config=cfg).metrics
        treat = out[~out["is_control"]]
        expected = multipletests(treat["p_value"].to_numpy(), method="holm")[1]
        assert treat["p_value_adjusted"].to_numpy() == pytest.approx(expected, rel=1e-9)


class TestSrm:
    def test_chi_square_uses_design_weights(self):
        goals = pd.DataFrame(
            {
                "exp_id": "e1", "exp_variant_id": ["1", "2", "3"], "unit_type": "user",
                "agg_type": "global", "goal": "exposure", "count": [5000.0, 2450, 2550],
                "sum_sqr_count": [5000.0, 2450, 2550], "sum_value": 0.0, "sum_sqr_value": 0.0,
                "count_unique": [5000.0, 2450, 2550],
            }
        )  # fmt: skip
        exp = design([MEAN_METRIC], ["1", "2", "3"], weights=[2, 1, 1])
        srm = evaluate(goals, [exp]).srm.iloc[0]
        ref = stats.chisquare([5000, 2450, 2550], f_exp=[5000, 2500, 2500])
        assert srm["chi2"] == pytest.approx(ref.statistic)
        assert srm["p_value"] == pytest.approx(ref.pvalue)
        assert srm["passed"]
        # the same counts against an (assumed) equal split is a glaring mismatch
        equal = evaluate(goals, [design([MEAN_METRIC], ["1", "2", "3"])]).srm.iloc[0]
        assert not equal["passed"]

    def test_srm_failure_overrides_decisions(self):
        rng = np.random.default_rng(RNG_SEED + 7)
        data = units(rng, 400)
        data["click"][0][0, 1] += 3  # a huge effect
        data["click"][0][0, 1, 300:] = np.nan  # but variant b lost a quarter of its units
        for goal in data.values():
            goal[1][0, 1, 300:] = np.nan
        goals, _ = aggregate_arrays(["e1"], [["1", "2"]], "user", data)
        out = evaluate(goals, [design([MEAN_METRIC])])
        assert not out.srm["passed"].iloc[0]
        assert out.metrics.query("variant == '2'")["decision"].iloc[0] == "invalid_srm"


class TestBadInput:
    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ("count(user.unit.click) foo", "trailing 'foo'"),
            ("count(user.unit.click) * count(user.unit.view)", "product of two goal terms"),
            ("sum(user.unit.click)", "unknown function 'sum'"),
            ("count(user.daily.click)", "agg_type must be one of"),
            ("count(user.unit.click", r"unexpected end"),
            ("2 + count(user.unit.click)", "constant added"),
            ("", "empty metric expression"),
        ],
    )
    def test_garbage_expression_is_an_error(self, expression, message):
        with pytest.raises((ExpressionError, DesignError), match=message):
            evaluate(pd.DataFrame(), [design([{**MEAN_METRIC, "nominator": expression}])])

    def test_unknown_variant_in_aggregates(self):
        goals, _ = aggregate_arrays(
            ["e1"], [["1", "99"]], "user", units(np.random.default_rng(1), 5)
        )
        with pytest.raises(AggregateError, match=r"\('e1', '99'\)"):
            evaluate(goals, [design([MEAN_METRIC])])

    def test_duplicate_rows_are_an_error(self):
        goals, _ = aggregate_arrays(
            ["e1"], [["1", "2"]], "user", units(np.random.default_rng(1), 5)
        )
        dup = goals[(goals["goal"] == "click") & (goals["exp_variant_id"] == "2")]
        with pytest.raises(AggregateError, match=r"duplicate rows.*variant 2, .*user\.unit\.click"):
            evaluate(pd.concat([goals, dup]), [design([MEAN_METRIC])])

    def test_design_needs_exactly_one_control(self):
        exp = design([MEAN_METRIC], control="nobody")
        with pytest.raises(DesignError, match="exactly one control"):
            evaluate(pd.DataFrame(), [exp])

    def test_missing_aggregate_column(self):
        goals, _ = aggregate_arrays(
            ["e1"], [["1", "2"]], "user", units(np.random.default_rng(1), 5)
        )
        with pytest.raises(AggregateError, match="sum_sqr_value"):
            evaluate(goals.drop(columns="sum_sqr_value"), [design([MEAN_METRIC])])

    def test_sums_of_squares_that_are_not_per_unit_are_an_error(self):
        goals, _ = aggregate_arrays(
            ["e1"], [["1", "2"]], "user", units(np.random.default_rng(1), 50)
        )
        bad = goals["goal"].eq("click") & goals["exp_variant_id"].eq("2")
        goals.loc[bad, "sum_sqr_count"] = goals.loc[bad, "count"]  # < sum² / n, still >= count
        with pytest.raises(AggregateError, match=r"negative variance.*'e1', variant 2"):
            evaluate(goals, [design([MEAN_METRIC])])

    def test_undropped_date_column_is_an_error_not_a_dimension(self):
        goals, _ = aggregate_arrays(
            ["e1"], [["1", "2"]], "user", units(np.random.default_rng(1), 5)
        )
        with pytest.raises(AggregateError, match="as_of_date"):
            evaluate(goals.assign(as_of_date="2026-01-01"), [design([MEAN_METRIC])])


class TestVerdicts:
    def test_guardrail_and_srm_take_precedence_over_primary_wins(self):
        rng = np.random.default_rng(RNG_SEED + 8)
        data = units(rng, 400, n_variants=3)
        data["click"][0][0, 1:] += 1  # b and c win on the primary metric
        data["rev"][1][0, 2] -= 5  # c loses revenue, a guardrail
        goals, _ = aggregate_arrays(["e1"], [["1", "2", "3"]], "user", data)
        metrics = [MEAN_METRIC, {"nominator": "value(user.unit.rev)", "role": "guardrail",
                                 "denominator": "count(user.global.exposure)"}]  # fmt: skip
        out = evaluate(goals, [design(metrics, ["1", "2", "3"])]).metrics
        assert verdicts(out).set_index("variant")["verdict"].to_dict() == {
            "2": "win",
            "3": "guardrail_breach",
        }
        for goal in data.values():  # variant c loses a quarter of its units: SRM
            goal[0][0, 2, 300:] = np.nan
        goals, _ = aggregate_arrays(["e1"], [["1", "2", "3"]], "user", data)
        out = evaluate(goals, [design(metrics, ["1", "2", "3"])]).metrics
        assert set(verdicts(out)["verdict"]) == {"invalid_srm"}


class TestVectorisation:
    def test_one_call_equals_separate_calls_with_ragged_designs(self):
        rng = np.random.default_rng(RNG_SEED + 9)
        two = aggregate_arrays(["two"], [["1", "2"]], "user", units(rng, 120))[0]
        three = aggregate_arrays(["three"], [["7", "5", "9"]], "user", units(rng, 90, 3))[0]
        d2 = design([MEAN_METRIC], experiment_id="two")
        d3 = design([MEAN_METRIC, {"nominator": "value(user.unit.rev)",
                                   "denominator": "count(user.global.exposure)"}],
                    ["7", "5", "9"], control="5", experiment_id="three")  # fmt: skip
        for cfg in (EvaluationConfig(), EvaluationConfig(correction_scope="metrics")):
            both = evaluate(pd.concat([two, three]), [d2, d3], config=cfg).metrics
            alone = pd.concat(
                [evaluate(two, [d2], config=cfg).metrics, evaluate(three, [d3], config=cfg).metrics]
            )
            key = ["exp_id", "metric_id", "variant"]
            pd.testing.assert_frame_equal(
                both.sort_values(key).reset_index(drop=True),
                alone.sort_values(key).reset_index(drop=True),
            )


class TestDimensions:
    def test_dimension_filter_reads_only_matching_rows(self):
        rows = []
        for vid, (n, ios, android) in {"1": (100, 10, 30), "2": (100, 20, 25)}.items():
            base = {"exp_id": "e1", "exp_variant_id": vid, "unit_type": "user",
                    "sum_value": 0.0, "sum_sqr_value": 0.0}  # fmt: skip
            rows += [
                {**base, "agg_type": "global", "goal": "exposure", "platform": "", "count": n,
                 "sum_sqr_count": n, "count_unique": n},
                {**base, "agg_type": "unit", "goal": "buy", "platform": "ios", "count": ios,
                 "sum_sqr_count": ios, "count_unique": ios},
                {**base, "agg_type": "unit", "goal": "buy", "platform": "android",
                 "count": android, "sum_sqr_count": android, "count_unique": android},
                {**base, "agg_type": "unit", "goal": "buy", "platform": "", "count": ios + android,
                 "sum_sqr_count": ios + android, "count_unique": ios + android},
            ]  # fmt: skip
        goals = pd.DataFrame(rows)
        metrics = [
            {"nominator": "unique(user.unit.buy(platform=ios))",
             "denominator": "count(user.global.exposure)"},
            {"nominator": "unique(user.unit.buy)", "denominator": "count(user.global.exposure)"},
        ]  # fmt: skip
        out = evaluate(goals, [design(metrics)]).metrics.set_index(["metric_id", "variant"])
        assert out.loc[("1", "2"), "mean"] == pytest.approx(0.20)  # ios buyers only
        assert out.loc[("2", "2"), "mean"] == pytest.approx(0.45)  # the all-platform row
        # a 0/1 metric: std is sqrt(p (1 - p) n / (n - 1))
        assert out.loc[("1", "1"), "std"] == pytest.approx(np.sqrt(0.1 * 0.9 * 100 / 99))
