"""Segments: per-segment evaluation, Holm across segments, Cochran's Q heterogeneity with BH,
and the stepwise flagging of the segments whose effect differs (strata.stats.segments).

The Monte-Carlo checks (slow-marked) evaluate 50,000 simulated A/A experiments per segment family
in one vectorised call each, with fixed seeds; the bound is alpha ± 0.003 (about 3 standard
errors of a rate of 0.05 over 50,000 runs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from strata.metrics import Cap, Metric
from strata.stats.aggregate import aggregate_arrays
from strata.stats.errors import AggregateError
from strata.stats.models import ExperimentDesign, VariantDesign
from strata.stats.multiple import holm
from strata.stats.segments import (
    cochran_q,
    deviation_from_rest,
    evaluate_segments,
    flag_segments,
    log_ratio,
    settle_families,
)

ALPHA = 0.05
MEAN = ("count(user.unit.invite)", "count(user.global.exposure)")


def design(exp_id: str = "e", metrics=None) -> ExperimentDesign:
    metrics = metrics or (Metric("m", "invites", *MEAN, "primary"),)
    return ExperimentDesign(
        exp_id,
        (VariantDesign(1, "control", True, 1.0), VariantDesign(2, "treatment", False, 1.0)),
        tuple(metrics),
    )


def segment_goals(rng, exp_ids, segments, n, base, lift, dimension="country"):
    """Per-unit Poisson invites for each experiment × segment; ``base[s]`` the control mean,
    ``lift[s]`` the treatment's multiplier, ``n[s]`` units per arm."""
    frames = []
    for s, seg in enumerate(segments):
        mu = np.array([base[s], base[s] * lift[s]])
        counts = rng.poisson(mu[None, :, None], (len(exp_ids), 2, n[s])).astype(float)
        g, _ = aggregate_arrays(exp_ids, [["1", "2"]] * len(exp_ids), "user",
                                {"invite": (counts, counts)})  # fmt: skip
        frames.append(g.assign(dimension=dimension, segment=seg))
    goals = pd.concat(frames, ignore_index=True)
    goals["exp_variant_id"] = goals["exp_variant_id"].astype(int)
    return goals


# --- pure functions ----------------------------------------------------------------------------


def test_cochran_q_by_hand():
    effect = np.array([[0.1, 0.3, np.nan], [0.2, np.nan, np.nan]])
    se = np.array([[0.1, 0.2, 0.1], [0.1, 0.1, 0.1]])
    q, df, p = cochran_q(effect, se)
    w = np.array([100.0, 25.0])
    pooled = (w * [0.1, 0.3]).sum() / w.sum()
    expected = (w * (np.array([0.1, 0.3]) - pooled) ** 2).sum()
    assert q[0] == pytest.approx(expected)
    assert df[0] == 1
    assert p[0] == pytest.approx(stats.chi2.sf(expected, 1))
    assert np.isnan(q[1])
    assert np.isnan(p[1])


def test_deviation_from_rest_and_log_ratio():
    diff, z, _ = deviation_from_rest(np.array([[0.0, 0.2]]), np.array([[0.1, 0.1]]))
    assert diff[0].tolist() == pytest.approx([-0.2, 0.2])
    assert z[0, 1] == pytest.approx(0.2 / np.sqrt(0.02))
    lr, se = log_ratio(np.array([1.1, 0.0]), np.array([1.0, 1.0]), np.array([0.01, 0.01]),
                       np.array([0.01, 0.01]))  # fmt: skip
    assert lr[0] == pytest.approx(np.log(1.1))
    assert se[0] == pytest.approx(np.sqrt(0.01 / 1.21 + 0.01))
    assert np.isnan(lr[1])
    assert np.isnan(se[1])


def test_flag_segments_sets_aside_the_outlier_only():
    se = np.full((3, 5), 0.05)
    effect = np.array([
        [0.0, 0.02, 0.4, -0.01, np.nan],  # one outlier (four segments)
        [0.0, 0.02, 0.4, 0.41, -0.01],    # two segments apart from three
        [0.0, 0.01, 0.02, -0.01, 0.0],    # homogeneous: its test did not pass, nothing flagged
    ])  # fmt: skip
    got = flag_segments(effect, se, np.array([True, True, False]), ALPHA)
    assert got.tolist() == [
        [False, False, True, False, False],
        [False, False, True, True, False],
        [False, False, False, False, False],
    ]


def test_flag_segments_of_two_flags_the_one_further_from_the_pooled_effect():
    got = flag_segments(np.array([[0.0, 0.5]]), np.array([[0.02, 0.1]]), np.array([True]), ALPHA)
    assert got.tolist() == [[False, True]]  # the small, noisy segment moved, not the big one


# --- evaluate_segments -------------------------------------------------------------------------


def test_planted_segment_effect_is_flagged_and_nothing_else():
    rng = np.random.default_rng(3)
    countries = ["US", "GB", "DE", "FR"]
    goals = pd.concat([
        segment_goals(rng, ["e"], countries, [3000] * 4, [0.25] * 4, [1, 1, 1.5, 1]),
        segment_goals(rng, ["e"], ["ios", "web"], [6000] * 2, [0.25] * 2, [1.125] * 2,
                      dimension="platform"),
    ], ignore_index=True)  # fmt: skip
    ev = evaluate_segments(goals, [design()])
    het = ev.heterogeneity.set_index("dimension")
    assert bool(het.loc["country", "heterogeneous"])
    assert het.loc["country", "df"] == 3
    assert het.loc["country", "flagged_segments"] == "DE"
    assert not het.loc["platform", "heterogeneous"]
    assert het.loc["platform", "flagged_segments"] == ""
    assert ev.flagged()[["dimension", "segment", "variant"]].values.tolist() == [
        ["country", "DE", "2"]
    ]
    treat = ev.segments[~ev.segments["is_control"]].set_index("segment")
    # the segment's p-values are Holm-adjusted across the dimension's segments
    country = treat[treat["dimension"] == "country"]
    assert country["p_value_adjusted"].to_numpy() == pytest.approx(
        holm(country["p_value"].to_numpy()[None, :])[0]
    )
    # the relative interval agrees with the adjusted decision
    sig = country["decision"] == "win"
    assert (country.loc[sig, "rel_lower"] > 0).all()
    assert ((country.loc[~sig, "rel_lower"] <= 0) & (country.loc[~sig, "rel_upper"] >= 0)).all()
    assert sig.to_dict() == {"DE": True, "FR": False, "GB": False, "US": False}


def test_a_uniform_lift_over_different_baselines_is_not_heterogeneity():
    """The same relative lift in segments whose baselines differ 4x: absolute effects differ a
    lot, log ratios do not, so Q (on the log scale) finds nothing."""
    rng = np.random.default_rng(4)
    goals = segment_goals(rng, ["e"], ["new", "returning"], [20000, 20000], [0.2, 0.8],
                          [1.15, 1.15], dimension="visitor")  # fmt: skip
    ev = evaluate_segments(goals, [design()])
    treat = ev.segments[~ev.segments["is_control"]]
    assert (treat["decision"] == "win").all()
    abs_diff = treat["abs_diff"].to_numpy()
    assert abs_diff.max() > 2.5 * abs_diff.min()
    assert not ev.heterogeneity["heterogeneous"].any()
    assert not ev.segments["flagged"].any()


# --- the night's family: BH across every experiment's heterogeneity tests ------------------------


def night_rows(p_values: dict[str, list[float]], flags: dict[tuple[str, int], str]):
    """Results rows of one night: per experiment, one heterogeneity test per metric with raw
    ``p_values[exp][i]`` (NaN: not testable), adjusted per experiment (what the evaluation
    writes), and one ``segment_deviation`` row (segment DE) with the decision ``flags`` gives."""
    from strata.stats.multiple import benjamini_hochberg

    rows = []
    for exp, ps in p_values.items():
        adj = benjamini_hochberg(np.array([ps], float))[0]
        for i, (p, a) in enumerate(zip(ps, adj, strict=True)):
            key = {"experiment_id": exp, "analysis_date": "2026-11-14", "window": "cumulative",
                   "metric_id": f"m{i}", "variant": "2", "dimension": "country"}  # fmt: skip
            het = "heterogeneous" if a <= ALPHA else "homogeneous"
            het = "not_testable" if np.isnan(p) else het
            rows.append(key | {"statistic": "heterogeneity", "segment": "", "p_value": p,
                               "p_value_adjusted": a, "decision": het})  # fmt: skip
            rows.append(key | {"statistic": "segment_deviation", "segment": "DE", "p_value": 0.001,
                               "p_value_adjusted": np.nan,
                               "decision": flags.get((exp, i))})  # fmt: skip
            rows.append(key | {"statistic": "segment_rel_diff", "segment": "DE", "p_value": 0.2,
                               "p_value_adjusted": 0.4, "decision": "inconclusive"})  # fmt: skip
    return pd.DataFrame(rows)


def test_settle_families_adjusts_across_the_night_not_per_experiment():
    """Experiment a: one test, p 0.03, heterogeneous on its own (BH over 1 test) and its DE
    flagged. Across the night (a's test among b's four testable ones) BH gives 0.03 * 5 / 2 =
    0.075: homogeneous, the flag becomes a candidate. b's p 0.004: 0.004 * 5 = 0.02, still
    heterogeneous; b's untestable fifth takes no part."""
    rows = night_rows(
        {"a": [0.03], "b": [0.004, 0.2, 0.5, 0.9, np.nan]},
        {("a", 0): "flagged", ("b", 0): "flagged"},
    )
    out = settle_families(rows, ALPHA)
    het = out[out["statistic"] == "heterogeneity"].set_index(["experiment_id", "metric_id"])
    assert het.loc[("a", "m0"), "p_value_adjusted"] == pytest.approx(0.075)  # 0.03 * 5 / 2
    assert het.loc[("b", "m0"), "p_value_adjusted"] == pytest.approx(0.02)  # 0.004 * 5 / 1
    assert np.isnan(het.loc[("b", "m4"), "p_value_adjusted"])  # not testable: not in the family
    assert het["decision"].tolist() == [
        "homogeneous", "heterogeneous", "homogeneous", "homogeneous", "homogeneous",
        "not_testable",
    ]  # fmt: skip
    dev = out[out["statistic"] == "segment_deviation"].set_index(["experiment_id", "metric_id"])
    assert dev.loc[("a", "m0"), "decision"] == "candidate"
    assert dev.loc[("b", "m0"), "decision"] == "flagged"
    assert dev["decision"].isna().sum() == 4
    # the other rows are untouched, and settling again changes nothing
    other = out["statistic"] == "segment_rel_diff"
    pd.testing.assert_frame_equal(out[other], rows[other])
    pd.testing.assert_frame_equal(settle_families(out, ALPHA), out)


def test_settle_families_can_flag_a_candidate_the_wider_family_lets_survive():
    """BH is not monotone in the family: a's p 0.03 among 2 tests is 0.06 on its own, but among
    b's small p-values the night adjusts it to 0.03 * 5 / 5 = 0.03: its candidate is flagged."""
    rows = night_rows({"a": [0.03, 0.9], "b": [0.001, 0.002, 0.003]}, {("a", 0): "candidate"})
    before = rows[rows["statistic"] == "heterogeneity"].set_index(["experiment_id", "metric_id"])
    assert before.loc[("a", "m0"), "decision"] == "homogeneous"
    out = settle_families(rows, ALPHA)
    het = out[out["statistic"] == "heterogeneity"].set_index(["experiment_id", "metric_id"])
    assert het.loc[("a", "m0"), "p_value_adjusted"] == pytest.approx(0.0375)  # 0.03 * 5 / 4
    assert het.loc[("a", "m0"), "decision"] == "heterogeneous"
    dev = out[out["statistic"] == "segment_deviation"].set_index(["experiment_id", "metric_id"])
    assert dev.loc[("a", "m0"), "decision"] == "flagged"


def test_settle_families_names_missing_columns():
    with pytest.raises(AggregateError, match="dimension"):
        settle_families(night_rows({"a": [0.01]}, {}).drop(columns=["dimension"]), ALPHA)


def test_one_experiments_night_is_its_own_evaluation():
    """Settling the rows of a single experiment reproduces its evaluation exactly: the candidates
    are the flags the evaluation would give at any family size, and one experiment's night is
    its own family. A second experiment with many p-values near zero widens the family."""
    from datetime import date

    from strata.stats.results import segment_results_frame

    rng = np.random.default_rng(3)
    countries = ["US", "GB", "DE", "FR"]
    goals = segment_goals(rng, ["e"], countries, [3000] * 4, [0.25] * 4, [1, 1, 1.5, 1])
    ev = evaluate_segments(goals, [design()], analysis_date=date(2026, 11, 14))
    rows = segment_results_frame(ev, "run", {})
    dev = rows[rows["statistic"] == "segment_deviation"]
    assert dev["decision"].tolist().count("flagged") == 1
    settled = settle_families(rows, ALPHA)
    pd.testing.assert_frame_equal(settled, rows)


def test_small_segments_stay_out_of_the_heterogeneity_test():
    rng = np.random.default_rng(5)
    goals = segment_goals(rng, ["e"], ["US", "GB", "unknown"], [2000, 2000, 10], [0.3] * 3,
                          [1, 1, 5])  # fmt: skip
    ev = evaluate_segments(goals, [design()], min_units=50)
    assert ev.heterogeneity["segments"].tolist() == [2]
    assert not ev.segments["flagged"].any()


def test_metrics_with_dimension_filters_are_not_segmented_and_bad_input_is_named():
    rng = np.random.default_rng(6)
    goals = segment_goals(rng, ["e"], ["US", "GB"], [100, 100], [0.3, 0.3], [1, 1])
    filtered = Metric("ios", "ios invites", "count(user.unit.invite(platform=ios))", MEAN[1])
    ev = evaluate_segments(goals, [design(metrics=[Metric("m", "i", *MEAN), filtered])])
    assert set(ev.segments["metric_id"]) == {"m"}
    with pytest.raises(AggregateError, match=r"missing columns \['segment'\]"):
        evaluate_segments(goals.drop(columns=["segment"]), [design()])
    empty = evaluate_segments(goals.assign(exp_id="other"), [design()])
    assert empty.segments.empty
    assert empty.heterogeneity.empty


def test_capped_metrics_are_segmented_with_the_experiments_pooled_cap():
    """A capped metric yields segment rows from the segment aggregates' capped sums, capped at
    the experiment's cap (both variants and every segment pooled), so a dimension's segments add
    up to the experiment's capped sums; the evaluated segment means are the capped means."""
    rng = np.random.default_rng(7)
    segments, n = ["US", "GB", "DE"], [120, 80, 100]
    values = [rng.lognormal(1.0, 1.2, (2, k)) * (rng.random((2, k)) < 0.4) for k in n]
    pooled = np.concatenate([v.ravel() for v in values])
    cap = float(np.percentile(pooled[pooled > 0], 90))  # exact, linear (as dbt's percentile)
    frames = []
    for seg, v in zip(segments, values, strict=True):
        counts = (v > 0).astype(float)
        g, _ = aggregate_arrays(["e"], [["1", "2"]], "user", {"purchase": (counts[None], v[None])})
        capped = np.minimum(v, cap) * (v > 0)
        rows = g["goal"] == "purchase"
        g["value_cap"] = np.where(rows, cap, np.nan)
        g.loc[rows, "sum_value_capped"] = capped.sum(axis=1)
        g.loc[rows, "sum_sqr_value_capped"] = (capped**2).sum(axis=1)
        frames.append(g.assign(dimension="country", segment=seg))
    goals = pd.concat(frames, ignore_index=True)
    goals["exp_variant_id"] = goals["exp_variant_id"].astype(int)
    revenue = ("value(user.unit.purchase)", MEAN[1])
    capped_metric = Metric("rev_capped", "revenue, capped", *revenue,
                           cap=Cap.from_json({"percentile": 0.9}))  # fmt: skip
    metrics = [Metric("rev", "revenue", *revenue), capped_metric]
    ev = evaluate_segments(goals, [design(metrics=metrics)])
    rows = ev.segments.set_index(["metric_id", "segment", "variant"])
    for seg, v in zip(segments, values, strict=True):
        for j, variant in enumerate(("1", "2")):
            assert rows.loc[("rev_capped", seg, variant), "mean"] == pytest.approx(
                np.minimum(v[j], cap).mean()
            )
            assert rows.loc[("rev", seg, variant), "mean"] == pytest.approx(v[j].mean())
    assert np.isfinite(rows.loc[("rev_capped", "US", "2"), "p_value"])  # tested, not skipped
    assert set(ev.heterogeneity["metric_id"]) == {"rev", "rev_capped"}
    # the segments' capped sums add up to the experiment's (one pooled cap, not one per segment)
    whole = np.concatenate(values, axis=1)
    summed = goals[goals["goal"] == "purchase"].groupby("exp_variant_id")["sum_value_capped"]
    assert summed.sum().to_numpy() == pytest.approx(np.minimum(whole, cap).sum(axis=1))
    # segment aggregates from before the capping columns: capped metrics are left out
    old = goals.drop(columns=["value_cap", "sum_value_capped", "sum_sqr_value_capped"])
    ev = evaluate_segments(old, [design(metrics=metrics)])
    assert set(ev.segments["metric_id"]) == {"rev"}


def test_bh_runs_across_the_heterogeneity_tests_of_an_experiment():
    rng = np.random.default_rng(7)
    goals = pd.concat([
        segment_goals(rng, ["e"], ["a", "b"], [3000, 3000], [0.3, 0.3], [1, 1.4], dimension=d)
        for d in ("d1", "d2", "d3")
    ], ignore_index=True)  # fmt: skip
    het = evaluate_segments(goals, [design()]).heterogeneity
    from strata.stats.multiple import benjamini_hochberg

    assert het["p_value_adjusted"].to_numpy() == pytest.approx(
        benjamini_hochberg(het["p_value"].to_numpy()[None, :])[0]
    )


# --- Monte Carlo: A/A per segment family -------------------------------------------------------

#: Per family: control means per segment (invites per user, Poisson) and segment sizes (shares).
FAMILIES = {
    "visitor (2)": ([3.0, 2.0], [60, 40]),
    "platform (3)": ([3.0, 2.5, 2.0], [45, 40, 15]),
    "country (8)": ([3.0, 2.5, 2.5, 2.0, 3.0, 2.0, 2.5, 2.0], [4, 2, 2, 1, 2, 1, 1, 1]),
}


@pytest.mark.slow  # 1.5-5 min each on a shared 2-core machine: 50,000 A/A runs per family
@pytest.mark.parametrize("family", list(FAMILIES), ids=list(FAMILIES))
def test_aa_false_positive_rate_per_segment_family(family):
    """50,000 A/A experiments, each split into the family's segments (different baselines and
    sizes). Per family: the heterogeneity test rejects at rate alpha; Holm across the segments
    keeps the chance of any significant segment at alpha (at most; Holm's first step is
    1 - (1 - alpha/k)^k under independence); a segment is flagged at most at rate alpha."""
    base, weights = FAMILIES[family]
    weights = np.asarray(weights, float)
    n = np.maximum((300 * weights / weights.sum() * len(weights)).astype(int), 150)
    runs, chunk = 50_000, 5_000
    rng = np.random.default_rng(20261203 + len(base))
    het_reject = any_segment = any_flag = 0
    for start in range(0, runs, chunk):
        ids = [f"aa{start + i}" for i in range(chunk)]
        goals = segment_goals(rng, ids, [f"s{j}" for j in range(len(base))], n, base,
                              [1.0] * len(base))  # fmt: skip
        ev = evaluate_segments(goals, [design(i) for i in ids], min_units=50)
        het = ev.heterogeneity
        assert len(het) == chunk
        assert (het["df"] == len(base) - 1).all()
        het_reject += int((het["p_value"] <= ALPHA).sum())
        treat = ev.segments[~ev.segments["is_control"]]
        any_segment += int(treat.groupby("exp_id")["significant"].any().sum())
        any_flag += int(treat.groupby("exp_id")["flagged"].any().sum())
    het_rate, seg_rate, flag_rate = het_reject / runs, any_segment / runs, any_flag / runs
    print(f"{family}: heterogeneity {het_rate:.4f}, any segment {seg_rate:.4f}, "
          f"flagged {flag_rate:.4f}")  # fmt: skip
    assert abs(het_rate - ALPHA) <= 0.003
    assert abs(seg_rate - ALPHA) <= 0.003
    assert flag_rate <= ALPHA + 0.003


@pytest.mark.slow
def test_uniform_lift_rarely_reads_as_heterogeneity():
    """A real +15% lift in every segment, baselines 0.2 / 0.8: Q on the log scale rejects at rate
    alpha (on the absolute scale it would reject most of the time)."""
    runs = 20_000
    rng = np.random.default_rng(11)
    ids = [f"u{i}" for i in range(runs)]
    goals = segment_goals(rng, ids, ["new", "returning"], [400, 400], [0.2, 0.8], [1.15, 1.15],
                          dimension="visitor")  # fmt: skip
    het = evaluate_segments(goals, [design(i) for i in ids]).heterogeneity
    rate = float((het["p_value"] <= ALPHA).mean())
    assert abs(rate - ALPHA) <= 3.5 * np.sqrt(ALPHA * (1 - ALPHA) / runs)
