"""Run conf a user can trust: every key declared, every date and experiment real, or a one-line no.

Airflow checks the *declared* params against their JSON schema when a run is triggered (the REST
API answers 400 for a wrong type or format). What it lets through — a key no param declares (a
typo such as ``experiment_idz``), an experiment that does not exist, a date without data — is
caught here, by the first task of each run, before any Spark work: the task fails with one line
saying what is wrong, nothing downstream runs, and no asset event is emitted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from strata.errors import StrataError


class RunConfError(StrataError):
    """The run's conf asks for something that is not there (deterministic: never retried)."""


def check_conf_keys(conf: Mapping[str, Any] | None, declared: Iterable[str]) -> None:
    """Fail on any conf key that no param of the DAG declares.

    >>> check_conf_keys({"analysis_date": "2026-11-14"}, ["analysis_date", "history"])
    >>> check_conf_keys({"experiment_idz": ["a"]}, ["experiment_ids"])
    Traceback (most recent call last):
    ...
    orchestration.runconf.RunConfError: undeclared conf key(s) ['experiment_idz']; this DAG ...
    """
    declared = sorted(declared)
    unknown = sorted(set(conf or {}) - set(declared))
    if unknown:
        raise RunConfError(f"undeclared conf key(s) {unknown}; this DAG accepts {declared}")


def parse_date(value: Any, what: str) -> dt.date | None:
    """An ISO date from a param or an asset event's extra (``None``/empty: not given).

    >>> parse_date("2026-11-14", "analysis_date")
    datetime.date(2026, 11, 14)
    >>> parse_date("14/11/2026", "analysis_date")
    Traceback (most recent call last):
    ...
    orchestration.runconf.RunConfError: analysis_date: '14/11/2026' is not a date (YYYY-MM-DD)
    """
    if value in (None, "", "None"):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise RunConfError(f"{what}: {value!r} is not a date (YYYY-MM-DD)") from None


def latest_extra(events: Any, asset_uri: str) -> dict[str, Any]:
    """The ``extra`` of the newest event of ``asset_uri`` among a run's triggering asset events."""
    if not events:
        return {}
    for key, items in events.items():
        uri = getattr(key, "uri", key)
        if str(uri) == asset_uri and items:
            return dict(items[-1].extra or {})
    return {}


def scheduled_as_of(context: Mapping[str, Any]) -> dt.date | None:
    """The day a scheduled (or backfilled) daily run stands for: the day its interval covers.

    A run with a data interval covers [start, end): its day is ``start``. A run with no interval
    (a cron trigger timetable, a manual run) stands for the day before its logical date — the
    last complete day. Asset-triggered runs have no logical date: ``None``.
    """
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and end > start:
        return start.date()
    logical = context.get("logical_date")
    if logical is None:
        return None
    return logical.date() - dt.timedelta(days=1)
