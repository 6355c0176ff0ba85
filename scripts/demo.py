"""`make demo`: run the demo DAG on the embedded stack with `dag.test()`, then print a summary.

Airflow's task logs go to <STRATA_HOME>/logs/demo-dag.log; the terminal gets progress and results.
Sizes come from the environment: DEMO_USERS (default 100000), DEMO_DAYS (14), DEMO_SEED (7).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "run_demo"


def run_dag(conf: dict[str, int]) -> int:
    """Run the DAG in-process (called in a child so its logs can go to a file)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    run = bag.get_dag(DAG_ID).test(run_conf=conf)
    return 0 if run.state == DagRunState.SUCCESS else 1


def summary() -> None:
    from strata.config import get_settings
    from strata.health import raw_events_profile, redis_round_trip
    from strata.stack import iceberg_catalog

    settings = get_settings()
    catalog = iceberg_catalog(settings)
    print(
        f"\nIceberg tables in {settings.catalog_name}.{settings.namespace} "
        f"(read back through pyiceberg, no JVM; catalog {settings.catalog_db_path}):"
    )
    for name in ("orgs", "users", "devices", "raw_events"):
        table = catalog.load_table(f"{settings.namespace}.{name}")
        snapshot = table.current_snapshot()
        rows = snapshot.summary["total-records"] if snapshot and snapshot.summary else "?"
        print(
            f"  {name:<12} {int(rows):>12,} rows   "
            f"snapshot {snapshot.snapshot_id if snapshot else '-'}"
        )
    events = catalog.load_table(f"{settings.namespace}.raw_events").scan().to_arrow()
    print("\nRaw events: what the events pipeline must clean up")
    for key, value in raw_events_profile(events).items():
        print(f"  {key:<32} {value:>10,}")
    print_assignments(catalog, settings)
    rt = redis_round_trip(settings)
    print(
        f"\nRedis {rt['redis_version']} at {settings.redis_url}: authenticated round trip "
        f"{rt['round_trip_ms']:.2f} ms"
    )


def print_assignments(catalog, settings) -> None:
    """Units per experiment and variant, read from the Iceberg assignments table (no JVM)."""
    table = catalog.load_table(f"{settings.namespace}.assignments")
    props = table.properties
    rows = (
        table.scan(selected_fields=("experiment_id", "variant_name", "variant_id", "unit_type"))
        .to_arrow()
        .group_by(["experiment_id", "variant_id", "variant_name", "unit_type"])
        .aggregate([("variant_id", "count")])
        .sort_by([("experiment_id", "ascending"), ("variant_id", "ascending")])
        .to_pylist()
    )
    print(
        f"\nAssignments (definitions {props.get('strata.definitions-version')}, "
        f"run {props.get('strata.run-id')}): units per experiment and variant"
    )
    print(f"  {'experiment':<18} {'variant':<12} {'vid':>5} {'unit':<10} {'units':>9}")
    for r in rows:
        print(
            f"  {r['experiment_id']:<18} {r['variant_name']:<12} {r['variant_id']:>5} "
            f"{r['unit_type']:<10} {r['variant_id_count']:>9,}"
        )


def main() -> int:
    conf = {
        "users": int(os.environ.get("DEMO_USERS", 100_000)),
        "days": int(os.environ.get("DEMO_DAYS", 14)),
        "seed": int(os.environ.get("DEMO_SEED", 7)),
    }
    from strata.config import get_settings

    log = get_settings().home / "logs" / "demo-dag.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"Running DAG {DAG_ID} with dag.test() {conf} (Airflow log: {log}) ...", flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.call(
            [sys.executable, __file__, "--run-dag", repr(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    elapsed = time.monotonic() - started
    if rc != 0:
        print(f"DAG {DAG_ID} FAILED after {elapsed:.0f} s. Last lines of {log}:", file=sys.stderr)
        print("".join(log.read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
        return rc
    print(f"DAG {DAG_ID}: success in {elapsed:.0f} s")
    summary()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run-dag":
        import ast

        sys.exit(run_dag(ast.literal_eval(sys.argv[2])))
    sys.exit(main())
