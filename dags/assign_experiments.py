"""Assign users and devices to experiments and publish the lookup table.

Validates the experiment definitions at `definitions_path` (fails with one line per problem),
assigns in Spark (targeting rules compiled to native columns, seed 003's domain split, per-layer
hashing, one atomic Iceberg commit of `assignments` and `experiments`), gates the assignments
with Great Expectations, then publishes them into the Redis lookup table as a new version,
verified against Iceberg before one atomic pointer flip. Any failure publishes nothing: the live
version keeps serving.
"""

from __future__ import annotations

from airflow.sdk import Param, dag
from pendulum import datetime

from orchestration.defaults import DEFAULT_ARGS
from orchestration.stages import assignment_stage


@dag(
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["strata", "assignment"],
    description="Definitions → Spark assignment → GX gate → Redis lookup table (atomic flip)",
    doc_md=__doc__,
    params={
        "definitions_path": Param(
            "include/definitions",
            type="string",
            minLength=1,
            description="definitions file or folder (relative to the repository root or absolute)",
        ),
    },
)
def assign_experiments():
    assignment_stage()


assign_experiments()
