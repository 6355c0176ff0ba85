"""Iceberg table maintenance: compact small files, expire old snapshots, remove orphan files.

Every commit to an Iceberg table adds a snapshot, incremental writes (dbt's merges, the exposure
ingest, each evaluation's overwrite of ``results``) add small files, and a write that failed
leaves files no snapshot references. :func:`maintain` runs Iceberg's Spark procedures on every
table Strata writes (``contracts.TABLES``; the tables that do not exist yet are skipped), one
table after another, in this order:

1. ``rewrite_data_files`` (binpack): files under 75% of the table's target size
   (``write.target-file-size-bytes``, Iceberg's 512 MB unless the table sets its own) are
   rewritten together, but only in groups of at least ``maintenance_min_input_files``
   (``STRATA_MAINTENANCE_MIN_INPUT_FILES``, 5): a table of a few files is not rewritten.
2. ``expire_snapshots``: snapshots older than ``maintenance_snapshot_days`` (7) are expired and
   the files only they reference deleted, always keeping the last ``maintenance_keep_snapshots``
   (5). Time travel, ``strata.stats.reproduce`` (a results row records the snapshot ids of its
   inputs) and the lookup loader's ``recover`` / ``rollback`` (a publication records the
   snapshots it read) work within that window only; past it they fail with a message naming
   the table and the expired snapshot.
3. ``remove_orphan_files``: files under the table's location that no snapshot references and
   older than ``maintenance_orphan_hours`` (72) are deleted. A job's files are unreferenced
   until it commits, so the age must exceed the longest write; Iceberg's procedure refuses
   less than 24 hours (checked against Iceberg 1.10.1, ``jvm/pom.xml``), and so do the settings.

On an ``s3://`` warehouse (the REST catalog deployment) orphan removal lists the table's files
with ``prefix_listing`` (Iceberg's S3FileIO, the same endpoint and credentials as the catalog's
FileIO) instead of Hadoop's file system; that path is not yet run by ``make test-cluster``.

The rows are never changed: compaction commits a ``replace`` snapshot of the same rows. Tables
written with pyiceberg (``results``) are maintained the same way: Spark and pyiceberg share the
catalog (``strata.stack``). A commit of another writer during maintenance wins: the procedure
fails for that table (reported, the others go on) and the next run compacts it.

Pure orchestration of SQL (``CALL <catalog>.system.<procedure>``); the caller passes the
SparkSession, so importing this module needs no JVM.

Usage:
    >>> from strata.config import Settings
    >>> s = Settings(home="/tmp/strata-doc", maintenance_snapshot_days=7)
    >>> now = dt.datetime(2026, 12, 3, 4, 0, tzinfo=dt.UTC)
    >>> print(procedure_calls(s, "results", now)[1])
    CALL spark_catalog.system.expire_snapshots(table => 'strata.results', older_than => TIMESTAMP '2026-11-26 04:00:00.000000', retain_last => 5)
"""  # noqa: E501

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from strata import contracts
from strata.config import Settings, get_settings
from strata.errors import StackError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("strata.maintenance")


class MaintenanceError(StackError):
    """Maintenance failed on at least one table; the message names each and its error."""


@dataclass
class TableMaintenance:
    """What maintenance did to one table (``state``: ``maintained``, ``missing`` or ``failed``)."""

    table: str
    state: str = "maintained"
    snapshots_before: int = 0
    snapshots_after: int = 0
    data_files_before: int = 0
    data_files_after: int = 0
    rewritten_files: int = 0
    added_files: int = 0
    expired_files: int = 0
    orphan_files: int = 0
    seconds: float = 0.0
    error: str | None = None
    orphans: list[str] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """One log line."""
        if self.state != "maintained":
            return f"{self.table}: {self.state}" + (f" ({self.error})" if self.error else "")
        return (
            f"{self.table}: snapshots {self.snapshots_before} -> {self.snapshots_after}, data "
            f"files {self.data_files_before} -> {self.data_files_after} (rewrote "
            f"{self.rewritten_files} into {self.added_files}), {self.expired_files} expired "
            f"files and {self.orphan_files} orphan files deleted, {self.seconds:.1f} s"
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("orphans")
        return out


def _timestamp(moment: dt.datetime) -> str:
    """A Spark SQL ``TIMESTAMP`` literal in UTC (Strata's sessions run in UTC)."""
    return f"TIMESTAMP '{moment.astimezone(dt.UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def procedure_calls(settings: Settings, table: str, now: dt.datetime) -> list[str]:
    """The three ``CALL`` statements for ``table`` (a name in the namespace) at ``now``:
    rewrite_data_files, expire_snapshots, remove_orphan_files."""
    if table not in contracts.TABLES:
        raise ValueError(f"{table!r} is not a Strata table; known: {', '.join(contracts.TABLES)}")
    system = f"{settings.catalog_name}.system"
    ident = _quote(f"{settings.namespace}.{table}")
    expire_before = now - dt.timedelta(days=settings.maintenance_snapshot_days)
    orphan_before = now - dt.timedelta(hours=settings.maintenance_orphan_hours)
    return [
        f"CALL {system}.rewrite_data_files(table => {ident}, strategy => 'binpack', "
        f"options => map('min-input-files', '{settings.maintenance_min_input_files}'))",
        f"CALL {system}.expire_snapshots(table => {ident}, older_than => "
        f"{_timestamp(expire_before)}, retain_last => {settings.maintenance_keep_snapshots})",
        f"CALL {system}.remove_orphan_files(table => {ident}, older_than => "
        f"{_timestamp(orphan_before)}"
        # on object storage, list the table's files through Iceberg's S3FileIO (the catalog's
        # endpoint and credentials) rather than Hadoop's S3A
        + (", prefix_listing => true)" if settings.warehouse_is_s3 else ")"),
    ]


def _counts(spark: SparkSession, full: str) -> tuple[int, int]:
    """(snapshots, data files of the current snapshot) from the table's metadata tables."""
    snapshots = spark.sql(f"SELECT count(*) AS n FROM {full}.snapshots").first()
    files = spark.sql(f"SELECT count(*) AS n FROM {full}.data_files").first()
    return int(snapshots["n"] if snapshots else 0), int(files["n"] if files else 0)


def maintain_table(
    spark: SparkSession,
    table: str,
    settings: Settings | None = None,
    now: dt.datetime | None = None,
) -> TableMaintenance:
    """Compact, expire and remove orphans on one table; a missing table is ``missing``.

    Raises what the procedures raise (the caller decides whether one table's failure stops
    the others: :func:`maintain` goes on)."""
    settings = settings or get_settings()
    now = now or dt.datetime.now(dt.UTC)
    full = settings.table(table)
    result = TableMaintenance(table)
    calls = procedure_calls(settings, table, now)  # refuses an unknown table first
    if not spark.catalog.tableExists(full):
        result.state = "missing"
        return result
    started = time.perf_counter()
    result.snapshots_before, result.data_files_before = _counts(spark, full)
    rewrite, expire, orphans = calls
    row = spark.sql(rewrite).first()
    if row is not None:
        result.rewritten_files = int(row["rewritten_data_files_count"])
        result.added_files = int(row["added_data_files_count"])
    row = spark.sql(expire).first()
    if row is not None:
        result.expired_files = sum(
            int(row[c]) for c in row.asDict() if c.startswith("deleted_") and row[c] is not None
        )
    result.orphans = [r["orphan_file_location"] for r in spark.sql(orphans).collect()]
    result.orphan_files = len(result.orphans)
    result.snapshots_after, result.data_files_after = _counts(spark, full)
    result.seconds = time.perf_counter() - started
    return result


def error_line(exc: BaseException) -> str:
    """One line naming an error: for a JVM error (py4j) its root cause, e.g.
    ``java.io.FileNotFoundException: File file:/... does not exist``."""
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            while java.getCause() is not None:
                java = java.getCause()
            text = str(java.toString())
        except Exception:  # the JVM is gone: the Python side is all there is
            text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return (text.strip().splitlines() or [type(exc).__name__])[0][:500]


def maintain(
    spark: SparkSession,
    tables: Iterable[str] | None = None,
    settings: Settings | None = None,
    *,
    now: dt.datetime | None = None,
    raise_on_failure: bool = True,
) -> list[TableMaintenance]:
    """Maintain ``tables`` (default every Strata table, ``contracts.TABLES``) one after another.

    A table that fails does not stop the others; at the end :class:`MaintenanceError` names
    every failed table and its error (unless ``raise_on_failure`` is False: then the results
    carry ``state="failed"`` and the error).
    """
    settings = settings or get_settings()
    now = now or dt.datetime.now(dt.UTC)
    names: Sequence[str] = list(tables) if tables is not None else contracts.TABLES
    unknown = [t for t in names if t not in contracts.TABLES]
    if unknown:
        raise ValueError(f"not Strata tables: {unknown}; known: {', '.join(contracts.TABLES)}")
    if spark.conf.get(f"spark.sql.catalog.{settings.catalog_name}", None) is None:
        # Spark answers "no such table" for every table of an unknown catalog
        raise MaintenanceError(
            f"the Spark session has no catalog {settings.catalog_name!r} "
            "(STRATA_CATALOG_NAME); start it with strata.stack.spark_session"
        )
    results = []
    for name in names:
        try:
            result = maintain_table(spark, name, settings, now)
        except Exception as exc:  # one table's failure (a commit conflict) must not stop the rest
            result = TableMaintenance(name, state="failed", error=error_line(exc))
        log.info("maintenance: %s", result.summary())
        results.append(result)
    failed = [r for r in results if r.state == "failed"]
    if failed and raise_on_failure:
        raise MaintenanceError(
            f"table maintenance failed on {len(failed)} of {len(results)} tables: "
            + "; ".join(f"{r.table}: {r.error}" for r in failed)
        )
    return results
