"""Keep the Redis lookup table served: recover the last verified publication after a loss.

Every 10 minutes: if Redis serves no live version although a publication was verified (a
restart without its data, a replaced node, a flush), republish that publication from the
Iceberg snapshots it recorded — no assignment re-run — and flip it live. While a live version is
served this is one Redis round trip. The same recovery by hand: `strata recover`.
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag
from pendulum import datetime

from orchestration.defaults import DEFAULT_ARGS
from orchestration.tasks import recover_lookup_table


@dag(
    start_date=datetime(2026, 1, 1),
    schedule=CronTriggerTimetable("*/10 * * * *", timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["strata", "lookup", "health"],
    description="Redis lost its live version? Republish the last verified publication",
    doc_md=__doc__,
)
def lookup_health():
    recover_lookup_table()


lookup_health()
