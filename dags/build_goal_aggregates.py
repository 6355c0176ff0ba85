"""Events → per-variant goal aggregates in Iceberg, gated by Great Expectations.

1. ingest the device-register endpoint's LOG events (JSONL landing folder) as exposure logs;
2. gate the inputs: the raw events and assignments suites must pass;
3. dbt (rendered by Cosmos, one task per model, its tests right after it): staging (dedupe,
   quarantine) → exposures → attributed goals → `fct_unit_goals_daily` → `goal_aggregates`;
4. gate the output: the goal_aggregates suite.

A failing suite fails its task and nothing downstream runs; the report (which expectation, how
many rows, samples) is in the task log and under `$STRATA_HOME/expectations/reports/`.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from cosmos import DbtTaskGroup
from pendulum import datetime

from orchestration.assets import GOAL_AGGREGATES
from orchestration.dbt import execution_config, profile_config, project_config, render_config


@dag(
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "strata", "retries": 2},
    tags=["strata", "events", "dbt"],
    doc_md=__doc__,
)
def build_goal_aggregates():
    @task
    def ingest_exposure_logs() -> dict:
        from dataclasses import asdict

        from spark_jobs.ingest_exposure_logs import main

        return asdict(main([]))

    @task
    def check_raw_events() -> str:
        from expectations.gate import check

        return check("raw_events").summary()

    @task
    def check_assignments() -> str:
        from expectations.gate import check

        return check("assignments").summary()

    dbt = DbtTaskGroup(
        group_id="dbt",
        project_config=project_config,
        profile_config=profile_config,
        execution_config=execution_config,
        render_config=render_config,
        default_args={"owner": "strata", "retries": 2},
    )

    @task(outlets=[GOAL_AGGREGATES])
    def check_goal_aggregates() -> str:
        from expectations.gate import check

        return check("goal_aggregates").summary()

    [ingest_exposure_logs(), check_raw_events(), check_assignments()] >> dbt
    dbt >> check_goal_aggregates()


build_goal_aggregates()
