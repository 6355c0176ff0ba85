"""Events → per-variant goal aggregates in Iceberg, gated by Great Expectations.

1. ingest the device-register endpoint's LOG events (JSONL landing folder) as exposure logs;
2. gate the inputs: the raw events and assignments suites must pass;
3. dbt (rendered by Cosmos, one task per model, its tests right after it): staging (dedupe,
   quarantine) → exposures → attributed goals → `fct_unit_goals_daily` → `goal_aggregates` and
   `goal_cross_aggregates`;
   Trigger with `{"full_refresh": true}` to rebuild the incremental models from scratch;
4. gate the output: the goal_aggregates suite (updates the `goal_aggregates` asset, which
   schedules `evaluate_experiments`).

A failing suite fails its task and nothing downstream runs; the report (which expectation, how
many rows, samples) is in the task log and under `$STRATA_HOME/expectations/reports/`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag
from pendulum import datetime

from orchestration.stages import DEFAULT_ARGS, goal_aggregates_stage


@dag(
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["strata", "events", "dbt"],
    doc_md=__doc__,
    params={
        "full_refresh": Param(
            False,
            type="boolean",
            description="Rebuild the incremental models from all raw events (after raw data "
            "was replaced, or backfilled further back than the lookback).",
        )
    },
)
def build_goal_aggregates():
    goal_aggregates_stage()


build_goal_aggregates()
