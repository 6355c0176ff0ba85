"""Pipeline stages as Airflow task groups, shared by the production DAGs and the demo DAG.

Each factory must be called inside a DAG context; task bodies import their heavy libraries
(pyspark, dbt, GX, scipy) only when they run.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import TaskGroup, task
from cosmos import DbtTaskGroup

from orchestration.assets import GOAL_AGGREGATES, RESULTS
from orchestration.dbt import execution_config, profile_config, project_config, render_config

DEFAULT_ARGS = {"owner": "strata", "retries": 2}
#: dbt tasks: one quick retry for a transient failure (a catalog commit conflict); a failing data
#: test fails the same way again, so waiting longer only delays the alert.
DBT_ARGS = DEFAULT_ARGS | {"retries": 1, "retry_delay": dt.timedelta(seconds=30)}


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
def evaluate(analysis_date: str | None = None, history: bool | str = False) -> dict:
    """Evaluate every evaluable experiment at ``analysis_date`` (default: the newest date).

    ``history`` (templated from a param, so it may arrive as "True") first re-evaluates every
    earlier date with aggregates, oldest first: after a backfill or a full refresh, this rebuilds
    the daily looks the cumulative effect curves plot.
    """
    import datetime as dt

    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats import evaluable_by_date, evaluable_experiments, run_evaluation, verdicts

    settings = get_settings()
    catalog = iceberg_catalog(settings)
    day = dt.date.fromisoformat(analysis_date) if analysis_date else None
    ids, day = evaluable_experiments(catalog, day, settings.namespace)
    if not ids:
        return {"analysis_date": None, "experiments": 0, "rows": 0, "dates": 0}
    plan = {day: ids}
    if str(history).strip().lower() == "true":
        plan = evaluable_by_date(catalog, day, settings.namespace)
    rows = 0
    for d, ids_d in plan.items():
        evaluation, frame = run_evaluation(catalog, ids_d, d, namespace=settings.namespace)
        rows += len(frame)
    print(verdicts(evaluation.metrics).to_string(index=False))  # the newest date's verdicts
    return {
        "analysis_date": day.isoformat(),
        "experiments": len(ids),
        "rows": rows,
        "dates": len(plan),
    }


@task
def write_reports(evaluated: dict) -> str:
    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats import build_reports

    settings = get_settings()
    out = settings.home / "reports"
    pages = build_reports(iceberg_catalog(settings), out, None, settings.namespace)
    return f"{len(pages)} pages in {out}"


def goal_aggregates_stage(
    group_id: str = "events", full_refresh: bool | str = "{{ params.full_refresh }}"
) -> TaskGroup:
    """LOG events in, inputs gated, dbt (Cosmos: task per model, tests after each), output gated.

    ``full_refresh`` (templated; the DAG's ``full_refresh`` param by default) rebuilds the
    incremental models from all raw events: needed after raw data was replaced or backfilled
    further back than the models' lookback.
    """
    with TaskGroup(group_id=group_id) as group:
        dbt = DbtTaskGroup(
            group_id="dbt",
            project_config=project_config,
            profile_config=profile_config,
            execution_config=execution_config,
            render_config=render_config,
            operator_args={"full_refresh": full_refresh},
            default_args=DBT_ARGS,
        )
        # A failed expectation is deterministic: fail at once (no retries), report and stop.
        gate = check_suite.override(retries=0)
        gate_out = gate.override(task_id="check_goal_aggregates", outlets=[GOAL_AGGREGATES])
        [
            ingest_exposure_logs(),
            gate.override(task_id="check_raw_events")("raw_events"),
            gate.override(task_id="check_assignments")("assignments"),
        ] >> dbt
        dbt >> gate_out("goal_aggregates")
    return group


def evaluation_stage(
    analysis_date: str | None = None, history: bool | str = False, group_id: str = "evaluation"
) -> TaskGroup:
    """Every evaluable experiment into the Iceberg results table, then the HTML reports."""
    with TaskGroup(group_id=group_id) as group:
        write_reports(evaluate.override(outlets=[RESULTS])(analysis_date, history))
    return group
