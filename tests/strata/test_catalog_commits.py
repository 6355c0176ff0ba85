"""Spark commits on the embedded SQLite catalog survive other writers (issue 12, item 5).

Every task process opens its Spark session on a catalog file that already exists. Each test here
does the same with ``spark.newSession()``: a new session builds its own Iceberg ``JdbcCatalog``
and its own SQLite connection, initialised on the existing file — what a Cosmos dbt task or a
Spark job sees under the scheduler. Before the fix, that connection kept a read transaction open
from initialisation on (see docs/adr/0001), so the session read stale table metadata and every
commit after another writer's failed with ``SQLITE_BUSY_SNAPSHOT``, for the rest of the session.
"""

from __future__ import annotations

import sqlite3
import threading

import pyarrow as pa
import pytest
from pyiceberg.exceptions import CommitFailedException

from strata.config import Settings
from strata.stack import catalog_conf, iceberg_catalog

SCHEMA = pa.schema([("id", pa.int64()), ("writer", pa.string())])
#: Iceberg's conflict error: the writer lost a race and may retry; anything else is a bug.
JAVA_COMMIT_CONFLICT = "org.apache.iceberg.exceptions.CommitFailedException"


def _fresh_table(settings, name: str):
    """An empty table created by pyiceberg (dropped first if a previous run left it)."""
    catalog = iceberg_catalog(settings)
    ident = f"{settings.namespace}.{name}"
    if catalog.table_exists(ident):
        catalog.drop_table(ident)
    catalog.create_table(ident, schema=SCHEMA)
    return catalog, ident


def _py_append(catalog, ident: str, ids: list[int]) -> None:
    rows = pa.table({"id": ids, "writer": ["pyiceberg"] * len(ids)}, schema=SCHEMA)
    catalog.load_table(ident).append(rows)


def _ids(catalog, ident: str) -> list[int]:
    return sorted(catalog.load_table(ident).scan().to_arrow().column("id").to_pylist())


def _spark_ids(session, table: str) -> list[int]:
    return sorted(r.id for r in session.table(table).select("id").collect())


def _is_conflict(exc: BaseException) -> bool:
    """Iceberg's commit conflict, raised by pyiceberg or by Spark's Iceberg runtime."""
    if isinstance(exc, CommitFailedException):
        return True
    return any(c.startswith(JAVA_COMMIT_CONFLICT) for c in _java_chain(exc))


def _java_chain(exc: BaseException) -> list[str]:
    """Class names and messages of the Java exception behind a py4j / pyspark error."""
    java = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    chain = []
    while java is not None:
        chain.append(f"{java.getClass().getName()}: {java.getMessage()}")
        java = java.getCause()
    return chain or [repr(exc)]


class TestCatalogTablesBeforeSpark:
    def test_catalog_conf_creates_the_tables_spark_no_longer_creates(self, tmp_path):
        conf = catalog_conf(Settings(home=tmp_path, jars_dir=tmp_path))

        assert conf["spark.sql.catalog.spark_catalog.jdbc.init-catalog-tables"] == "false"
        with sqlite3.connect(tmp_path / "catalog.db") as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            columns = {r[1] for r in db.execute("PRAGMA table_info(iceberg_tables)")}
        assert {"iceberg_tables", "iceberg_namespace_properties"} <= tables
        assert "iceberg_type" in columns  # the V1 schema Spark's catalog is configured for

    def test_an_explicit_uri_keeps_icebergs_own_table_creation(self, tmp_path):
        uri = f"jdbc:sqlite:{tmp_path / 'other.db'}"
        conf = catalog_conf(Settings(home=tmp_path, jars_dir=tmp_path, catalog_uri=uri))

        assert "spark.sql.catalog.spark_catalog.jdbc.init-catalog-tables" not in conf
        assert not (tmp_path / "catalog.db").exists()


class TestSparkCommitAfterAnotherWriter:
    def test_spark_commit_lands_and_session_keeps_working(self, spark, settings):
        catalog, ident = _fresh_table(settings, "catalog_commits_ordered")
        _py_append(catalog, ident, [1])
        table = settings.table("catalog_commits_ordered")
        session = spark.newSession()  # its catalog initialises on the existing file

        assert _spark_ids(session, table) == [1]  # 1. Spark reads
        _py_append(catalog, ident, [2])  # 2. pyiceberg commits
        session.sql(f"INSERT INTO {table} VALUES (3, 'spark')")  # 3. Spark commits
        _py_append(catalog, ident, [4])  # the session keeps working: more rounds
        session.sql(f"INSERT INTO {table} VALUES (5, 'spark')")
        session.sql(f"INSERT INTO {table} VALUES (6, 'spark')")

        assert _ids(catalog, ident) == [1, 2, 3, 4, 5, 6]
        assert _spark_ids(session, table) == [1, 2, 3, 4, 5, 6]  # and sees pyiceberg's commits


@pytest.mark.slow
class TestConcurrentCommits:
    """A fixed number of rounds; in each, two writers commit to one table at the same time."""

    ROUNDS = 8
    #: Bound on the other writer's commits per round when it keeps committing (pyiceberg).
    MAX_OTHER_PER_ROUND = 20

    def _race(self, spark_commit, other_commit, *, other_repeats: bool):
        """Run both writers; returns (writer, id, error or None) for every commit attempted.

        A barrier starts each round. Spark commits once per round; the other writer commits once
        too, or (``other_repeats``) again and again until Spark's commit of the round returns, so
        its commits fall inside Spark's whole write, its commit step included.
        """
        barrier = threading.Barrier(2, timeout=300)
        spark_done = threading.Event()
        outcomes: list[tuple[str, int, BaseException | None]] = []

        def attempt(writer: str, commit, id_: int) -> None:
            try:
                commit(id_)
                outcomes.append((writer, id_, None))
            except Exception as exc:  # judged by the caller: a conflict is fine, nothing else
                outcomes.append((writer, id_, exc))

        def other() -> None:
            next_id = 1000
            for _ in range(self.ROUNDS):
                barrier.wait()
                for _ in range(self.MAX_OTHER_PER_ROUND if other_repeats else 1):
                    attempt("other", other_commit, next_id)
                    next_id += 1
                    if spark_done.is_set():
                        break
                barrier.wait()

        thread = threading.Thread(target=other)
        thread.start()
        for r in range(self.ROUNDS):
            spark_done.clear()
            barrier.wait()
            attempt("spark", spark_commit, r)
            spark_done.set()
            barrier.wait()
        thread.join()
        return outcomes

    def _check(self, outcomes, catalog, ident, session, table) -> None:
        # Both writers retry a conflict (Iceberg's commit retries in Spark, pyiceberg's own);
        # one that still loses says so with CommitFailedException, nothing else.
        unclear = [
            (writer, id_, _java_chain(exc))
            for writer, id_, exc in outcomes
            if exc is not None and not _is_conflict(exc)
        ]
        assert unclear == [], f"commits failed with an unclear error: {unclear}"
        landed = sorted(id_ for _, id_, exc in outcomes if exc is None)
        spark_landed = [id_ for writer, id_, exc in outcomes if writer == "spark" and exc is None]
        assert spark_landed, f"no Spark commit landed: {outcomes}"
        assert _ids(catalog, ident) == landed  # nothing lost, nothing from a failed commit
        assert _spark_ids(session, table) == landed
        # Once the other writer is gone the session commits at the first attempt.
        session.sql(f"INSERT INTO {table} VALUES (-1, 'spark')")
        assert _ids(catalog, ident) == [-1, *landed]

    def test_spark_and_pyiceberg(self, spark, settings):
        catalog, ident = _fresh_table(settings, "catalog_commits_race_py")
        table = settings.table("catalog_commits_race_py")
        session = spark.newSession()
        assert _spark_ids(session, table) == []
        writer_catalog = iceberg_catalog(settings)

        outcomes = self._race(
            lambda i: session.sql(f"INSERT INTO {table} VALUES ({i}, 'spark')"),
            lambda i: _py_append(writer_catalog, ident, [i]),
            other_repeats=True,
        )

        self._check(outcomes, catalog, ident, session, table)

    def test_two_spark_sessions(self, spark, settings):
        catalog, ident = _fresh_table(settings, "catalog_commits_race_spark")
        table = settings.table("catalog_commits_race_spark")
        first, second = spark.newSession(), spark.newSession()
        assert _spark_ids(first, table) == _spark_ids(second, table) == []

        outcomes = self._race(
            lambda i: first.sql(f"INSERT INTO {table} VALUES ({i}, 'spark')"),
            lambda i: second.sql(f"INSERT INTO {table} VALUES ({i}, 'spark-2')"),
            other_repeats=False,
        )

        self._check(outcomes, catalog, ident, first, table)
