"""Iceberg table maintenance, daily after the nightly runs.

At 04:00 UTC, after the midnight assignment and events runs and the evaluation they trigger:
for every table Strata writes (`strata.contracts.TABLES`; tables not created yet are skipped),
compact small files (binpack, only groups of at least `STRATA_MAINTENANCE_MIN_INPUT_FILES`),
expire snapshots older than `STRATA_MAINTENANCE_SNAPSHOT_DAYS` keeping the last
`STRATA_MAINTENANCE_KEEP_SNAPSHOTS`, and delete files no snapshot references that are older than
`STRATA_MAINTENANCE_ORPHAN_HOURS`. Rows never change. One task and one Spark session for all
tables; a table that fails (a commit lost to a concurrent writer) does not stop the others, and
the task fails at the end naming each (it retries, and the next night catches up).

Reproducing a stored result (`strata.stats.reproduce`) and recovering or rolling back a lookup
publication read the snapshots they recorded: they work within the retention window only.
The same by hand: `strata maintain`.
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag
from pendulum import datetime

from orchestration.defaults import DEFAULT_ARGS
from orchestration.tasks import maintain_tables as maintain_tables_task


@dag(
    start_date=datetime(2026, 1, 1),
    schedule=CronTriggerTimetable("0 4 * * *", timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["strata", "iceberg", "maintenance"],
    description="Compact small files, expire old snapshots, remove orphans on every table",
    doc_md=__doc__,
)
def maintain_tables():
    maintain_tables_task()


maintain_tables()
