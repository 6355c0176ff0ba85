"""The events run's deadline: its day's results must exist by a configured time, else an alert.

`build_goal_aggregates` declares a deadline of ``STRATA_RESULTS_DEADLINE_HOURS`` (6 by default)
after a run is queued. When the run has not succeeded by then, Airflow's triggerer calls
:func:`results_missing`, which checks the Iceberg ``results`` table for that day and, if they
are missing, sends the same webhook notification a failed task sends (see
:mod:`orchestration.failures`). A run that succeeds in time clears its deadline; a late run
whose day was evaluated anyway (e.g. by hand) sends nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

log = logging.getLogger(__name__)


def _results_exist(day: dt.date | None) -> bool:
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import EqualTo

    from strata import contracts
    from strata.config import get_settings
    from strata.stack import iceberg_catalog

    if day is None:
        return False
    settings = get_settings()
    try:
        table = iceberg_catalog(settings).load_table(f"{settings.namespace}.{contracts.RESULTS}")
    except NoSuchTableError:
        return False
    rows = table.scan(
        row_filter=EqualTo("analysis_date", day.isoformat()), selected_fields=("experiment_id",),
        limit=1,
    ).to_arrow()  # fmt: skip
    return rows.num_rows > 0


def _run_day(dag_run: dict[str, Any]) -> dt.date | None:
    conf = dag_run.get("conf") or {}
    if conf.get("as_of_date"):
        return dt.date.fromisoformat(conf["as_of_date"])
    start = dag_run.get("data_interval_start")
    return dt.datetime.fromisoformat(start).date() if start else None


def deadline_message(context: dict[str, Any], results_found: bool) -> dict[str, Any]:
    dag_run = context.get("dag_run") or {}
    day = _run_day(dag_run)
    deadline = (context.get("deadline") or {}).get("deadline_time")
    return {
        "text": (
            f"Strata deadline missed: {dag_run.get('dag_id')} run {dag_run.get('dag_run_id')} "
            f"not finished by {deadline}; results for {day or 'its day'} "
            f"{'exist' if results_found else 'are missing'}"
        ),
        "dag_id": dag_run.get("dag_id"),
        "run_id": dag_run.get("dag_run_id"),
        "stage": "deadline",
        "day": day.isoformat() if day else None,
        "deadline": str(deadline),
        "results_found": results_found,
    }


async def results_missing(context: dict[str, Any] | None = None, **_: Any) -> None:
    """Triggerer callback of the events run's deadline (see module docs)."""
    from orchestration.failures import send_alert

    context = context or {}
    day = _run_day(context.get("dag_run") or {})
    found = await asyncio.to_thread(_results_exist, day)
    message = deadline_message(context, found)
    if found:
        log.info("deadline passed but results exist: %s", message["text"])
        return
    await asyncio.to_thread(send_alert, message)
