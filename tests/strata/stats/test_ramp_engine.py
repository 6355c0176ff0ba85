"""The engine evaluates a ramped experiment by cohort (issue #16, item 3): with the cohort
aggregates (``goal_cohort_aggregates``, a ``ramp_period`` column) its SRM row is the chi-square
summed over cohorts against each period's shares and its effects are post-stratified by cohort,
agreeing with :mod:`strata.stats.ramps` on the same units; an experiment without cohort rows is
evaluated exactly as before.

The units: ``ramped`` (10% treatment in period 0, 50% from period 1; the late cohort clicks
more, in both arms: an A/A with a cohort effect) and ``plain`` (50/50, no ramp).
"""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest

from strata.stats.engine import SRM_COHORTS, evaluate
from strata.stats.errors import AggregateError
from strata.stats.models import EvaluationConfig
from strata.stats.ramps import cohort_srm, stratified_difference
from strata.stats.results import results_frame

SHARES = np.array([[0.9, 0.1], [0.5, 0.5]])
CONFIG = EvaluationConfig(sequential=False)
CLICKS = "count(user.unit.click)"
EXPOSURES = "count(user.global.exposure)"


def _experiment(eid: str, vids: tuple[int, int], ramp: bool, covariate: bool = False) -> dict:
    weights = (90, 10) if ramp else (50, 50)
    metric = {
        "id": "clicks",
        "name": "clicks per user",
        "role": "primary",
        "nominator": CLICKS,
        "denominator": EXPOSURES,
    }
    if covariate:
        metric["covariate"] = "count(user.unit.pre_click)"
    ratio = {
        "id": "ctr",
        "name": "clicks per session",
        "role": "secondary",
        "nominator": CLICKS,
        "denominator": "count(user.unit.session_start)",
    }
    step = [{"vid": v, "weight": 50} for v in vids]
    return {
        "experiment_id": eid,
        "variants": [
            {"vid": vids[0], "name": "control", "is_control": True, "weight": weights[0]},
            {"vid": vids[1], "name": "treatment", "weight": weights[1]},
        ],
        "metrics": [metric, ratio],
        "start_date": date(2026, 11, 8),
        "end_date": date(2026, 11, 30),
        "ramp": json.dumps([{"date": "2026-11-09", "variants": step}] if ramp else []),
    }


def _units(seed: int = 7, n: int = 6000) -> pd.DataFrame:
    """One row per exposed unit: experiment, variant, cohort and its goal counts."""
    rng = np.random.default_rng(seed)
    parts = []
    for eid, vids, ramp in (("ramped", (1, 2), True), ("plain", (3, 4), False)):
        cohort = rng.integers(0, 2, n) if ramp else np.zeros(n, dtype=int)
        share_t = SHARES[cohort, 1] if ramp else np.full(n, 0.5)
        treated = rng.random(n) < share_t
        sessions = 1 + rng.poisson(1.0 + cohort)
        pre = rng.poisson(1.0 + cohort)
        clicks = rng.poisson(0.5 * sessions + 0.3 * pre + 0.8 * cohort)  # late cohort: more
        parts.append(
            pd.DataFrame(
                {
                    "exp_id": eid,
                    "exp_variant_id": np.where(treated, vids[1], vids[0]),
                    "ramp_period": cohort,
                    "click": clicks,
                    "pre_click": pre,
                    "session_start": sessions,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


GOALS = ("click", "pre_click", "session_start")
PAIRS = (("click", "pre_click"), ("click", "session_start"))


def _aggregates(units: pd.DataFrame, by: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ep-stats goal rows and cross rows of ``units`` grouped by ``by`` (as dbt builds them)."""
    rows, cross = [], []
    for key, u in units.groupby(by):
        keys = dict(zip(by, key, strict=True))
        rows.append({**keys, "agg_type": "global", "goal": "exposure", "count": len(u),
                     "sum_sqr_count": len(u), "sum_value": 0.0, "sum_sqr_value": 0.0,
                     "count_unique": len(u)})  # fmt: skip
        for g in GOALS:
            c = u[g].to_numpy(float)
            rows.append({**keys, "agg_type": "unit", "goal": g, "count": c.sum(),
                         "sum_sqr_count": (c**2).sum(), "sum_value": 0.0, "sum_sqr_value": 0.0,
                         "count_unique": int((c > 0).sum())})  # fmt: skip
        for x, y in PAIRS:
            tx, ty = sorted((f"count(user.unit.{x})", f"count(user.unit.{y})"))
            cross.append({**keys, "term_x": tx, "term_y": ty,
                          "sum_product": float((u[x] * u[y]).sum())})  # fmt: skip
    goals = pd.DataFrame(rows).assign(unit_type="user")
    return goals, pd.DataFrame(cross)


@pytest.fixture(scope="module")
def data():
    units = _units()
    goals, cross = _aggregates(units, ["exp_id", "exp_variant_id"])
    ramped = units[units["exp_id"] == "ramped"]
    cohorts, cohort_cross = _aggregates(ramped, ["exp_id", "exp_variant_id", "ramp_period"])
    return units, goals, cross, cohorts, cohort_cross


def _evaluate(data, covariate=False, with_cohorts=True, exps=("ramped", "plain")):
    _, goals, cross, cohorts, cohort_cross = data
    designs = {
        "ramped": _experiment("ramped", (1, 2), True, covariate),
        "plain": _experiment("plain", (3, 4), False, covariate),
    }
    return evaluate(
        goals, [designs[e] for e in exps], cross, analysis_date=date(2026, 11, 12), config=CONFIG,
        cohorts=cohorts if with_cohorts else None,
        cohort_cross=cohort_cross if with_cohorts else None,
    )  # fmt: skip


def test_the_srm_row_is_the_cohort_srm(data):
    units = data[0]
    ev = _evaluate(data)
    row = ev.srm.set_index("exp_id").loc["ramped"]
    r = units[units["exp_id"] == "ramped"]
    observed = np.zeros((2, 2))
    for (k, vid), n in r.groupby(["ramp_period", "exp_variant_id"]).size().items():
        observed[k, vid - 1] = n
    chi2, dof, p = cohort_srm(observed, SHARES)
    assert row["method"] == SRM_COHORTS
    assert row["chi2"] == pytest.approx(float(chi2), rel=1e-12)
    assert (row["dof"], row["p_value"]) == (int(dof), pytest.approx(float(p), rel=1e-12))
    assert row["passed"]  # split as designed in each cohort
    assert row["observed"] == list(observed.sum(axis=0))
    # the pooled test against period 0's weights (what the engine wrote before) fails loudly
    pooled = _evaluate(data, with_cohorts=False).srm.set_index("exp_id").loc["ramped"]
    assert not pooled["passed"]
    assert pooled["p_value"] < 1e-100
    frame = results_frame(ev, "run", {})
    srm = frame[(frame["metric_id"] == "__srm__") & (frame["experiment_id"] == "ramped")]
    assert srm["metric_name"].tolist() == ["sample ratio mismatch by ramp cohort (user)"]
    assert srm["point"].tolist() == [pytest.approx(float(chi2))]
    assert srm["decision"].tolist() == ["passed"]


def test_effects_are_stratified_by_cohort(data):
    units = data[0]
    ev = _evaluate(data)
    m = ev.metrics
    row = m[(m["exp_id"] == "ramped") & (m["metric_id"] == "clicks") & ~m["is_control"]].iloc[0]
    r = units[units["exp_id"] == "ramped"]
    n = np.zeros((2, 2))
    mean = np.zeros((2, 2))
    var = np.zeros((2, 2))
    for (k, vid), u in r.groupby(["ramp_period", "exp_variant_id"]):
        n[k, vid - 1], mean[k, vid - 1], var[k, vid - 1] = len(u), u.click.mean(), u.click.var()
    effect, se, p = stratified_difference(n, mean, var)
    assert row["abs_diff"] == pytest.approx(float(effect), rel=1e-9)
    assert row["abs_se"] == pytest.approx(float(se), rel=1e-9)
    assert row["p_value"] == pytest.approx(float(p), rel=0.02, abs=1e-4)  # Welch t vs z
    assert row["count"] == n[:, 1].sum()  # the unit count stays the pooled one
    w = n.sum(axis=1) / n.sum()
    assert row["mean"] == pytest.approx(float(w @ mean[:, 1]), rel=1e-9)
    # A/A with a cohort effect: stratified, no effect; pooled, the ramp's bias
    assert abs(row["abs_diff"]) < 3 * row["abs_se"]
    pooled = _evaluate(data, with_cohorts=False).metrics
    prow = pooled[
        (pooled["exp_id"] == "ramped") & (pooled["metric_id"] == "clicks") & ~pooled["is_control"]
    ].iloc[0]
    assert prow["abs_diff"] > 0.3
    assert prow["decision"] == "invalid_srm"
    assert row["decision"] == "inconclusive"


def test_ratio_and_cuped_metrics_are_stratified_too(data):
    ev = _evaluate(data, covariate=True)
    m = ev.metrics.set_index(["exp_id", "metric_id", "variant"])
    cuped = m.loc[("ramped", "clicks", "2")]
    assert cuped["cuped"]
    assert 0.0 < cuped["variance_reduction"] < 1.0
    assert abs(cuped["abs_diff"]) < 3 * cuped["abs_se"]
    ratio = m.loc[("ramped", "ctr", "2")]
    assert ratio["kind"] == "ratio"
    assert np.isfinite(ratio["abs_se"])
    assert ratio["abs_se"] > 0
    # without cohorts the CUPED mean still carries the ramp's bias
    pooled = _evaluate(data, covariate=True, with_cohorts=False).metrics
    p = pooled.set_index(["exp_id", "metric_id", "variant"]).loc[("ramped", "clicks", "2")]
    assert p["abs_diff"] > cuped["abs_diff"] + 3 * cuped["abs_se"]


def test_an_experiment_without_cohort_rows_is_unchanged(data):
    ev = _evaluate(data, covariate=True)
    before = _evaluate(data, covariate=True, with_cohorts=False)
    alone = _evaluate(data, covariate=True, exps=("plain",))
    for frame in (before.metrics, alone.metrics):
        got = ev.metrics[ev.metrics["exp_id"] == "plain"].reset_index(drop=True)
        want = frame[frame["exp_id"] == "plain"].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want)
    srm = ev.srm[ev.srm["exp_id"] == "plain"].drop(columns="method").reset_index(drop=True)
    pd.testing.assert_frame_equal(srm, before.srm[before.srm["exp_id"] == "plain"].reset_index(
        drop=True))  # fmt: skip
    assert "method" not in before.srm  # no cohorts: the SRM frame is as it was


def test_a_cohort_past_the_design_is_refused(data):
    _, goals, cross, cohorts, cohort_cross = data
    bad = cohorts.assign(ramp_period=cohorts["ramp_period"] + 1)
    with pytest.raises(AggregateError, match="ramp period 2 but its design has 2 period"):
        evaluate(goals, [_experiment("ramped", (1, 2), True)], cross, config=CONFIG,
                 cohorts=bad, cohort_cross=cohort_cross)  # fmt: skip
