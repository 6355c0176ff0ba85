"""One whole Strata pipeline in one process, on whatever stack the ``STRATA_*`` settings name.

generate -> assign -> publish to Redis -> device-register requests through the endpoint (LOG
lines, shipped to the landing) -> ingest the LOG events -> dbt run -> evaluate every day, then
every Iceberg table (and the endpoint's answers) dumped to ``--out`` for comparison. Run once on
the embedded stack and once on the cluster by ``tests/cluster/test_cluster.py``:

    python tests/cluster/pipeline.py --out DIR [--users N] [--days D] [--check-isolation]

``--check-isolation`` first proves the cluster is one: tasks on at least two executors, each in
a mount namespace other than the driver's, none of which can read a file the driver just wrote
under its local state (``STRATA_HOME``). Any failure exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from strata.config import get_settings
from strata.landing import FILE_GLOB, landing_files

#: dbt project of this checkout.
DBT_PROJECT = Path(__file__).resolve().parents[2] / "dbt_project"


def _probe(path: str) -> tuple[str, bool]:
    """On an executor: its mount namespace, and whether it can read ``path``."""
    time.sleep(0.3)  # keep each task long enough for the other executor to take some
    try:
        with open(path) as f:
            seen = bool(f.read())
    except OSError:
        seen = False
    return os.readlink("/proc/self/ns/mnt"), seen


def check_isolation(spark, settings, executors: int = 2, timeout_s: float = 120) -> dict:
    """Fail unless ``executors`` executors run tasks in private filesystem views."""
    sentinel = settings.home / "isolation-check" / f"driver-{os.getpid()}.txt"
    sentinel.parent.mkdir(parents=True, exist_ok=True)
    sentinel.write_text("written by the driver only\n")
    sc = spark.sparkContext
    deadline = time.monotonic() + timeout_s
    while sc._jsc.sc().getExecutorMemoryStatus().size() < executors + 1:  # + the driver
        if time.monotonic() > deadline:
            raise SystemExit(f"isolation check: fewer than {executors} executors registered")
        time.sleep(0.5)
    tasks = 4 * executors
    probes = sc.parallelize(range(tasks), tasks).map(lambda _: _probe(str(sentinel))).collect()
    driver_ns = os.readlink("/proc/self/ns/mnt")
    namespaces = {ns for ns, _ in probes}
    readable = [ns for ns, seen in probes if seen]
    if readable:
        raise SystemExit(
            f"isolation check: executors in {sorted(set(readable))} can read {sentinel}, a file "
            "the driver wrote under its local state: the workers share the driver's disk"
        )
    if driver_ns in namespaces or len(namespaces) < executors:
        raise SystemExit(
            f"isolation check: tasks ran in mount namespaces {sorted(namespaces)} (driver "
            f"{driver_ns}); expected {executors} private ones"
        )
    sentinel.unlink()
    return {"executor_namespaces": len(namespaces), "driver_namespace": driver_ns}


def _dbt_run(settings, work: Path) -> None:
    from dbt.cli.main import dbtRunner

    from strata.contracts import dbt_vars
    from strata.stack import write_dbt_profile

    profiles = write_dbt_profile(settings, work / "dbt")
    result = dbtRunner().invoke(
        [
            "run",  # the models; their data tests belong to the suite (make test), not here
            "--project-dir",
            str(DBT_PROJECT),
            "--profiles-dir",
            str(profiles),
            "--target-path",
            str(work / "dbt" / "target"),
            "--log-path",
            str(work / "dbt" / "logs"),
            "--vars",
            json.dumps(dbt_vars()),
            "--full-refresh",
        ]
    )
    if not result.success:
        raise SystemExit(f"dbt run failed: {result.exception or 'see the dbt log'}")


def _evaluate(settings) -> int:
    """Every evaluable experiment at every date with aggregates (the demo's history run)."""
    from strata.stack import iceberg_catalog
    from strata.stats import evaluable_by_date, evaluable_experiments, run_evaluation

    catalog = iceberg_catalog(settings)
    _ids, day = evaluable_experiments(catalog, None, settings.namespace)
    rows = 0
    for d, ids_d in evaluable_by_date(catalog, day, settings.namespace).items():
        _evaluation, frame = run_evaluation(catalog, ids_d, d, namespace=settings.namespace)
        rows += len(frame)
    return rows


def dump_tables(spark, settings, out: Path) -> dict[str, int]:
    """Every table of the namespace to ``out/<table>.parquet`` (nested columns as JSON)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, MapType, StructType

    counts = {}
    names = sorted(
        r.tableName
        for r in spark.sql(f"SHOW TABLES IN {settings.catalog_name}.{settings.namespace}").collect()
        if not r.isTemporary
    )
    for name in names:
        df = spark.table(settings.table(name))
        nested = (StructType, ArrayType, MapType)
        df = df.select(
            *(
                F.to_json(F.col(f.name)).alias(f.name)
                if isinstance(f.dataType, nested)
                else F.col(f.name)
                for f in df.schema.fields
            )
        )
        frame = df.toPandas()
        frame.to_parquet(out / f"{name}.parquet", index=False)
        counts[name] = len(frame)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--start-date", default="2026-11-08")
    parser.add_argument("--requests", type=int, default=40, help="device-register requests")
    parser.add_argument("--check-isolation", action="store_true")
    parser.add_argument("--executors", type=int, default=2, help="for the isolation check")
    parser.add_argument("--no-dump", action="store_true", help="skip the table dump (benchmarks)")
    args = parser.parse_args(argv)

    from lookup_loader import loader
    from spark_jobs.assign_experiments import main as assign
    from spark_jobs.generate_synthetic import main as generate
    from spark_jobs.ingest_exposure_logs import main as ingest
    from strata.stack import spark_session
    from strata_apps.demo import serve_samples

    settings = get_settings()
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    report: dict = {"timings_s": timings}

    def stage(name, fn, *a, **kw):
        started = time.monotonic()
        result = fn(*a, **kw)
        timings[name] = round(time.monotonic() - started, 1)
        print(f"pipeline: {name} {timings[name]} s", file=sys.stderr, flush=True)
        return result

    spark = stage("spark session", spark_session, settings, "strata-pipeline")
    if args.check_isolation:
        report["isolation"] = stage(
            "isolation check", check_isolation, spark, settings, args.executors
        )
    size = ["--users", str(args.users), "--days", str(args.days), "--seed", "7"]
    stage("generate", generate, [*size, "--start-date", args.start_date])
    stage("assign", assign, ["--as-of", args.start_date])  # day one: every experiment live
    prefix = os.environ.get("STRATA_LOOKUP_PREFIX", "strata:lk")
    published = stage("publish", loader.publish, settings, prefix=prefix)
    report["published_units"] = published.units if hasattr(published, "units") else None
    answers = stage("serve", serve_samples, args.requests, settings)
    (args.out / "answers.json").write_text(json.dumps(answers, sort_keys=True, indent=1))
    # LOG files left in the local spool, and files in the landing the ingest job reads (the same
    # folder on the embedded stack; object storage on the cluster, the spool emptied by shipping).
    report["spooled_files"] = len(list(settings.exposure_spool_path.glob(FILE_GLOB)))
    report["landed_files"] = len(landing_files(settings))
    report["ingest"] = vars(stage("ingest", ingest, []))
    stage("dbt run", _dbt_run, settings, args.out)
    report["result_rows"] = stage("evaluate", _evaluate, settings)
    if args.no_dump:
        catalog = f"{settings.catalog_name}.{settings.namespace}"
        report["tables"] = {
            name: spark.table(f"{catalog}.{name}").count()
            for name in ("raw_events", "assignments", "exposure_logs", "results")
        }
    else:
        report["tables"] = stage("dump", dump_tables, spark, settings, args.out)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
