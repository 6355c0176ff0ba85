"""Nightly statistical verdict for every running experiment.

Runs whenever `build_goal_aggregates` has refreshed the `goal_aggregates` asset (or by hand, with
an analysis date): evaluates every experiment with aggregates at that date (newest `as_of_date`
by default) — Welch / delta-method tests, CUPED, Holm/BH, SRM against the design weights,
sequential boundaries — replaces its rows in the Iceberg `results` table, and writes the static
HTML reports (`$STRATA_HOME/reports/index.html`). Trigger with `{"history": true}` to re-evaluate
every earlier date too (one look per day, oldest first) after a backfill or a full refresh.
"""

from __future__ import annotations

from airflow.sdk import Param, dag
from pendulum import datetime

from orchestration.assets import GOAL_AGGREGATES
from orchestration.stages import DEFAULT_ARGS, evaluation_stage


@dag(
    start_date=datetime(2026, 1, 1),
    schedule=[GOAL_AGGREGATES],
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["strata", "stats"],
    doc_md=__doc__,
    params={
        "analysis_date": Param(
            None, type=["null", "string"], format="date", description="default: the newest"
        ),
        "history": Param(
            False,
            type="boolean",
            description="Also re-evaluate every earlier date with aggregates (after a backfill "
            "or a full refresh): rebuilds the cumulative effect curves.",
        ),
    },
)
def evaluate_experiments():
    evaluation_stage("{{ params.analysis_date or '' }}", "{{ params.history }}")


evaluate_experiments()
