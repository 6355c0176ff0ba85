"""Nightly statistical verdict for every running experiment, one task per experiment.

Runs whenever `build_goal_aggregates` has refreshed the `goal_aggregates` asset (at the as-of
date its event carries), or by hand. `plan_evaluation` resolves the date (param
`analysis_date`, else the asset event, else the newest) and the experiments (param
`experiment_ids`, default every experiment with aggregates that day); an undeclared conf key,
an unknown experiment or a date without aggregates fails it with one line, before any work.
Then one mapped `evaluate_experiment` task per experiment (named by its id) — Welch /
delta-method tests, CUPED, Holm/BH, SRM against the design weights, sequential boundaries —
replaces that experiment's rows in the Iceberg `results` table; an experiment with broken
inputs fails alone. `write_reports` first settles the segment flags across the night (BH over
every experiment's heterogeneity tests of the date), then writes the HTML reports (each
evaluation task links to its experiment's page) and emits the `results` asset event. The last
task, `check_evaluations`, fails (one summary alert) when an experiment was not evaluated,
naming it, so such a run is red in the grid and not green beside a red task.
`{"history": true}` re-evaluates every earlier date too (after a backfill or a full refresh: the
effect-over-time curves).
"""

from __future__ import annotations

from airflow.sdk import Param, dag
from pendulum import datetime

from orchestration.assets import GOAL_AGGREGATES
from orchestration.defaults import DEFAULT_ARGS
from orchestration.stages import evaluation_stage


@dag(
    start_date=datetime(2026, 1, 1),
    schedule=[GOAL_AGGREGATES],
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["strata", "stats"],
    description="goal_aggregates → one evaluation per experiment → results table + reports",
    doc_md=__doc__,
    params={
        "experiment_ids": Param(
            [],
            type="array",
            items={"type": "string", "minLength": 1},
            description="Experiments to evaluate (default: every one with aggregates).",
        ),
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
    evaluation_stage()


evaluate_experiments()
