"""Sticky ramps in the Spark job (issue #16, item 3): two assignment runs over synthetic users,
day 1 with the ramped experiment at 10% treatment, day 2 ramped to 50% with new users arriving.
Previously assigned units keep their variant; new ones split within 1 pp of the new target; the
``assignments`` table written by the schema before ``first_assigned_date`` evolves in place."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest
from pyspark.sql import functions as F

from spark_jobs.assign_experiments import (
    ASSIGNMENT_FIELDS,
    ASSIGNMENTS_SCHEMA,
    run,
    transform,
    unit_contexts,
)
from spark_jobs.generate_synthetic import build_all
from strata.assignment import Previous, assign_unit
from strata.definitions import bundled_path, load
from strata.synthetic import GeneratorConfig

CFG = GeneratorConfig(users=40_000, days=1, seed=11)
DAY1 = dt.date(2026, 11, 8)  # the demo's first day
DAY2 = dt.date(2026, 11, 9)
RAMP = """
layers:
  - {id: ramp_layer, salt: ramp-layer-salt, unit_type: user_id, priority: 900}
experiments:
  - id: ramped
    name: Ramped banner
    owner: growth
    layer: ramp_layer
    status: running
    start_date: 2026-11-08
    end_date: 2026-11-30
    slots: [0, 10000]
    variants:
      - {vid: 19001, name: control, is_control: true, weight: 90}
      - {vid: 19002, name: treatment, weight: 10}
    ramp:
      - date: 2026-11-09
        weights: {control: 50, treatment: 50}
"""
NEW_COLUMNS = ("first_assigned_date", "ramp_period")


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("defs")
    shutil.copytree(bundled_path(), folder, dirs_exist_ok=True)
    (folder / "ramp.yaml").write_text(RAMP)
    return load(folder)


@pytest.fixture(scope="module")
def runs(spark, settings, defs):
    """Day 0: an ``assignments`` table in the old schema (bundled experiments only); day 1: half
    the users, ``ramped`` at 10%; day 2: every user, ``ramped`` at 50%."""
    tables = build_all(spark, CFG)
    users = tables["users"].cache()
    day1_users = users.where(F.pmod(F.xxhash64("user_id"), F.lit(2)) == 0)
    for name in ("orgs", "devices"):
        tables[name].writeTo(settings.table(name)).using("iceberg").createOrReplace()
    day1_users.writeTo(settings.table("users")).using("iceberg").createOrReplace()
    name = settings.table("assignments")
    spark.sql(f"DROP TABLE IF EXISTS {name}")
    units = unit_contexts(
        spark.table(settings.table("users")),
        spark.table(settings.table("orgs")),
        spark.table(settings.table("devices")),
    )
    old = transform(units, load(bundled_path()), "old", dt.datetime(2026, 11, 7), DAY1)
    old.drop(*NEW_COLUMNS).writeTo(name).using("iceberg").partitionedBy(
        F.col("unit_type")
    ).tableProperty("format-version", "2").createOrReplace()
    old_rows = {tuple(r) for r in spark.table(name).collect()}
    snapshots_before = spark.sql(f"SELECT * FROM {name}.snapshots").count()
    first = run(spark, settings, defs, DAY1)
    day1 = spark.table(name).collect()  # rows, not a cached plan: the next run replaces it
    users.writeTo(settings.table("users")).using("iceberg").createOrReplace()  # new users join
    second = run(spark, settings, defs, DAY2)
    day2 = spark.table(name).collect()
    out = {
        "first": first,
        "second": second,
        "old_rows": old_rows,
        "day1": day1,
        "day2": day2,
        "snapshots": (snapshots_before, spark.sql(f"SELECT * FROM {name}.snapshots").count()),
    }
    yield out
    spark.sql(f"DROP TABLE IF EXISTS {name}")  # other modules start without a previous snapshot


def _ramped(rows):
    return [r for r in rows if r.experiment_id == "ramped"]


def test_the_old_table_evolves_in_place(spark, settings, runs):
    before, after = runs["snapshots"]
    assert after == before + 2  # same table, two more commits, history kept
    schema = spark.table(settings.table("assignments")).schema
    assert [f.name for f in schema.fields] == [
        part.strip().split(" ")[0] for part in ASSIGNMENTS_SCHEMA.split(",")
    ]
    # rows of the old schema keep their variant; their first day reads as the start date
    starts = {e.id: e.start_date for e in load(bundled_path()).experiments}
    got = [r for r in runs["day1"] if r.experiment_id != "ramped"]
    old = {(r[1], r[2], r[3]) for r in runs["old_rows"]}
    assert {(r.unit_id, r.experiment_id, r.variant_id) for r in got} == old
    assert all(r.first_assigned_date == starts[r.experiment_id] for r in got)


def test_day1_splits_ramped_at_ten_percent(runs):
    rows = _ramped(runs["day1"])
    assert rows
    share = sum(r.variant_name == "treatment" for r in rows) / len(rows)
    assert abs(share - 0.10) <= 0.01, share
    assert {(r.first_assigned_date, r.ramp_period) for r in rows} == {(DAY1, 0)}


def test_day2_keeps_every_day1_unit_and_splits_new_units_at_fifty_percent(runs):
    day1 = {r.unit_id: r for r in _ramped(runs["day1"])}
    day2 = {r.unit_id: r for r in _ramped(runs["day2"])}
    kept = [day2.get(u) for u in day1]
    assert all(k is not None for k in kept)
    same = sum(
        (k.variant_id, k.slot, k.first_assigned_date, k.ramp_period)
        == (day1[k.unit_id].variant_id, day1[k.unit_id].slot, DAY1, 0)
        for k in kept
    )
    assert same == len(day1)  # 100% of previously assigned units keep their variant
    new = [r for u, r in day2.items() if u not in day1]
    assert len(new) > 15_000
    assert {(r.first_assigned_date, r.ramp_period) for r in new} == {(DAY2, 1)}
    share = sum(r.variant_name == "treatment" for r in new) / len(new)
    assert abs(share - 0.50) <= 0.01, share
    # without stickiness ~40% of the day-1 units would have moved (slots [5000, 9000))
    moved = sum(5000 <= r.slot < 9000 for r in day1.values()) / len(day1)
    assert moved > 0.35
    # the run id names the ramp period: day 1 and day 2 differ although inputs equal
    assert runs["first"]["run_id"] != runs["second"]["run_id"]


def test_day2_agrees_with_the_python_reference(spark, settings, defs, runs):
    """The reference with ``previous`` from the day-1 snapshot gives the same day-2 rows."""
    previous: dict[str, dict[str, Previous]] = {}
    for r in (r for r in runs["day1"] if r.unit_type == "user_id"):
        previous.setdefault(r.unit_id, {})[r.experiment_id] = Previous(
            r.variant_id, r.slot, r.first_assigned_date
        )
    units = unit_contexts(
        spark.table(settings.table("users")),
        spark.table(settings.table("orgs")),
        spark.table(settings.table("devices")),
    )
    expected = set()
    for row in units["user_id"].toLocalIterator():
        ctx = row.asDict()
        uid = ctx["user_id"]
        expected |= {
            a.key()
            for a in assign_unit(
                defs, "user_id", uid, ctx, as_of=DAY2, previous=previous.get(uid, {})
            )
        }
    key = ["unit_type", "unit_id", *[n for n, _ in ASSIGNMENT_FIELDS]]
    got = {tuple(r[k] for k in key) for r in runs["day2"] if r.unit_type == "user_id"}
    assert got == expected


def test_nightly_ramp_srm_reads_the_cohorts_from_iceberg(settings, runs):
    from strata.stack import iceberg_catalog
    from strata.stats.ramps import read_ramp_srm

    out = read_ramp_srm(iceberg_catalog(settings))
    assert list(out["exp_id"]) == ["ramped"]  # the bundled experiments have no ramp
    row = out.iloc[0]
    ramped = _ramped(runs["day2"])
    by_cell = [[0.0, 0.0], [0.0, 0.0]]
    for r in ramped:
        by_cell[r.ramp_period][r.variant_id - 19001] += 1
    assert row["observed"] == by_cell
    assert row["expected_share"] == [[0.9, 0.1], [0.5, 0.5]]
    assert row["dof"] == 2
    assert row["passed"], row["p_value"]  # hashing splits as designed in both cohorts
