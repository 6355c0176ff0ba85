"""Pipeline stages as Airflow task groups, shared by the production DAGs and the demo DAG.

Each factory must be called inside a DAG context; the task bodies live in
:mod:`orchestration.tasks` and import their heavy libraries only when they run.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import TaskGroup, XComArg
from cosmos import DbtTaskGroup

from orchestration.dbt import execution_config, profile_config, project_config, render_config
from orchestration.defaults import DEFAULT_ARGS, SPARK_POOL
from orchestration.tasks import (
    assign_units,
    check_evaluations,
    check_suite,
    evaluate_experiment,
    ingest_exposure_logs,
    plan_evaluation,
    plan_events_run,
    publish_lookups,
    summarize_events,
    validate_definitions,
    write_reports,
)
from strata.contracts import ASSIGNMENTS, GOAL_AGGREGATES, RAW_EVENTS, dbt_vars

#: dbt tasks: one retry for a transient failure (a catalog commit conflict); a failing data
#: test fails the same way again, so more retries only delay the alert.
DBT_ARGS = DEFAULT_ARGS | {
    "retries": 1,
    "pool": SPARK_POOL,
    "execution_timeout": dt.timedelta(hours=1),
}


def assignment_stage(
    definitions_path: str | None = None,
    as_of: str | None = None,
    group_id: str = "assignment",
    assign_as_of: str | None = None,
) -> XComArg:
    """Validate the definitions → assign (Spark) → gate the assignments → publish to Redis.

    ``assign_as_of`` is the day experiments must be inside their window to get units (default the
    run's logical date), ``as_of`` the day whose live experiments are published (default today).

    Publication runs only when the gate passed, so nothing is published after any failure; the
    loader itself verifies the new version against Iceberg before its atomic flip. Returns the
    publication's output (for tasks that need the new version live).
    """
    with TaskGroup(group_id=group_id):
        assigned = assign_units(validate_definitions(definitions_path), as_of=assign_as_of)
        gate = check_suite.override(task_id="check_assignments")(ASSIGNMENTS)
        published = publish_lookups(assigned, as_of=as_of)
        assigned >> gate >> published
    return published


def goal_aggregates_stage(group_id: str = "events") -> TaskGroup:
    """Plan (date, refresh mode) → LOG events in, inputs gated → dbt (Cosmos: a task per model,
    `dbt build` of the model and its tests) → output gated → counts and the asset event.

    The plan's ``as_of_date`` reaches dbt as a var (the marts recompute the lookback window up
    to that day), so a backfilled run recomputes its own day; ``full_refresh`` rebuilds the
    incremental models from all raw events (after raw data was replaced).
    """
    with TaskGroup(group_id=group_id) as group:
        plan = plan_events_run()
        plan_task = f"{group_id}.plan_events_run"
        dbt = DbtTaskGroup(
            group_id="dbt",
            project_config=project_config,
            profile_config=profile_config,
            execution_config=execution_config,
            render_config=render_config,
            operator_args={
                "full_refresh": (
                    "{{ ti.xcom_pull(task_ids='" + plan_task + "', key='full_refresh') }}"
                ),
                # the goals catalogue (strata.contracts), and the plan's day
                "vars": dbt_vars()
                | {
                    "as_of_date": (
                        "{{ ti.xcom_pull(task_ids='" + plan_task + "', key='as_of_date') }}"
                    )
                },
            },
            default_args=DBT_ARGS,
        )
        inputs = [
            ingest_exposure_logs(),
            check_suite.override(task_id="check_raw_events")(RAW_EVENTS),
            check_suite.override(task_id="check_assignments")(ASSIGNMENTS),
        ]
        plan >> inputs
        inputs >> dbt
        gate_out = check_suite.override(task_id="check_goal_aggregates")(GOAL_AGGREGATES)
        dbt >> gate_out >> summarize_events(plan)
    return group


def evaluation_stage(group_id: str = "evaluation") -> TaskGroup:
    """Plan (date, experiments) → one mapped task per experiment → the HTML reports.

    Each experiment's evaluation is its own task instance, named by the experiment id: one with
    broken inputs fails alone, and the reports are written for the others; the last task,
    ``check_evaluations``, then turns the run red, naming the experiments without results.
    """
    with TaskGroup(group_id=group_id) as group:
        planned = plan_evaluation()
        evaluated = evaluate_experiment.expand_kwargs(planned)
        write_reports(evaluated) >> check_evaluations(planned, evaluated)
    return group
