"""Assign users and devices to experiments: validate definitions -> Spark assignment -> Iceberg.

Validates the experiment definitions at ``definitions_path`` (fails with one line per problem),
then runs `spark_jobs/assign_experiments.py`: targeting rules compiled to native Spark columns,
seed 003's domain split, per-layer hashing, and one atomic Iceberg commit of the `assignments` and
`experiments` tables. Re-running with the same definitions and input snapshots writes identical
rows. Then the assignments are published into the Redis lookup table as a new version (verified
against Iceberg, one atomic pointer flip) that the device-register API reads.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task
from pendulum import datetime

from orchestration.assets import ASSIGNMENTS


@dag(
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    catchup=False,
    default_args={"owner": "strata", "retries": 2},
    tags=["strata", "assignment"],
    doc_md=__doc__,
    params={
        "definitions_path": Param(
            "include/definitions",
            type="string",
            description="definitions file or folder (relative to the repository root or absolute)",
        ),
    },
)
def assign_experiments():
    @task
    def validate_definitions(params: dict | None = None) -> dict:
        from strata.assignment_tasks import validate

        return validate(params["definitions_path"])

    @task(outlets=[ASSIGNMENTS])
    def assign(summary: dict) -> dict:
        from strata.assignment_tasks import assign as run_assignment

        return run_assignment(summary["path"])

    @task
    def publish_lookups(assigned: dict) -> dict:
        from lookup_loader.loader import publish

        result = publish()
        return {"version": result.version, "state": result.state, "rows": result.rows}

    publish_lookups(assign(validate_definitions()))


assign_experiments()
