"""Capping (winsorization) in goal_aggregates and goal_segment_aggregates, on the hand-built
fixture of test_goal_aggregates.

The fixture's purchases (after quarantine and the window): u1 (control) 10.0 on 11-03; u2
(treatment) 20.0 on 11-02 and 5.0 on 11-04. Units' cumulative purchase values, pooled:
  as of 11-02: [20]        as of 11-03: [10, 20]        as of 11-04: [10, 25]
The 50th percentile (linear between order statistics around (n - 1) * p): 20, 15, 17.5.
"""

from __future__ import annotations

import json

import pytest

from strata.stats.engine import evaluate
from strata.stats.segments import evaluate_segments
from tests.dbt import test_goal_aggregates as base

_build = base._build
fixture_tables = base.fixture_tables  # the hand-built fixture, as a fixture of this module

pytestmark = pytest.mark.slow

CAPPED = ["value_cap", "sum_value_capped", "sum_sqr_value_capped"]


def _set_metrics(spark, settings, metrics: list[dict]) -> None:
    table = settings.table("experiments")
    rows = spark.table(table).collect()
    schema = spark.table(table).schema
    spark.createDataFrame(
        [r.asDict() | {"metrics": json.dumps(metrics)} for r in rows], schema
    ).writeTo(table).using("iceberg").createOrReplace()


def _revenue(cap: dict) -> list[dict]:
    return [
        {"id": "revenue", "name": "Revenue", "nominator": "value(user.unit.purchase)",
         "denominator": "count(user.global.exposure)", "role": "primary", "cap": cap},
        {"id": "clicks", "name": "Clicks", "nominator": "count(user.unit.click)",
         "denominator": "count(user.global.exposure)"},
    ]  # fmt: skip


def _capped(spark, settings, platform: str = "") -> dict[tuple, tuple]:
    rows = spark.sql(
        f"""SELECT as_of_date, exp_variant_id, goal, sum_value, {", ".join(CAPPED)}
            FROM {settings.table("goal_aggregates")}
            WHERE platform = '{platform}' AND agg_type = 'unit' AND exp_id = 'e1'"""
    ).collect()
    return {(str(r[0]), r[1], r[2]): tuple(r[3:]) for r in rows}


def _segment_capped(spark, settings) -> dict[tuple, tuple]:
    rows = spark.sql(
        f"""SELECT exp_variant_id, dimension, segment, goal, sum_value, {", ".join(CAPPED)}
            FROM {settings.table("goal_segment_aggregates")} WHERE exp_id = 'e1'"""
    ).collect()
    return {tuple(r[:4]): tuple(r[4:]) for r in rows}


def test_percentile_cap_pooled_per_analysis_date(spark, settings, fixture_tables, tmp_path):
    _set_metrics(spark, settings, _revenue({"percentile": 0.5}))
    _build(settings, tmp_path, "--full-refresh")

    got = _capped(spark, settings)
    #             sum_value  value_cap  sum_value_capped  sum_sqr_value_capped
    purchases = {k: v for k, v in got.items() if k[2] == "purchase"}
    assert purchases == {
        ("2026-11-02", 1, "purchase"): (20.0, 20.0, 20.0, 400.0),
        ("2026-11-03", 0, "purchase"): (10.0, 15.0, 10.0, 100.0),
        ("2026-11-03", 1, "purchase"): (20.0, 15.0, 15.0, 225.0),
        ("2026-11-04", 0, "purchase"): (10.0, 17.5, 10.0, 100.0),
        ("2026-11-04", 1, "purchase"): (25.0, 17.5, 17.5, 306.25),
    }
    # goals no metric caps: the capping columns are null, the others as without capping
    assert got[("2026-11-04", 0, "click")] == (0.0, None, None, None)
    # per platform the percentile is over the platform's units: one unit each, cap = its value
    assert _capped(spark, settings, "android")[("2026-11-04", 1, "purchase")] == (
        25.0, 25.0, 25.0, 625.0
    )  # fmt: skip

    # the engine reads the capped sums for the capped metric, the plain ones otherwise
    goals = (
        spark.sql(
            f"SELECT * FROM {settings.table('goal_aggregates')} "
            "WHERE as_of_date = DATE '2026-11-04' AND exp_id = 'e1' AND platform = ''"
        )
        .toPandas()
        .drop(columns=["as_of_date", "platform"])
    )
    design = {
        "experiment_id": "e1",
        "variants": [{"vid": 0, "is_control": True, "weight": 1}, {"vid": 1, "weight": 1}],
        "metrics": _revenue({"percentile": 0.5}),
    }
    m = evaluate(goals, [design]).metrics.set_index(["metric_id", "variant"])
    assert m.loc[("revenue", "1"), "sum_value"] == 17.5  # not 25
    assert m.loc[("revenue", "0"), "mean"] == 5.0  # 10 over two exposed units

    # per segment: the experiment's cap of 11-04 (17.5, pooled), not a cap per segment; u1
    # (control: US, ios, 2, returning, pro) 10.0 -> 10.0, u2 (treatment: DE, android, 1, new,
    # free) 25.0 -> 17.5; u4 (control) has no purchase. Each dimension adds up to the overall row.
    seg = _segment_capped(spark, settings)
    assert seg[(0, "country", "US", "purchase")] == (10.0, 17.5, 10.0, 100.0)
    assert seg[(1, "country", "DE", "purchase")] == (25.0, 17.5, 17.5, 306.25)
    assert seg[(0, "plan", "pro", "purchase")] == (10.0, 17.5, 10.0, 100.0)
    assert seg[(0, "plan", "pro", "click")][1:] == (None, None, None)  # uncapped goal: null
    assert seg[(0, "plan", "pro", "exposure")][1:] == (None, None, None)
    for dim in ("country", "platform", "app_version_major", "visitor", "plan"):
        for variant in (0, 1):
            summed = [
                sum(v[i] for k, v in seg.items() if k[:2] == (variant, dim) and k[3] == "purchase")
                for i in (0, 2, 3)
            ]
            overall = got[("2026-11-04", variant, "purchase")]
            assert tuple(summed) == (overall[0], overall[2], overall[3]), (dim, variant)

    # the segment evaluation reads them: the capped metric per segment
    seg_goals = (
        spark.table(settings.table("goal_segment_aggregates"))
        .where("exp_id = 'e1'")
        .toPandas()
        .drop(columns=["as_of_date"])
    )
    rows = evaluate_segments(seg_goals, [design]).segments.set_index(
        ["metric_id", "dimension", "segment", "variant"]
    )
    assert rows.loc[("revenue", "plan", "pro", "0"), "mean"] == 5.0  # 10 over u1 and u4
    assert ("revenue", "country", "DE", "1") in rows.index  # u2 alone: too few units for a mean


def test_capping_columns_added_to_a_table_of_the_previous_version(
    spark, settings, fixture_tables, tmp_path
):
    """goal_aggregates written before capping existed has none of its columns: an incremental
    run adds them in place (on_schema_change) and fills the days it recomputes."""
    _build(settings, tmp_path, "--full-refresh")
    table = settings.table("goal_aggregates")
    before = spark.sql(f"SELECT count(*) FROM {table}").collect()[0][0]
    spark.sql(f"ALTER TABLE {table} DROP COLUMNS ({', '.join(CAPPED)})")
    snapshots = spark.sql(f"SELECT count(*) FROM {table}.snapshots").collect()[0][0]
    # the segment tables (dbt `table`s: replaced in place by each run, history kept)
    segment_table = settings.table("goal_segment_aggregates")
    spark.sql(f"ALTER TABLE {segment_table} DROP COLUMNS ({', '.join(CAPPED)})")
    spark.sql(f"ALTER TABLE {settings.table('int_segment_unit_goals')} DROP COLUMN value_cap")
    segment_snapshots = spark.sql(f"SELECT count(*) FROM {segment_table}.snapshots").first()[0]

    _set_metrics(spark, settings, _revenue({"value": 15}))
    _build(settings, tmp_path)

    assert set(CAPPED) <= set(spark.table(table).columns)
    assert spark.sql(f"SELECT count(*) FROM {table}.snapshots").collect()[0][0] > snapshots
    assert spark.sql(f"SELECT count(*) FROM {table}").collect()[0][0] == before
    got = _capped(spark, settings)
    assert got[("2026-11-04", 1, "purchase")] == (25.0, 15.0, 15.0, 225.0)
    assert got[("2026-11-04", 0, "purchase")] == (10.0, 15.0, 10.0, 100.0)
    assert set(CAPPED) <= set(spark.table(segment_table).columns)
    assert spark.sql(f"SELECT count(*) FROM {segment_table}.snapshots").first()[0] > (
        segment_snapshots
    )  # not dropped and created anew
    seg = _segment_capped(spark, settings)
    assert seg[(1, "country", "DE", "purchase")] == (25.0, 15.0, 15.0, 225.0)
    assert seg[(0, "country", "US", "purchase")] == (10.0, 15.0, 10.0, 100.0)
