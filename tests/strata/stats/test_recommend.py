"""Guardrail outcomes and the recommendation (issue #15 item 3): every branch and the precedence,
on hand-built metrics frames (the engine's columns), then on the engine's own output."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from strata.stats import DesignError, EvaluationConfig, evaluate, experiment_from_record
from strata.stats.recommend import (
    DONT_SHIP,
    GUARDRAIL_COLUMNS,
    INVALID,
    KEEP_RUNNING,
    RECOMMENDATION_COLUMNS,
    SHIP,
    guardrail_outcome,
    guardrails,
    recommend,
)

NAN = math.nan


def metric(mid, role="primary", decision="inconclusive", effect=0.0, lo=-0.05, hi=0.05, *,
           direction="increase", margin=NAN, minimum_effect=NAN, required=NAN, n=1000.0,
           n_control=1000.0, mde=0.08, variant="2", name="treatment"):  # fmt: skip
    """The control and one treatment row of one metric, in the engine's columns."""
    common = {"exp_id": "e", "metric_id": mid, "metric_name": mid, "role": role,
              "direction": direction, "margin": margin, "minimum_effect": minimum_effect,
              "control": "1"}  # fmt: skip
    control = {**common, "variant": "1", "variant_name": "control", "is_control": True,
               "decision": None, "count": n_control, "rel_diff": NAN, "rel_lower_adjusted": NAN,
               "rel_upper_adjusted": NAN, "p_value": NAN, "p_value_adjusted": NAN, "mde": NAN,
               "required_sample_size": NAN}  # fmt: skip
    p = 0.001 if decision in ("win", "loss") else 0.5
    treat = {**common, "variant": variant, "variant_name": name, "is_control": False,
             "decision": decision, "count": n, "rel_diff": effect, "rel_lower_adjusted": lo,
             "rel_upper_adjusted": hi, "p_value": p, "p_value_adjusted": p, "mde": mde,
             "required_sample_size": required}  # fmt: skip
    return [control, treat]


def frame(*metrics) -> pd.DataFrame:
    rows = [r for m in metrics for r in m]
    return pd.DataFrame(rows).drop_duplicates(["exp_id", "metric_id", "variant"])


WIN = metric("conversion", decision="win", effect=0.041, lo=0.020, hi=0.062)
LOSS = metric("conversion", decision="loss", effect=-0.03, lo=-0.05, hi=-0.01)
FLAT = metric("conversion", effect=0.002, lo=-0.03, hi=0.035)


def guard(lo, hi, margin=0.01, decision="inconclusive", direction="increase"):
    return metric("revenue", "guardrail", decision, (lo + hi) / 2, lo, hi, margin=margin,
                  direction=direction)  # fmt: skip


def rec(*metrics, srm=None, days=None, power=0.8) -> pd.Series:
    out = recommend(frame(*metrics), srm, days, power).recommendations
    assert list(out.columns) == RECOMMENDATION_COLUMNS
    assert len(out) == 1
    return out.iloc[0]


# --- guardrail outcome: the non-inferiority rule ----------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "direction", "expected"),
    [
        (-0.005, 0.03, "increase", "ok"),  # harm at most 0.5% < 1%
        (-0.0099, 0.0, "increase", "ok"),
        (-0.05, -0.02, "increase", "violated"),  # harm at least 2% > 1%
        (-0.03, 0.01, "increase", "inconclusive"),  # harm from -1% to 3%: straddles the margin
        (-0.01, 0.02, "increase", "inconclusive"),  # harm reaches exactly the margin: not ok
        (-0.03, 0.005, "decrease", "ok"),  # a decrease metric: a rise is harm
        (0.02, 0.05, "decrease", "violated"),
        (-0.02, 0.03, "decrease", "inconclusive"),
        (NAN, NAN, "increase", "inconclusive"),  # not estimable
    ],
)
def test_guardrail_outcome_with_a_margin(lo, hi, direction, expected):
    out = guardrail_outcome(np.array([lo]), np.array([hi]), np.array([direction]),
                            np.array([0.01]), np.array(["inconclusive"]))  # fmt: skip
    assert out.tolist() == [expected]


@pytest.mark.parametrize(
    ("decision", "expected"),
    [("loss", "violated"), ("win", "ok"), ("inconclusive", "inconclusive"),
     ("insufficient_data", "inconclusive"), ("invalid_srm", "inconclusive")],
)  # fmt: skip
def test_guardrail_without_a_margin_is_its_decision(decision, expected):
    out = guardrail_outcome(np.array([-0.5]), np.array([0.5]), np.array(["increase"]),
                            np.array([NAN]), np.array([decision]))  # fmt: skip
    assert out.tolist() == [expected]


def test_margin_zero_rule_agrees_with_the_decision_on_the_interval():
    """Without a margin the rule is margin 0 on the adjusted interval, i.e. the decision."""
    rng = np.random.default_rng(1)
    lo = rng.normal(0, 0.05, 500)
    hi = lo + rng.uniform(0.001, 0.1, 500)
    direction = rng.choice(["increase", "decrease"], 500)
    d = np.where(direction == "increase", 1, -1)
    excl = (lo > 0) | (hi < 0)
    decision = np.where(excl, np.where(d * lo > 0, "win", "loss"), "inconclusive")
    by_decision = guardrail_outcome(lo, hi, direction, np.full(500, NAN), decision)
    by_zero = guardrail_outcome(lo, hi, direction, np.zeros(500), decision)
    assert (by_decision == by_zero).all()
    assert {"ok", "violated", "inconclusive"} == set(by_zero)


def test_guardrail_rows_and_reasons():
    g = guardrails(frame(WIN, guard(-0.05, -0.02)))
    assert list(g.columns) == GUARDRAIL_COLUMNS
    (row,) = g.itertuples(index=False)
    assert (row.metric_id, row.variant, row.outcome) == ("revenue", "2", "violated")
    assert row.reason == "revenue -3.5% (CI -5.0% to -2.0%) is beyond its 1% margin"
    ok = guardrails(frame(guard(-0.004, 0.03, margin=0.005))).iloc[0]
    assert ok["reason"].endswith("is within its 0.5% margin")
    assert guardrails(frame(WIN)).empty


# --- the recommendation: each branch ----------------------------------------------------------


def test_ship_names_the_winner_and_the_guardrails():
    r = rec(WIN, guard(-0.005, 0.03))
    assert (r["recommendation"], r["variant"], r["control"]) == (SHIP, "2", "1")
    assert r["reason"] == (
        "ship treatment: conversion +4.1% (CI +2.0% to +6.2%); guardrails ok (revenue)"
    )
    assert math.isnan(r["units_needed"])


def test_ship_without_guardrails_says_so():
    assert rec(WIN)["reason"].endswith("; no guardrails")


def test_ship_with_an_inconclusive_guardrail_names_it():
    r = rec(WIN, guard(-0.03, 0.01))
    assert r["recommendation"] == SHIP
    inconclusive = "guardrail inconclusive: revenue -1.0% (CI -3.0% to +1.0%) may be beyond its 1%"
    assert inconclusive in r["reason"]


def test_ship_with_a_guardrail_without_margin_that_is_not_significant():
    r = rec(WIN, guard(-0.03, 0.01, margin=NAN))
    assert r["recommendation"] == SHIP
    assert "has no margin to show it is not harmful" in r["reason"]


def test_a_violated_guardrail_blocks_a_winner():
    r = rec(WIN, guard(-0.05, -0.02))
    assert r["recommendation"] == DONT_SHIP
    assert r["reason"].startswith("don't ship treatment: guardrail violated: revenue -3.5%")


def test_a_significant_guardrail_loss_without_margin_is_a_violation():
    r = rec(WIN, guard(-0.05, -0.02, margin=NAN, decision="loss"))
    assert r["recommendation"] == DONT_SHIP
    assert "is significantly worse" in r["reason"]


def test_primary_loss_is_dont_ship():
    r = rec(LOSS)
    assert r["recommendation"] == DONT_SHIP
    assert r["reason"] == "don't ship treatment: conversion -3.0% (CI -5.0% to -1.0%) loses"


def test_one_primary_wins_another_loses_dont_ship():
    other = metric("ctr", decision="loss", effect=-0.02, lo=-0.03, hi=-0.01)
    assert rec(WIN, other)["recommendation"] == DONT_SHIP


def test_a_decrease_metric_wins_when_it_falls():
    falls = metric("latency", decision="win", effect=-0.1, lo=-0.15, hi=-0.05,
                   direction="decrease")  # fmt: skip
    r = rec(falls)
    assert r["recommendation"] == SHIP
    assert "latency -10.0%" in r["reason"]


def test_secondary_metrics_never_decide():
    sec = metric("sessions", "secondary", "loss", -0.1, -0.2, -0.05)
    assert rec(WIN, sec)["recommendation"] == SHIP
    assert rec(FLAT, metric("s2", "secondary", "win", 0.1, 0.05, 0.2))["recommendation"] == (
        KEEP_RUNNING
    )


def test_keep_running_without_minimum_effect_is_not_estimable():
    r = rec(FLAT)
    assert r["recommendation"] == KEEP_RUNNING
    assert r["variant"] == ""
    assert r["reason"] == (
        "keep running: no primary metric is significant yet: conversion +0.2% (CI -3.0% to "
        "+3.5%); no minimum_effect is set on conversion, so the units still needed are not "
        "estimable (the data now detect ±8.0% on conversion at 80% power)"
    )
    assert math.isnan(r["units_needed"])


def test_keep_running_with_minimum_effect_gives_units_and_days():
    flat = metric("conversion", effect=0.002, lo=-0.03, hi=0.035, minimum_effect=0.02,
                  required=5000.0, n=1000.0, n_control=1200.0)  # fmt: skip
    r = rec(flat, days={"e": 7})
    assert r["recommendation"] == KEEP_RUNNING
    assert r["units_needed"] == 4000.0  # the smaller arm: 5,000 - 1,000
    assert r["days_needed"] == 28.0  # 1,000 units in 7 days: 4,000 more take 28
    assert r["reason"].endswith(
        "; 4,000 more units per variant, about 28 more days at the current rate, for 80% power "
        "at conversion's minimum effect of 2.0%"
    )


def test_keep_running_without_days_gives_units_only():
    flat = metric("conversion", minimum_effect=0.02, required=1500.5, n=1000.0)
    r = rec(flat, power=0.9)
    assert r["units_needed"] == 500.5
    assert math.isnan(r["days_needed"])
    assert "more days" not in r["reason"]
    assert "for 90% power" in r["reason"]


def test_keep_running_already_powered_says_the_effect_is_likely_smaller():
    flat = metric("conversion", minimum_effect=0.05, required=800.0, n=1000.0)
    r = rec(flat, days={"e": 14})
    assert (r["units_needed"], r["days_needed"]) == (0.0, 0.0)
    assert "already has the units for 80% power" in r["reason"]


def test_keep_running_takes_the_largest_shortfall_over_primaries():
    a = metric("a", minimum_effect=0.05, required=1500.0)
    b = metric("b", minimum_effect=0.01, required=9000.0)
    r = rec(a, b, days={"e": 10})
    assert r["units_needed"] == 8000.0
    assert r["days_needed"] == 80.0
    assert "b's minimum effect of 1.0%" in r["reason"]


def test_keep_running_with_a_violated_guardrail_is_dont_ship():
    assert rec(FLAT, guard(-0.05, -0.02))["recommendation"] == DONT_SHIP


def test_no_primary_metric_keeps_running_and_reports_guardrails():
    r = rec(guard(-0.005, 0.03))
    assert r["recommendation"] == KEEP_RUNNING
    assert r["reason"] == (
        "keep running: no primary metric decides treatment; guardrails ok (revenue)"
    )


def test_insufficient_data_keeps_running():
    r = rec(metric("conversion", decision="insufficient_data", effect=NAN, lo=NAN, hi=NAN))
    assert r["recommendation"] == KEEP_RUNNING
    assert r["reason"] == "keep running: not enough data on treatment to test conversion"


# --- precedence ---------------------------------------------------------------------------------


SRM_FAILED = pd.DataFrame({"exp_id": ["e"], "unit_type": ["user"], "chi2": [30.0],
                           "p_value": [2e-8], "passed": [False]})  # fmt: skip


def test_srm_failure_is_invalid_before_everything():
    for metrics in ((WIN,), (LOSS,), (WIN, guard(-0.05, -0.02)), (FLAT,)):
        r = rec(*metrics, srm=SRM_FAILED)
        assert r["recommendation"] == INVALID
        assert r["reason"] == (
            "sample ratio mismatch (user p = 2e-08 < 0.001): the effects are not trustworthy"
        )


def test_invalid_srm_decisions_alone_make_it_invalid():
    srm_rows = metric("conversion", decision="invalid_srm")
    assert rec(srm_rows)["recommendation"] == INVALID


def test_a_passed_srm_changes_nothing():
    passed = SRM_FAILED.assign(passed=True, p_value=0.4)
    assert rec(WIN, srm=passed)["recommendation"] == SHIP


def test_dont_ship_beats_ship_within_a_treatment_and_ship_beats_keep_running():
    assert rec(WIN, guard(-0.05, -0.02))["recommendation"] == DONT_SHIP
    assert rec(WIN, guard(-0.03, 0.01))["recommendation"] == SHIP


def three_arms(b, c):
    """Two treatments (b: vid 2, c: vid 3) of one primary metric."""
    return frame(
        metric("conversion", variant="2", name="b", **b), metric("conversion", variant="3",
                                                                   name="c", **c)
    )  # fmt: skip


def test_multi_arm_ships_the_best_winner_and_names_the_others():
    win_small = {"decision": "win", "effect": 0.02, "lo": 0.01, "hi": 0.03}
    win_big = {"decision": "win", "effect": 0.05, "lo": 0.03, "hi": 0.07}
    r = recommend(three_arms(win_small, win_big)).recommendations.iloc[0]
    assert (r["recommendation"], r["variant"]) == (SHIP, "3")
    assert r["reason"].endswith("; b also shippable")


def test_multi_arm_a_losing_arm_does_not_block_a_winner():
    win = {"decision": "win", "effect": 0.05, "lo": 0.03, "hi": 0.07}
    loss = {"decision": "loss", "effect": -0.05, "lo": -0.07, "hi": -0.03}
    r = recommend(three_arms(loss, win)).recommendations.iloc[0]
    assert (r["recommendation"], r["variant"]) == (SHIP, "3")
    assert r["reason"].endswith("; b not to ship")


def test_multi_arm_dont_ship_beats_keep_running():
    flat = {"effect": 0.0, "lo": -0.02, "hi": 0.02}
    loss = {"decision": "loss", "effect": -0.05, "lo": -0.07, "hi": -0.03}
    r = recommend(three_arms(flat, loss)).recommendations.iloc[0]
    assert (r["recommendation"], r["variant"]) == (DONT_SHIP, "3")
    assert r["reason"].endswith("; b inconclusive")


def test_multi_arm_keep_running_lists_each_arm():
    flat = {"effect": 0.0, "lo": -0.02, "hi": 0.02, "minimum_effect": 0.02, "required": 3000.0}
    r = recommend(three_arms(flat, flat), days_run={"e": 5}).recommendations.iloc[0]
    assert r["recommendation"] == KEEP_RUNNING
    assert "conversion +0.0% (CI -2.0% to +2.0%) for b, conversion +0.0%" in r["reason"]
    assert "(CI -2.0% to +2.0%) for c; 2,000 more units per variant" in r["reason"]
    assert r["units_needed"] == 2000.0


def test_no_metric_rows_give_empty_frames():
    out = recommend(pd.DataFrame())
    assert out.recommendations.empty
    assert list(out.recommendations.columns) == RECOMMENDATION_COLUMNS
    assert out.guardrails.empty


def test_one_recommendation_per_experiment():
    m = pd.concat([frame(WIN), frame(LOSS).assign(exp_id="f"), frame(FLAT).assign(exp_id="g")])
    out = recommend(m).recommendations
    assert out.set_index("exp_id")["recommendation"].to_dict() == {
        "e": SHIP, "f": DONT_SHIP, "g": KEEP_RUNNING}  # fmt: skip


# --- on the engine's output -----------------------------------------------------------------------


START = date(2026, 1, 1)


def engine_inputs(lift_primary=0.0, lift_guard=0.0, margin=0.01, n=4000, seed=0, **extra):
    """One two-arm experiment of n units per arm over 14 planned days: a primary and a guardrail
    mean metric with the given true lifts."""
    from strata.stats.aggregate import aggregate_arrays

    rng = np.random.default_rng(seed)
    conv = rng.normal(1.0, 1.0, (1, 2, n)) + np.array([0.0, lift_primary])[None, :, None]
    rev = rng.normal(10.0, 5.0, (1, 2, n)) * np.array([1.0, 1 + lift_guard])[None, :, None]
    ones = np.ones_like(conv)
    goals, _ = aggregate_arrays(["e"], [["1", "2"]], "user",
                                {"conv": (ones, conv), "rev": (ones, rev)})  # fmt: skip
    record = {
        "experiment_id": "e",
        "variants": [{"vid": 1, "name": "control", "is_control": True, "weight": 1},
                     {"vid": 2, "name": "treatment", "weight": 1}],
        "metrics": [
            {"id": "conv", "name": "conversion", "role": "primary",
             "nominator": "value(user.unit.conv)", "denominator": "count(user.global.exposure)",
             **extra},
            {"id": "rev", "name": "revenue", "role": "guardrail",
             "nominator": "value(user.unit.rev)", "denominator": "count(user.global.exposure)",
             **({"margin": margin} if margin else {})},
        ],
        "start_date": START, "end_date": START + timedelta(days=13),
    }  # fmt: skip
    return goals, [record]


DAY_7 = START + timedelta(days=6)


def engine_case(*args, config=None, **kwargs):
    return evaluate(*engine_inputs(*args, **kwargs), analysis_date=DAY_7, config=config)


def engine_rec(ev):
    out = recommend(ev.metrics, ev.srm, ev.days_run, ev.config.power, ev.config.srm_alpha)
    return out.recommendations.iloc[0], out.guardrails


def test_engine_winner_with_a_harmless_guardrail_ships():
    r, g = engine_rec(engine_case(0.2, 0.0))
    assert r["recommendation"] == SHIP
    assert g["outcome"].tolist() in (["ok"], ["inconclusive"])
    assert r["reason"].startswith("ship treatment: conversion +")


def test_engine_winner_with_a_harmful_guardrail_does_not_ship():
    r, g = engine_rec(engine_case(0.2, -0.08))
    assert g["outcome"].tolist() == ["violated"]
    assert r["recommendation"] == DONT_SHIP


def test_engine_keep_running_extrapolates_the_days_of_data():
    ev = engine_case(0.0, 0.0, seed=3, minimum_effect=0.05)
    assert ev.days_run == {"e": 7}
    r, _ = engine_rec(ev)
    assert r["recommendation"] == KEEP_RUNNING
    t = ev.metrics[(ev.metrics["metric_id"] == "conv") & ~ev.metrics["is_control"]].iloc[0]
    assert r["units_needed"] == t["required_sample_size"] - 4000 > 0
    assert r["days_needed"] == math.ceil(7 * r["units_needed"] / 4000)


def test_engine_frame_carries_margin_and_minimum_effect():
    ev = engine_case(margin=0.02, minimum_effect=0.05)
    by = ev.metrics.drop_duplicates("metric_id").set_index("metric_id")
    assert by.loc["rev", "margin"] == 0.02
    assert math.isnan(by.loc["conv", "margin"])
    assert by.loc["conv", "minimum_effect"] == 0.05


def test_days_run_stops_at_the_planned_end():
    inputs = engine_inputs(n=50)
    assert evaluate(*inputs, analysis_date=START + timedelta(days=40)).days_run == {"e": 14}
    assert evaluate(*inputs).days_run == {}  # no analysis date: no days


def test_config_power_is_the_one_reported():
    r80, _ = engine_rec(engine_case(seed=3, minimum_effect=0.05))
    r90, _ = engine_rec(engine_case(seed=3, minimum_effect=0.05,
                                    config=EvaluationConfig(power=0.9)))  # fmt: skip
    assert "80% power" in r80["reason"]
    assert "90% power" in r90["reason"]
    assert r80["units_needed"] < r90["units_needed"]


@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_design_refuses_a_margin_off_guardrails(role):
    record = {"experiment_id": "exp_m", "variants": [{"vid": 1, "is_control": True, "weight": 1},
                                                     {"vid": 2, "weight": 1}],
              "metrics": [{"id": "m1", "name": "M", "role": role, "margin": 0.01,
                           "nominator": "value(user.unit.x)",
                           "denominator": "count(user.global.exposure)"}]}  # fmt: skip
    with pytest.raises(DesignError, match=r"experiment 'exp_m', metric 'm1': margin is only"):
        experiment_from_record(record)


def test_results_rows_of_the_recommendation_and_the_guardrails():
    from strata.stats.results import RECOMMENDATION_METRIC_ID, RESULTS_SCHEMA, results_frame

    ev = engine_case(0.2, 0.0, minimum_effect=0.05)
    res = results_frame(ev, "run", {"t": 1})
    assert list(res.columns) == RESULTS_SCHEMA.names
    top = res[res["metric_id"] == RECOMMENDATION_METRIC_ID]
    assert len(top) == 1
    assert top[["statistic", "role", "variant", "comparison", "decision"]].iloc[0].tolist() == [
        "recommendation", "recommendation", "2", "2 vs 1", "ship"]  # fmt: skip
    assert top["reason"].iloc[0].startswith("ship treatment: conversion +")
    guard = res[res["statistic"] == "guardrail"]
    rel = res[(res["statistic"] == "rel_diff") & (res["metric_id"] == "rev")]
    assert guard[["metric_id", "variant", "role"]].values.tolist() == [["rev", "2", "guardrail"]]
    cols = ["point", "lower", "upper", "p_value", "p_value_adjusted"]
    assert guard[cols].to_numpy() == pytest.approx(rel[cols].to_numpy())  # the interval shown
    assert guard["decision"].iloc[0] in {"ok", "inconclusive"}
    has_reason = res["reason"].notna()
    assert set(res.loc[has_reason, "statistic"]) == {"recommendation", "guardrail"}
    assert has_reason.sum() == 2
    arrow = pa.Table.from_pandas(res, schema=RESULTS_SCHEMA, preserve_index=False)
    assert arrow.num_rows == len(res)  # the types fit the table


#: The README's demo rows (100k users, 14 days, seed 7: effect, adjusted CI, decision).
README_DEMO = [
    ("checkout_button", "conversion", "1002", 0.164, 0.110, 0.220, "win"),
    ("checkout_button", "revenue", "1002", 0.204, 0.128, 0.284, "win"),
    ("checkout_button", "sessions", "1002", 0.014, -0.001, 0.029, "inconclusive"),
    ("dark_mode", "sessions", "6002", -0.044, -0.115, 0.032, "inconclusive"),
    ("feed_density", "clicks", "3102", 0.088, -0.058, 0.256, "inconclusive"),
    ("feed_ranking", "ctr", "3002", 0.065, 0.036, 0.095, "win"),
    ("onboarding_tour", "clicks", "5002", -0.017, -0.102, 0.072, "inconclusive"),
    ("onboarding_tour", "clicks", "5003", 0.005, -0.077, 0.092, "inconclusive"),
    ("price_display", "conversion", "4002", -0.000, -0.070, 0.075, "inconclusive"),
    ("search_v2_launch", "clicks", "9002", -0.026, -0.116, 0.082, "inconclusive"),
    ("upsell_banner", "value_per_buyer", "2002", 0.116, 0.066, 0.169, "win"),
]


def test_the_demo_ships_the_planted_winners_and_not_the_aa_test():
    """Done-when of issue #15 item 3 on the README's demo rows, with the roles, directions and
    margins of the bundled definitions (checkout_button's revenue guardrail: margin 1%)."""
    from strata.definitions import bundled_path, load

    defs = load(bundled_path())
    rows = []
    for exp_id, mid, variant, effect, lo, hi, decision in README_DEMO:
        e = defs.experiment(exp_id)
        m = next(x for x in e.metrics if x.id == mid)
        vname = next(v.name for v in e.variants if str(v.vid) == variant)
        for r in metric(mid, m.role, decision, effect, lo, hi, direction=m.direction,
                        margin=NAN if m.margin is None else m.margin, variant=variant,
                        name=vname):  # fmt: skip
            rows.append({**r, "exp_id": exp_id, "control": str(e.variants[0].vid),
                         "variant": r["variant"] if not r["is_control"] else
                         str(e.variants[0].vid)})  # fmt: skip
    assert defs.experiment("checkout_button").metrics[1].margin == 0.01
    m = pd.DataFrame(rows).drop_duplicates(["exp_id", "metric_id", "variant"])
    out = recommend(m).recommendations.set_index("exp_id")
    for winner in ("checkout_button", "feed_ranking", "upsell_banner"):
        assert out.loc[winner, "recommendation"] == SHIP
    assert out.loc["price_display", "recommendation"] == KEEP_RUNNING
    assert out.loc["checkout_button", "reason"] == (
        "ship treatment: conversion +16.4% (CI +11.0% to +22.0%); guardrails ok (revenue)"
    )
    assert out.loc["feed_ranking", "reason"].endswith("; no guardrails")
    assert out.loc["search_v2_launch", "reason"].startswith(
        "keep running: no primary metric decides launched; guardrail inconclusive: clicks -2.6%"
    )
    assert (out["recommendation"] == SHIP).sum() == 3
