"""Strata demo: the whole pipeline on the embedded stack, one task per stage.

`make demo` runs this DAG with `dag.test()`. Stages so far: check the Redis lookup server (an
authenticated round trip), generate synthetic users/orgs/devices/raw events into Iceberg with
Spark, then read every table back through Spark and through pyiceberg (no JVM) and require the two
to agree; validate the bundled experiment definitions and assign the synthetic users and devices
to experiments (Iceberg `assignments`); publish the assignments into the Redis lookup table
(versioned, atomic flip) and serve sample device-register requests through the reference
endpoint. `make demo` then runs `build_goal_aggregates` and `evaluate_experiments`, each with
`dag.test()` in its own process, as Airflow workers would.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task
from pendulum import datetime

TABLES = ["orgs", "users", "devices", "raw_events"]


@dag(
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"owner": "strata", "retries": 2},
    tags=["strata", "demo"],
    doc_md=__doc__,
    params={
        "users": Param(100_000, type="integer", minimum=1, description="synthetic users"),
        "days": Param(14, type="integer", minimum=1, description="days of events"),
        "seed": Param(7, type="integer", description="generator seed"),
    },
)
def run_demo():
    @task
    def check_redis() -> dict:
        from strata.health import redis_round_trip

        return redis_round_trip()

    @task
    def generate_data(params: dict | None = None) -> dict:
        from spark_jobs.generate_synthetic import main

        return main(
            [
                "--users",
                str(params["users"]),
                "--days",
                str(params["days"]),
                "--seed",
                str(params["seed"]),
            ]
        )

    @task
    def verify_tables(spark_counts: dict) -> dict:
        from strata.errors import DataError
        from strata.health import iceberg_row_counts

        py_counts = iceberg_row_counts(TABLES)
        if py_counts != spark_counts:
            raise DataError(
                f"Spark and pyiceberg disagree: spark={spark_counts} pyiceberg={py_counts}"
            )
        return py_counts

    @task
    def validate_definitions() -> dict:
        from strata.assignment_tasks import validate
        from strata.definitions import bundled_path

        return validate(str(bundled_path()))

    @task
    def assign_units(summary: dict) -> dict:
        from strata.assignment_tasks import assign

        return assign(summary["path"])

    @task
    def publish_lookups(assigned: dict, params: dict | None = None) -> dict:
        import datetime as dt

        from lookup_loader.loader import publish
        from strata.synthetic import DEFAULT_START_DATE

        # The synthetic data's "today": its last day (experiments ended before the real today).
        as_of = DEFAULT_START_DATE + dt.timedelta(days=params["days"] - 1)
        result = publish(as_of=as_of)
        return {
            "version": result.version,
            "state": result.state,
            "rows": result.rows,
            "units": result.units,
            "duration_s": round(result.duration_s, 2),
        }

    @task
    def serve_sample_requests(published: dict) -> list:
        import json

        from strata.config import get_settings
        from strata.demo import serve_samples

        answers = serve_samples(n=5)
        out = get_settings().home / "logs" / "demo-samples.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(answers, indent=1))
        return answers

    generated = generate_data()
    redis_ok = check_redis()
    redis_ok >> verify_tables(generated)
    assigned = assign_units(validate_definitions())
    generated >> assigned
    served = serve_sample_requests(publish_lookups(assigned))
    redis_ok >> served


run_demo()
