"""Table maintenance on real Spark + Iceberg (the embedded JDBC catalog): compaction, snapshot
expiry and orphan removal leave every row in place, on a Spark-written table and on one written
with pyiceberg (as ``results`` is); and what the retention means for ``reproduce``."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pytest

from strata import contracts
from strata.config import Settings
from strata.maintenance import MaintenanceError, maintain
from strata.stack import iceberg_catalog

NAMESPACE = "maintenance_test"
WRITES = 6
KEEP = 2


@pytest.fixture(scope="module")
def maint_settings(settings, spark):
    """Settings on a namespace of their own, expiring every snapshot past the last KEEP."""
    ours = settings.model_copy(
        update={
            "namespace": NAMESPACE,
            "maintenance_snapshot_days": 0,
            "maintenance_keep_snapshots": KEEP,
            "maintenance_orphan_hours": 72,
            "maintenance_min_input_files": 2,
        }
    )
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {settings.catalog_name}.{NAMESPACE}")
    return ours


def test_procedure_calls_follow_the_settings():
    """The statements (pure): retention from the settings, prefix listing on object storage."""
    from strata.maintenance import procedure_calls

    now = dt.datetime(2026, 12, 3, 4, 0, tzinfo=dt.UTC)
    s = Settings(
        home="/tmp/strata-unit", maintenance_snapshot_days=2.5, maintenance_orphan_hours=30
    )
    rewrite, expire, orphans = procedure_calls(s, contracts.RESULTS, now)
    assert "options => map('min-input-files', '5')" in rewrite
    assert "older_than => TIMESTAMP '2026-11-30 16:00:00.000000', retain_last => 5" in expire
    assert orphans.endswith("older_than => TIMESTAMP '2026-12-01 22:00:00.000000')")
    on_s3 = s.model_copy(update={"warehouse": "s3://bucket/warehouse"})
    assert procedure_calls(on_s3, contracts.RESULTS, now)[2].endswith(", prefix_listing => true)")
    with pytest.raises(ValueError, match="not a Strata table"):
        procedure_calls(s, "users; DROP TABLE x", now)


def _table_dir(spark, full: str) -> Path:
    """The table's folder on this machine (the embedded warehouse is local)."""
    location = spark.sql(f"DESCRIBE TABLE EXTENDED {full}").where("col_name = 'Location'")
    return Path(urlparse(location.first()["data_type"]).path)


def _plant_orphan(folder: Path, name: str, age: dt.timedelta) -> Path:
    """A file no snapshot references (what a failed write leaves), ``age`` old."""
    folder.mkdir(parents=True, exist_ok=True)
    orphan = folder / name
    orphan.write_bytes(b"PAR1 not referenced by any snapshot")
    old = time.time() - age.total_seconds()
    os.utime(orphan, (old, old))
    return orphan


def _rows(spark, full: str) -> list[tuple]:
    return sorted(tuple(r) for r in spark.table(full).collect())


def test_maintenance_compacts_expires_and_removes_orphans(spark, maint_settings):
    s = maint_settings
    full = s.table(contracts.RAW_EVENTS)
    spark.sql(f"DROP TABLE IF EXISTS {full} PURGE")
    spark.sql(f"CREATE TABLE {full} (id BIGINT, goal STRING) USING iceberg")
    for i in range(WRITES):  # one small file and one snapshot per write
        spark.sql(f"INSERT INTO {full} VALUES ({2 * i}, 'click'), ({2 * i + 1}, 'purchase')")
    rows = _rows(spark, full)
    folder = _table_dir(spark, full) / "data"
    old_orphan = _plant_orphan(folder, "failed-write-00001.parquet", dt.timedelta(days=5))
    young_orphan = _plant_orphan(folder, "in-flight-00002.parquet", dt.timedelta(minutes=5))
    files_on_disk = len(list(folder.glob("*.parquet")))

    (result,) = maintain(spark, [contracts.RAW_EVENTS], s)

    assert result.state == "maintained", result
    assert result.snapshots_before == WRITES
    assert result.data_files_before >= WRITES  # one per write and core
    assert (result.rewritten_files, result.added_files) == (result.data_files_before, 1)
    assert result.snapshots_after == KEEP == spark.table(f"{full}.snapshots").count()
    assert result.data_files_after == 1 == spark.table(f"{full}.data_files").count()
    assert not old_orphan.exists(), "an orphan older than the threshold is removed"
    assert [Path(urlparse(o).path).name for o in result.orphans] == [old_orphan.name]
    assert young_orphan.exists(), "a file younger than the threshold may be an in-flight write"
    assert result.expired_files > 0  # the expired snapshots' manifests and manifest lists
    assert _rows(spark, full) == rows

    again = maintain(spark, [contracts.RAW_EVENTS], s)[0]  # nothing left to compact
    assert (again.rewritten_files, again.orphan_files) == (0, 0)
    assert again.snapshots_after == KEEP

    # the small files go once no kept snapshot references them: keep only the compacted one
    last = maintain(
        spark, [contracts.RAW_EVENTS], s.model_copy(update={"maintenance_keep_snapshots": 1})
    )[0]
    assert last.snapshots_after == 1
    assert last.expired_files >= result.data_files_before
    assert sorted(p.name for p in folder.glob("*.parquet")) == sorted(
        [Path(urlparse(f).path).name for f in _data_files(spark, full)] + [young_orphan.name]
    )
    assert len(list(folder.glob("*.parquet"))) == 2 < files_on_disk
    assert _rows(spark, full) == rows


def _data_files(spark, full: str) -> list[str]:
    return [r.file_path for r in spark.sql(f"SELECT file_path FROM {full}.data_files").collect()]


def test_pyiceberg_written_table_is_maintained_through_the_shared_catalog(spark, maint_settings):
    """``results`` is written with pyiceberg; Spark maintains it on the same catalog, and
    pyiceberg reads the same rows afterwards."""
    s = maint_settings
    catalog = iceberg_catalog(s)
    ident = f"{NAMESPACE}.{contracts.RESULTS}"
    if catalog.table_exists(ident):
        catalog.purge_table(ident)
    schema = pa.schema([("experiment_id", pa.string()), ("value", pa.float64())])
    table = catalog.create_table(ident, schema=schema)
    for i in range(4):
        table.append(pa.table({"experiment_id": [f"exp_{i}"], "value": [i / 2]}, schema=schema))
    before = table.scan().to_arrow().sort_by("experiment_id")
    orphan = _plant_orphan(
        Path(urlparse(table.location()).path) / "data", "lost.parquet", dt.timedelta(days=4)
    )

    (result,) = maintain(spark, [contracts.RESULTS], s)

    assert result.state == "maintained", result
    assert result.snapshots_after == KEEP
    assert result.data_files_after == 1
    assert not orphan.exists()
    after = catalog.load_table(ident)
    assert after.scan().to_arrow().sort_by("experiment_id").equals(before)
    assert len(after.snapshots()) == KEEP


def test_missing_tables_are_skipped_and_failures_named(spark, maint_settings):
    results = maintain(spark, [contracts.GOAL_CROSS_AGGREGATES], maint_settings)
    assert [(r.table, r.state) for r in results] == [(contracts.GOAL_CROSS_AGGREGATES, "missing")]
    with pytest.raises(ValueError, match="not Strata tables"):
        maintain(spark, ["no_such_table"], maint_settings)

    # a table that cannot be maintained (a data file deleted by hand: the compaction cannot
    # read it) is named with its error, and the other tables are still maintained
    for name in (contracts.ORGS, contracts.USERS):
        full = maint_settings.table(name)
        spark.sql(f"DROP TABLE IF EXISTS {full} PURGE")
        spark.sql(f"CREATE TABLE {full} (id BIGINT) USING iceberg")
        for i in range(3):
            spark.sql(f"INSERT INTO {full} VALUES ({i})")
    lost = _data_files(spark, maint_settings.table(contracts.ORGS))[0]
    Path(urlparse(lost).path).unlink()
    tried = maintain(
        spark, [contracts.ORGS, contracts.USERS], maint_settings, raise_on_failure=False
    )
    assert [(r.table, r.state) for r in tried] == [
        (contracts.ORGS, "failed"),
        (contracts.USERS, "maintained"),
    ]
    assert Path(urlparse(lost).path).name in (tried[0].error or ""), tried[0].error
    with pytest.raises(MaintenanceError, match="failed on 1 of 2 tables: orgs: "):
        maintain(spark, [contracts.ORGS, contracts.USERS], maint_settings)

    # a catalog this session does not know is an error, not "every table missing"
    bad = maint_settings.model_copy(update={"catalog_name": "no_such_catalog"})
    with pytest.raises(MaintenanceError, match="no_such_catalog"):
        maintain(spark, [contracts.ORGS], bad)

    # Iceberg's procedure refuses an orphan age under 24 hours (in-flight writes); so do the
    # settings, before any Spark work
    young = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with pytest.raises(Exception, match="less than 24 hours"):
        spark.sql(
            f"CALL {maint_settings.catalog_name}.system.remove_orphan_files(table => "
            f"'{NAMESPACE}.{contracts.USERS}', older_than => "
            f"TIMESTAMP '{young:%Y-%m-%d %H:%M:%S}')"
        )
    with pytest.raises(ValueError, match="greater than or equal to 24"):
        Settings(maintenance_orphan_hours=2)


def test_cli_maintains_the_tables_named(spark, settings, capsys, monkeypatch):
    """On a namespace of its own: the session's tables (other tests') are neither touched nor
    make a table of this test exist."""
    from strata.config import get_settings
    from strata_apps.cli import main

    namespace = "maintenance_cli_test"
    monkeypatch.setenv("STRATA_NAMESPACE", namespace)
    get_settings.cache_clear()
    try:
        ours = get_settings()
        spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {ours.catalog_name}.{namespace}")
        full = ours.table(contracts.DEVICES)
        spark.sql(f"DROP TABLE IF EXISTS {full} PURGE")
        spark.sql(f"CREATE TABLE {full} (device_id STRING) USING iceberg")
        spark.sql(f"INSERT INTO {full} VALUES ('d-1')")
        assert main(["maintain", contracts.DEVICES, contracts.GOAL_CROSS_AGGREGATES]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"{contracts.DEVICES}: snapshots 1 -> 1, data files 1 -> 1")
        assert out[1] == f"{contracts.GOAL_CROSS_AGGREGATES}: missing"
        assert main(["maintain", "no_such_table"]) == 2
        assert "not Strata tables: no_such_table" in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
