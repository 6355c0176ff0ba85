"""Pipeline stages as Airflow task groups, shared by the production DAGs and the demo DAG.

Each factory must be called inside a DAG context; task bodies import their heavy libraries
(pyspark, dbt, GX, scipy) only when they run.
"""

from __future__ import annotations

from airflow.sdk import TaskGroup, task
from cosmos import DbtTaskGroup

from orchestration.assets import GOAL_AGGREGATES, RESULTS
from orchestration.dbt import execution_config, profile_config, project_config, render_config

DEFAULT_ARGS = {"owner": "strata", "retries": 2}


@task
def ingest_exposure_logs() -> dict:
    from dataclasses import asdict

    from spark_jobs.ingest_exposure_logs import main

    return asdict(main([]))


@task
def check_suite(suite: str) -> str:
    """Great Expectations gate: fails (and stops everything downstream) when the suite fails."""
    from expectations.gate import check

    return check(suite).summary()


@task
def evaluate(analysis_date: str | None = None) -> dict:
    import datetime as dt

    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats import evaluable_experiments, run_evaluation, verdicts

    settings = get_settings()
    catalog = iceberg_catalog(settings)
    day = dt.date.fromisoformat(analysis_date) if analysis_date else None
    ids, day = evaluable_experiments(catalog, day, settings.namespace)
    if not ids:
        return {"analysis_date": None, "experiments": 0, "rows": 0}
    evaluation, frame = run_evaluation(catalog, ids, day, namespace=settings.namespace)
    print(verdicts(evaluation.metrics).to_string(index=False))
    return {"analysis_date": day.isoformat(), "experiments": len(ids), "rows": len(frame)}


@task
def write_reports(evaluated: dict) -> str:
    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats import build_reports

    settings = get_settings()
    out = settings.home / "reports"
    pages = build_reports(iceberg_catalog(settings), out, None, settings.namespace)
    return f"{len(pages)} pages in {out}"


def goal_aggregates_stage(group_id: str = "events") -> TaskGroup:
    """LOG events in, inputs gated, dbt (Cosmos: task per model, tests after each), output gated."""
    with TaskGroup(group_id=group_id) as group:
        dbt = DbtTaskGroup(
            group_id="dbt",
            project_config=project_config,
            profile_config=profile_config,
            execution_config=execution_config,
            render_config=render_config,
            default_args=DEFAULT_ARGS,
        )
        gate_out = check_suite.override(task_id="check_goal_aggregates", outlets=[GOAL_AGGREGATES])
        [
            ingest_exposure_logs(),
            check_suite.override(task_id="check_raw_events")("raw_events"),
            check_suite.override(task_id="check_assignments")("assignments"),
        ] >> dbt
        dbt >> gate_out("goal_aggregates")
    return group


def evaluation_stage(analysis_date: str | None = None, group_id: str = "evaluation") -> TaskGroup:
    """Every evaluable experiment into the Iceberg results table, then the HTML reports."""
    with TaskGroup(group_id=group_id) as group:
        write_reports(evaluate.override(outlets=[RESULTS])(analysis_date))
    return group
