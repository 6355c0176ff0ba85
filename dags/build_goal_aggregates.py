"""Events → per-variant goal aggregates in Iceberg, gated by Great Expectations.

Daily: each run stands for one day (its data interval), so a backfill over a date range
recomputes those days. Also runs when the demo announces new raw events (the `raw_events`
asset). Steps:

1. plan: the as-of date (param `as_of_date`, else the triggering asset event, else the run's
   day) and the refresh mode; a day without raw events fails here, before any Spark work;
2. ingest the device-register endpoint's LOG events as exposure logs, and gate the inputs
   (raw events and assignments suites);
3. dbt (rendered by Cosmos from the manifest `make setup` builds; one task per model running
   the model and its tests): staging (dedupe, quarantine) → exposures → attributed goals →
   `fct_unit_goals_daily` → `goal_aggregates` and `goal_cross_aggregates`, recomputing the
   lookback window up to the as-of date; `{"full_refresh": true}` rebuilds from all raw events;
4. gate the output and emit the `goal_aggregates` asset event (with the as-of date), which
   schedules `evaluate_experiments`.

A failing suite fails its task and nothing downstream runs; its "Data quality report" link
shows which expectation failed, on how many rows, with samples.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import (
    AssetOrTimeSchedule,
    AsyncCallback,
    CronDataIntervalTimetable,
    DeadlineAlert,
    DeadlineReference,
    Param,
    dag,
)
from pendulum import datetime

from orchestration.assets import RAW_EVENTS
from orchestration.defaults import DEFAULT_ARGS
from orchestration.stages import goal_aggregates_stage

#: Hours after a run is queued by which its day's results must exist, else an alert (0: no
#: deadline; `dag.test()` runs, e.g. `make demo`, cannot handle one: Airflow 3.3 looks the alert
#: up by id in the database when the run succeeds).
RESULTS_DEADLINE_HOURS = float(os.environ.get("STRATA_RESULTS_DEADLINE_HOURS", "6"))


@dag(
    start_date=datetime(2026, 1, 1),
    schedule=AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable("@daily", timezone="UTC"), assets=[RAW_EVENTS]
    ),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["strata", "events", "dbt"],
    description="Raw events + LOG exposures → dbt (Cosmos) → goal_aggregates, GX-gated",
    doc_md=__doc__,
    deadline=(
        DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=dt.timedelta(hours=RESULTS_DEADLINE_HOURS),
            callback=AsyncCallback("orchestration.deadlines.results_missing"),
        )
        if RESULTS_DEADLINE_HOURS > 0
        else None
    ),
    params={
        "as_of_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="The day to (re)compute, YYYY-MM-DD (default: the run's day).",
        ),
        "full_refresh": Param(
            False,
            type="boolean",
            description="Rebuild the incremental models from all raw events (after raw data "
            "was replaced, or backfilled further back than the lookback).",
        ),
    },
)
def build_goal_aggregates():
    goal_aggregates_stage()


build_goal_aggregates()
