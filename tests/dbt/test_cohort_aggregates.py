"""A two-period ramped experiment through dbt and the evaluation (issue #16, item 3).

On top of test_goal_aggregates' hand-built fixture (experiment ``e1``, no ramp), experiment
``ramped`` (window 2026-11-02 .. 11-04, 10% treatment, 50% from 11-03) gets 400 synthetic users:
r000..r199 first assigned on 11-02 (cohort 0, treatment every tenth, plus r001 and r002),
r200..r399 on 11-03 (cohort 1, every other one). Each is exposed by an app start on its first
day; cohort 0 clicks 0-2 times, cohort 1 clicks 2-4 times in both arms (an A/A with a cohort
effect). dbt must give per-cohort rows that add up to goal_aggregates; the results' SRM row must
be ramps.cohort_srm of the same units, the effect ramps.stratified_difference; e1's rows must be
the same with and without the cohort tables.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from strata import contracts
from strata.stats.ramps import cohort_srm, stratified_difference
from strata.stats.results import SRM_METRIC_ID, run_evaluation
from tests.dbt import test_goal_aggregates as base

_build = base._build
fixture_tables = base.fixture_tables

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 4)
RAMP = [{"date": "2026-11-03", "variants": [{"vid": 10, "weight": 50}, {"vid": 11, "weight": 50}]}]
E1_VARIANTS = json.dumps(
    [
        {"vid": 0, "name": "control", "is_control": True, "weight": 1},
        {"vid": 1, "name": "treatment", "weight": 1},
    ]
)
METRICS = [
    {"id": "clicks", "name": "Clicks per user", "role": "primary",
     "nominator": "count(user.unit.click)", "denominator": "count(user.global.exposure)"},
]  # fmt: skip


def _units() -> pd.DataFrame:
    rows = []
    for i in range(400):
        cohort = int(i >= 200)
        treated = i % 2 == 1 if cohort else (i % 10 == 0 or i in (1, 2))
        rows.append(
            {
                "unit_id": f"r{i:03d}",
                "ramp_period": cohort,
                "variant_id": 11 if treated else 10,
                "clicks": (2 + i % 3) if cohort else i % 3,
                "day": 3 if cohort else 2,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def ramped_tables(spark, settings, fixture_tables):
    table = settings.table
    units = _units()
    events = []
    for u in units.itertuples(index=False):
        at = base.ts(u.day, 10)
        events.append((f"{u.unit_id}-start", "session_start", at, at, f"dev-{u.unit_id}",
                       u.unit_id, "ios", "US", None))  # fmt: skip
        for k in range(u.clicks):
            t = base.ts(u.day, 11, k)
            events.append((f"{u.unit_id}-click-{k}", "click", t, t, f"dev-{u.unit_id}",
                           u.unit_id, "ios", "US", None))  # fmt: skip
    spark.createDataFrame(events, spark.table(table("raw_events")).schema).writeTo(
        table("raw_events")
    ).append()
    old = spark.table(table("assignments"))
    rows = [r.asDict() | {"ramp_period": 0} for r in old.collect()]
    for u in units.itertuples(index=False):
        rows.append(
            rows[0]
            | {
                "unit_id": u.unit_id,
                "experiment_id": "ramped",
                "variant_id": u.variant_id,
                "variant_name": "treatment" if u.variant_id == 11 else "control",
                "is_control": u.variant_id == 10,
                "layer_id": "l2",
                "ramp_period": u.ramp_period,
            }
        )
    spark.createDataFrame(rows, old.schema.add("ramp_period", "integer")).writeTo(
        table("assignments")
    ).using("iceberg").createOrReplace()
    exps = spark.table(table("experiments"))
    e1 = exps.collect()[0].asDict()
    ramped = e1 | {
        "experiment_id": "ramped",
        "layer_id": "l2",
        "variants": json.dumps(
            [
                {"vid": 10, "name": "control", "is_control": True, "weight": 90},
                {"vid": 11, "name": "treatment", "weight": 10},
            ]
        ),
        "metrics": json.dumps(METRICS),
        "ramp": json.dumps(RAMP),
    }
    spark.createDataFrame(
        [e1 | {"variants": E1_VARIANTS, "metrics": json.dumps(METRICS), "ramp": "[]"}, ramped],
        exps.schema.add("ramp", "string"),
    ).writeTo(table("experiments")).using("iceberg").createOrReplace()
    return units


def _rows(spark, settings, name: str, where: str) -> pd.DataFrame:
    return spark.sql(f"SELECT * FROM {settings.table(name)} WHERE {where}").toPandas()


def test_ramped_experiment_per_cohort_through_dbt_and_the_results(
    spark, settings, ramped_tables, tmp_path
):
    from strata.stack import iceberg_catalog

    units = ramped_tables
    _build(settings, tmp_path, "--full-refresh")

    cohorts = _rows(spark, settings, contracts.GOAL_COHORT_AGGREGATES, "true")
    assert set(cohorts["exp_id"]) == {"ramped"}  # e1 has one cohort: no rows
    exposure = cohorts[cohorts["goal"] == "exposure"]
    got = {
        (str(r.as_of_date), r.ramp_period, r.exp_variant_id): r.count
        for r in exposure.itertuples(index=False)
    }
    cells = units.groupby(["ramp_period", "variant_id"]).size()
    want = {("2026-11-02", 0, v): n for (k, v), n in cells.items() if k == 0}
    for day in ("2026-11-03", "2026-11-04"):
        want |= {(day, k, v): n for (k, v), n in cells.items()}
    assert got == want  # cohort 1 joins on 11-03
    # the cohorts add up to the pooled aggregates, goal by goal
    pooled = _rows(
        spark, settings, contracts.GOAL_AGGREGATES,
        f"exp_id = 'ramped' AND platform = '' AND as_of_date = DATE '{DAY}'",
    )  # fmt: skip
    mine = cohorts[cohorts["as_of_date"] == DAY]
    value_columns = ["count", "sum_sqr_count", "count_unique"]
    summed = mine.groupby(["exp_variant_id", "goal"])[value_columns].sum()
    assert summed.to_dict() == pooled.set_index(["exp_variant_id", "goal"])[value_columns].to_dict()
    clicks = mine[mine["goal"] == "click"].set_index(["ramp_period", "exp_variant_id"])["count"]
    per_cell = units.groupby(["ramp_period", "variant_id"])["clicks"].sum()
    assert clicks.to_dict() == per_cell.to_dict()
    cross = _rows(spark, settings, contracts.GOAL_COHORT_CROSS_AGGREGATES, "true")
    assert set(cross["ramp_period"]) == {0, 1}
    assert cross["sum_product"].notna().all()

    catalog = iceberg_catalog(settings)
    _, frame = run_evaluation(catalog, ["e1", "ramped"], DAY, write=False)
    srm = frame[(frame["metric_id"] == SRM_METRIC_ID) & (frame["experiment_id"] == "ramped")]
    observed = np.zeros((2, 2))
    for (k, vid), n in cells.items():
        observed[k, vid - 10] = n
    chi2, _, p = cohort_srm(observed, [[0.9, 0.1], [0.5, 0.5]])
    assert srm["metric_name"].tolist() == ["sample ratio mismatch by ramp cohort (user)"]
    assert srm["point"].iloc[0] == pytest.approx(float(chi2), rel=1e-9)
    assert srm["p_value"].iloc[0] == pytest.approx(float(p), rel=1e-9)
    assert float(chi2) > 0  # r001, r002 tilt cohort 0 a little
    n = np.zeros((2, 2))
    mean = np.zeros((2, 2))
    var = np.zeros((2, 2))
    for (k, vid), u in units.groupby(["ramp_period", "variant_id"]):
        cell = (k, vid - 10)
        n[cell], mean[cell], var[cell] = len(u), u.clicks.mean(), u.clicks.var()
    effect, _, _ = stratified_difference(n, mean, var)
    diff = frame[
        (frame["experiment_id"] == "ramped")
        & (frame["statistic"] == "abs_diff")
        & (frame["metric_id"] == "clicks")
        & frame["dimension"].isna()
    ]
    assert diff["point"].iloc[0] == pytest.approx(float(effect), rel=1e-9, abs=1e-12)
    # e1 (no ramp) is evaluated exactly as without the cohort tables
    _, before = run_evaluation(
        catalog, ["e1"], DAY, write=False, cohort_goals_table=None, cohort_cross_table=None,
        run_id=frame["run_id"].iloc[0],
    )  # fmt: skip
    keep = ["metric_id", "variant", "statistic", "dimension", "segment", "point", "lower",
            "upper", "p_value", "p_value_adjusted", "decision"]  # fmt: skip
    order = ["metric_id", "variant", "statistic", "dimension", "segment"]
    got_e1 = frame[frame["experiment_id"] == "e1"][keep].sort_values(order, na_position="first")
    want_e1 = before[keep].sort_values(order, na_position="first")
    pd.testing.assert_frame_equal(
        got_e1.reset_index(drop=True), want_e1.reset_index(drop=True), check_dtype=False
    )

    # an incremental night with a 1-day lookback: the state moves to 11-02 and the window's
    # dates (11-03, 11-04) are recomputed from it and the daily rows after it; every cohort
    # table ends with the rows the full build computed from all the daily rows
    built = {m: _table(spark, settings, m) for m in COHORT_MODELS}
    _build(settings, tmp_path, dbt_vars={"lookback_days": 1, "as_of_date": DAY.isoformat()})
    state = spark.table(settings.table("fct_unit_goal_state"))
    assert state.agg({"through_date": "max"}).first()[0] == dt.date(2026, 11, 2)
    for model in COHORT_MODELS:
        assert _table(spark, settings, model) == built[model], model


#: The cohort tables, compared whole before and after an incremental night.
COHORT_MODELS = (
    "int_cohort_unit_goals",
    contracts.GOAL_COHORT_AGGREGATES,
    contracts.GOAL_COHORT_CROSS_AGGREGATES,
)


def _table(spark, settings, name: str) -> list[tuple]:
    rows = spark.table(settings.table(name)).collect()
    rounded = [tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in rows]
    return sorted(rounded, key=repr)
