"""dbt-spark builds incremental `merge` models on the embedded Iceberg catalog."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from spark_jobs.generate_synthetic import write_tables
from strata.contracts import dbt_vars
from strata.stack import write_dbt_profile
from strata.synthetic import GeneratorConfig

PROJECT = Path(__file__).resolve().parents[2] / "dbt_project"
pytestmark = pytest.mark.slow


def _build(profiles_dir: Path, *extra: str) -> None:
    from dbt.cli.main import dbtRunner

    result = dbtRunner().invoke(
        [
            "build",
            "--select",
            "stg_events__events",
            "stg_events__rejects",
            "--project-dir",
            str(PROJECT),
            "--profiles-dir",
            str(profiles_dir),
            "--target-path",
            str(profiles_dir / "target"),
            "--log-path",
            str(profiles_dir / "logs"),
            "--vars",
            json.dumps(dbt_vars()),
            *extra,
        ]
    )
    assert result.success, result.exception


def test_incremental_merge_builds_twice(spark, settings, tmp_path):
    write_tables(spark, GeneratorConfig(users=400, days=5, seed=2), settings.table)
    raw, stg = settings.table("raw_events"), settings.table("stg_events__events")
    profiles = write_dbt_profile(settings, tmp_path)

    _build(profiles)
    first = spark.table(stg).count()
    first_snapshot = spark.sql(f"SELECT max(committed_at) t FROM {stg}.snapshots").first().t
    old = spark.table(stg).orderBy("arrived_at").limit(5).collect()

    # Between runs: old raw rows vanish (a rebuild would lose them; a merge keeps them), one new
    # event arrives, and an already-loaded event is delivered again (the merge must not double it).
    old_ids = ", ".join(f"'{r.event_id}'" for r in old)
    spark.sql(f"DELETE FROM {raw} WHERE event_id IN ({old_ids})")
    newest = spark.table(stg).orderBy(F.col("arrived_at").desc()).first()
    later = newest.asDict()
    redelivered = later | {"arrived_at": newest.arrived_at + dt.timedelta(minutes=2)}
    new_event = later | {
        "event_id": "new-event-1",
        "event_name": "click",
        "value": None,
        "arrived_at": newest.arrived_at + dt.timedelta(minutes=1),
    }
    columns = spark.table(raw).columns
    spark.createDataFrame(
        [tuple(row[c] for c in columns) for row in (new_event, redelivered)],
        spark.table(raw).schema,
    ).writeTo(raw).append()

    _build(profiles)
    second = spark.table(stg)
    assert second.count() == first + 1
    assert second.where(f"event_id IN ({old_ids})").count() == 5  # kept: merged, not rebuilt
    assert second.where("event_id = 'new-event-1'").count() == 1
    assert second.where(f"event_id = '{newest.event_id}'").count() == 1
    assert second.groupBy("event_id").count().where("count > 1").count() == 0
    ops = spark.sql(
        f"SELECT operation FROM {stg}.snapshots WHERE committed_at > TIMESTAMP '{first_snapshot}'"
    )
    assert [r.operation for r in ops.collect()] == ["overwrite"]  # one MERGE commit, no replace
    merge_sql = (
        profiles
        / "target"
        / "run"
        / "strata"
        / "models"
        / "staging"
        / "events"
        / "stg_events__events.sql"
    ).read_text()
    assert "merge into" in merge_sql.lower()


def test_rejects_are_counted_not_dropped(spark, settings, tmp_path):
    write_tables(spark, GeneratorConfig(users=400, days=5, seed=2), settings.table)
    _build(write_dbt_profile(settings, tmp_path), "--full-refresh")
    raw = spark.table(settings.table("raw_events"))
    valid = spark.table(settings.table("stg_events__events")).count()
    rejects = spark.table(settings.table("stg_events__rejects")).count()
    duplicate_deliveries = (
        raw.where("event_id IS NOT NULL").count()
        - raw.where("event_id IS NOT NULL").select("event_id").distinct().count()
    )
    assert rejects > 0
    # Every raw row is either a valid event, a quarantined reject, or a repeat delivery.
    assert raw.count() == valid + rejects + duplicate_deliveries - _rejected_repeats(
        spark, settings
    )


def _rejected_repeats(spark, settings) -> int:
    """Repeat deliveries of rows that were rejected are counted in both groups above."""
    rej = spark.table(settings.table("stg_events__rejects")).where("event_id IS NOT NULL")
    return rej.count() - rej.select("event_id").distinct().count()
