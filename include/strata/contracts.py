"""The contracts the stages share, each with one home: tables, unit types, statuses, metric roles,
dimensions and goals.

Every stage (the Spark jobs, the lookup loader, the Great Expectations suites, dbt, the
orchestration) imports these names instead of spelling them again. dbt cannot import Python, so
Strata passes it what it needs as vars (:func:`dbt_vars`) wherever it runs dbt; the dbt project
declares no default, and fails with a clear message when they are missing.

Goals are data, not code: the catalogue ``goals.yaml`` beside this module (or the file named by
``STRATA_GOALS_FILE``) is the one place a goal is declared; :func:`goals` reads it.

Pure Python (plus PyYAML through :mod:`strata.safe_yaml`): importable by any stage.

Usage:
    >>> [g.name for g in goals()]
    ['session_start', 'click', 'add_to_cart', 'purchase', 'invite']
    >>> sorted(dbt_vars())
    ['goals', 'segment_dimensions', 'unit_types', 'value_goals']
    >>> [d.name for d in SEGMENT_DIMENSIONS]
    ['country', 'platform', 'app_version_major', 'visitor', 'plan']
    >>> dbt_vars()["value_goals"], dbt_vars()["unit_types"]
    (['purchase'], ['device_id', 'user_id', 'url'])
    >>> UNIT_TYPES, REGION_OF_COUNTRY["CZ"]
    (('device_id', 'user_id', 'url', 'random'), 'eu')
    >>> is_served("running"), is_served("paused"), is_served("archived")
    (True, False, False)
    >>> TRANSITIONS["running"]
    ('paused', 'stopped', 'shipped')
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from strata.errors import StrataError

# --- Iceberg tables (names inside the configured namespace: ``Settings.table(name)``) ---------

#: Synthetic landing and dimension tables (``strata generate``; real producers in production).
ORGS = "orgs"
USERS = "users"
DEVICES = "devices"
RAW_EVENTS = "raw_events"
#: Written by the assignment job (one commit for both).
ASSIGNMENTS = "assignments"
EXPERIMENTS = "experiments"
#: The lookup loader's record of every publication to Redis.
PUBLICATIONS = "publications"
#: LOG events of the device-register endpoint, and the lines that could not be read.
EXPOSURE_LOGS = "exposure_logs"
EXPOSURE_LOG_REJECTS = "exposure_log_rejects"
#: dbt models Strata reads back (their names are the dbt model names).
STG_EVENTS = "stg_events__events"
STG_EVENT_REJECTS = "stg_events__rejects"
UNIT_GOALS_DAILY = "fct_unit_goals_daily"
GOAL_AGGREGATES = "goal_aggregates"
GOAL_CROSS_AGGREGATES = "goal_cross_aggregates"
#: The same sums per segment of one dimension at a time (``dimension``, ``segment`` columns),
#: for each experiment's newest analysis date (see :data:`SEGMENT_DIMENSIONS`).
GOAL_SEGMENT_AGGREGATES = "goal_segment_aggregates"
GOAL_SEGMENT_CROSS_AGGREGATES = "goal_segment_cross_aggregates"
#: Per exposed unit: its segment in every dimension, fixed at its first exposure; and its goal
#: totals beside its segments (both dbt tables, read by the segment marts).
UNIT_SEGMENTS = "int_unit_segments"
SEGMENT_UNIT_GOALS = "int_segment_unit_goals"
#: The same sums per ramp cohort (column :data:`COHORT_COLUMN`) of the ramped experiments, at every
#: analysis date: the per-cohort SRM and the effects stratified by cohort read them; and the
#: per-unit totals beside the unit's cohort they are built from (a dbt table).
GOAL_COHORT_AGGREGATES = "goal_cohort_aggregates"
GOAL_COHORT_CROSS_AGGREGATES = "goal_cohort_cross_aggregates"
COHORT_UNIT_GOALS = "int_cohort_unit_goals"
#: The ramp cohort of a unit: the period of its experiment's ramp it was first assigned in
#: (a column of ``assignments`` and of the cohort aggregates; 0 without a ramp).
COHORT_COLUMN = "ramp_period"
#: The evaluation's output.
RESULTS = "results"
#: dbt's intermediate exposure table (incremental; int_unit_segments and int_segment_unit_goals,
#: above, are tables too; the other intermediate models are views but int_unit_first_seen).
UNITS_EXPOSED = "int_units_exposed"
#: The running per-unit states of the incremental nights (dbt tables): each unit's totals
#: through the last day no run recomputes (goal_aggregates and goal_cross_aggregates read them),
#: and each unit's first event.
UNIT_GOAL_STATE = "fct_unit_goal_state"
UNIT_FIRST_SEEN = "int_unit_first_seen"

#: Every Iceberg table Strata writes: what table maintenance (``strata.maintenance``) keeps tidy.
TABLES = (
    ORGS,
    USERS,
    DEVICES,
    RAW_EVENTS,
    ASSIGNMENTS,
    EXPERIMENTS,
    PUBLICATIONS,
    EXPOSURE_LOGS,
    EXPOSURE_LOG_REJECTS,
    STG_EVENTS,
    STG_EVENT_REJECTS,
    UNITS_EXPOSED,
    UNIT_FIRST_SEEN,
    UNIT_GOALS_DAILY,
    UNIT_GOAL_STATE,
    GOAL_AGGREGATES,
    GOAL_CROSS_AGGREGATES,
    UNIT_SEGMENTS,
    SEGMENT_UNIT_GOALS,
    GOAL_SEGMENT_AGGREGATES,
    GOAL_SEGMENT_CROSS_AGGREGATES,
    COHORT_UNIT_GOALS,
    GOAL_COHORT_AGGREGATES,
    GOAL_COHORT_CROSS_AGGREGATES,
    RESULTS,
)

#: What the synthetic generator writes, in its order.
SYNTHETIC_TABLES = (ORGS, USERS, DEVICES, RAW_EVENTS)
#: The unit tables the assignment job reads.
UNIT_TABLES = (USERS, ORGS, DEVICES)
#: dbt outputs whose row counts a run reports.
DBT_TABLES = (
    STG_EVENTS,
    STG_EVENT_REJECTS,
    UNIT_GOALS_DAILY,
    GOAL_AGGREGATES,
    GOAL_CROSS_AGGREGATES,
    UNIT_SEGMENTS,
    SEGMENT_UNIT_GOALS,
    GOAL_SEGMENT_AGGREGATES,
    GOAL_SEGMENT_CROSS_AGGREGATES,
    COHORT_UNIT_GOALS,
    GOAL_COHORT_AGGREGATES,
    GOAL_COHORT_CROSS_AGGREGATES,
)

# --- unit types ------------------------------------------------------------------------------

#: What a layer hashes on. ``random`` (seed 003) has no unit: each request draws a fresh slot.
UnitType = Literal["device_id", "user_id", "url", "random"]
UNIT_TYPES: tuple[UnitType, ...] = get_args(UnitType)
#: Unit types without a stable id: randomised per request, served online only, never written to
#: the assignments, the lookup table or LOG events, and not analysable per unit.
PER_REQUEST_UNIT_TYPES: tuple[UnitType, ...] = ("random",)
#: Unit types with an id: the id columns of events, assignments and LOG events (dbt's unit_types).
UNIT_ID_TYPES: tuple[UnitType, ...] = tuple(
    t for t in UNIT_TYPES if t not in PER_REQUEST_UNIT_TYPES
)

# --- targeting fields ------------------------------------------------------------------------

#: Context fields only a request carries (seed 003/004's ``channel``, the page ``url``): an
#: experiment whose targeting reads one is evaluated online, per request, never in the batch job.
REQUEST_FIELDS = ("channel", "url")
#: First-class targeting fields (strings): validated in every request context (a 400 names the
#: field), documented in the rule field list.
TARGETING_FIELDS = ("channel", "region")
#: ``region`` from ``country`` (ISO 3166-1 alpha-2) when the context or the unit table has no
#: region of its own: the same map online and in the assignment job. Unknown countries: no region.
REGION_OF_COUNTRY: dict[str, str] = {
    "US": "na", "CA": "na", "MX": "latam", "BR": "latam", "AR": "latam",
    "GB": "eu", "DE": "eu", "FR": "eu", "CZ": "eu", "ES": "eu", "IT": "eu", "NL": "eu",
    "PL": "eu", "IE": "eu", "IN": "apac", "JP": "apac", "AU": "apac", "SG": "apac", "KR": "apac",
}  # fmt: skip

# --- experiment statuses and their state machine ---------------------------------------------

#: Lifecycle order: draft -> running <-> paused -> stopped, and shipped from running, paused or
#: stopped. The definitions declare the status; the ``experiments`` table records it.
Status = Literal["draft", "running", "paused", "stopped", "shipped"]
STATUSES: tuple[Status, ...] = get_args(Status)
#: Experiments in these statuses get new units assigned.
ASSIGNED_STATUSES: tuple[Status, ...] = ("running",)
#: Experiments in these statuses are published to the lookup table as experiments. Any other
#: status, including one Strata does not know (a hand-edited experiments table), is not served.
SERVED_STATUSES: tuple[Status, ...] = ("running",)
#: Experiments in these statuses keep the assignments they had (no new unit joins them), so
#: their analysis goes on over the units that were served; they are not served.
FROZEN_STATUSES: tuple[Status, ...] = ("paused", "stopped", "shipped")
#: A shipped experiment serves its ``shipped_variant``'s params to every unit in its layer's
#: scope, through the launch layer (not as an experiment: no experiment action, no exposure).
SHIPPED: Status = "shipped"
#: Terminal for the analysis: evaluated a last time as of the day the status was recorded.
ENDED_STATUSES: tuple[Status, ...] = ("stopped", "shipped")
#: The legal changes of status between the state recorded in the ``experiments`` table and the
#: one the definitions declare (staying in a status is always legal). draft -> stopped is legal
#: (a draft that never ran is withdrawn); nothing leaves ``shipped``, nothing returns to
#: ``draft``, and a stopped experiment does not run again (its analysis has ended: copy it
#: under a new id to run it again).
TRANSITIONS: dict[Status, tuple[Status, ...]] = {
    "draft": ("running", "stopped"),
    "running": ("paused", "stopped", "shipped"),
    "paused": ("running", "stopped", "shipped"),
    "stopped": ("shipped",),
    "shipped": (),
}
#: The assignment rows through which a shipped experiment is served carry this experiment
#: id: the prefix (not allowed in experiment ids) keeps them out of the experiment's analysis.
SHIPPED_ROW_PREFIX = "shipped:"


def is_served(status: str | None) -> bool:
    """Whether an experiment in ``status`` (case-insensitive) is published to the lookup table."""
    return (status or "").lower() in SERVED_STATUSES


def is_legal_transition(recorded: str | None, declared: str) -> bool:
    """May an experiment recorded in ``recorded`` (None: never recorded) be declared ``declared``?

    A new experiment may start in any status but ``paused`` (it never ran); a status Strata does
    not know (a hand-edited table) may only be kept.

    Usage:
        >>> is_legal_transition("running", "paused"), is_legal_transition("shipped", "running")
        (True, False)
        >>> is_legal_transition(None, "running"), is_legal_transition(None, "paused")
        (True, False)
    """
    if recorded is None:
        return declared != "paused"
    recorded = recorded.lower()
    if recorded == declared:
        return True
    return declared in TRANSITIONS.get(recorded, ())  # type: ignore[call-overload]


def shipped_row_id(experiment_id: str) -> str:
    """The ``experiment_id`` of the assignment rows serving a shipped experiment's variant."""
    return SHIPPED_ROW_PREFIX + experiment_id


#: Why an experiment in an assigned/served status is outside its window on a day.
NOT_STARTED, ENDED = "not_started", "ended"


def outside_window(start: dt.date | None, end: dt.date | None, day: dt.date) -> str | None:
    """``"not_started"``, ``"ended"`` or None: is ``day`` outside ``[start, end]``?

    An experiment is assigned and served only inside its window: ``start_date`` and ``end_date``
    both inclusive, UTC calendar days (a missing bound is open).

    Usage:
        >>> d = dt.date(2026, 11, 8)
        >>> [outside_window(d, d, d + dt.timedelta(days=k)) for k in (-1, 0, 1)]
        ['not_started', None, 'ended']
    """
    if start is not None and day < start:
        return NOT_STARTED
    if end is not None and day > end:
        return ENDED
    return None


def utc_today() -> dt.date:
    """Today's UTC date: the default day of assignment and publication."""
    return dt.datetime.now(dt.UTC).date()


# --- metrics and aggregates ------------------------------------------------------------------

MetricRole = Literal["primary", "guardrail", "secondary"]
METRIC_ROLES: tuple[MetricRole, ...] = get_args(MetricRole)
#: Dimension columns of ``goal_aggregates`` (``goal(platform=ios)`` in a metric expression);
#: the empty string is the all-values row.
DIMENSIONS = ("platform",)


@dataclass(frozen=True)
class SegmentDimension:
    """A dimension results are broken down by: one segment per unit, taken at (or before) the
    unit's first exposure, so treatment cannot move a unit between segments."""

    name: str
    #: Where the value comes from (the dbt model ``int_unit_segments`` computes it so).
    source: str


#: The segment dimensions, declared once: dbt gets their names as the ``segment_dimensions`` var
#: and builds ``goal_segment_aggregates`` one dimension at a time (never their cross product);
#: the evaluation tests every metric per segment and the heterogeneity across segments.
SEGMENT_DIMENSIONS: tuple[SegmentDimension, ...] = (
    SegmentDimension("country", "users.country of the unit's user (a device unit: its owner)"),
    SegmentDimension("platform", "devices.platform of the device of the unit's first exposure"),
    SegmentDimension(
        "app_version_major", "major part of devices.app_version of that device ('2' of '2.4.1')"
    ),
    SegmentDimension(
        "visitor",
        "'returning' when the unit has a usable event before the experiment start, else 'new'",
    ),
    SegmentDimension("plan", "orgs.plan of the org of the unit's user (free, pro, enterprise)"),
)
SEGMENT_NAMES: tuple[str, ...] = tuple(d.name for d in SEGMENT_DIMENSIONS)
#: The segment of a unit whose attribute is missing (an unknown device, a logged-out user).
UNKNOWN_SEGMENT = "unknown"
#: The goal of the exposure rows (``agg_type = 'global'``) ep-stats expects.
EXPOSURE_GOAL = "exposure"
#: Pre-period goals (CUPED covariates) are named ``pre_<goal>``.
PRE_PERIOD_PREFIX = "pre_"

# --- goals -----------------------------------------------------------------------------------

#: The bundled catalogue; ``STRATA_GOALS_FILE`` names another.
GOALS_FILE = Path(__file__).with_name("goals.yaml")
GOALS_FILE_ENV = "STRATA_GOALS_FILE"
_GOAL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_GOAL_FIELDS = {"name", "description", "value", "synthetic"}


class GoalsError(StrataError):
    """A goals catalogue that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Goal:
    """One goal: an event name the pipeline accepts, aggregates and evaluates."""

    name: str
    description: str = ""
    #: The event carries an amount in ``value`` that must be present and non-negative.
    has_value: bool = False
    #: ``"funnel"`` (the generator's built-in session funnel), ``"rate"`` or None (not generated).
    synthetic: Literal["funnel", "rate"] | None = None
    #: Per-session probability when ``synthetic == "rate"``.
    synthetic_rate: float | None = None

    @property
    def reject_reason(self) -> str | None:
        """Why staging quarantines this goal's row without a usable value (value goals only)."""
        return f"invalid_{self.name}_value" if self.has_value else None


def goals_file() -> Path:
    """The catalogue in use: ``$STRATA_GOALS_FILE``, else the bundled one."""
    return Path(os.environ.get(GOALS_FILE_ENV) or GOALS_FILE)


def goals(path: Path | str | None = None) -> tuple[Goal, ...]:
    """The goals of the catalogue at ``path`` (default :func:`goals_file`), in its order."""
    resolved = Path(path) if path is not None else goals_file()
    return _load(str(resolved.resolve()))


def goal_names(path: Path | str | None = None) -> tuple[str, ...]:
    return tuple(g.name for g in goals(path))


def value_goals(path: Path | str | None = None) -> tuple[str, ...]:
    """Goals whose events carry a non-negative amount."""
    return tuple(g.name for g in goals(path) if g.has_value)


def dbt_vars(path: Path | str | None = None) -> dict[str, Any]:
    """The vars every dbt invocation needs (``--vars``, Cosmos ``operator_args['vars']``): the
    goals and value goals of the catalogue, the unit types with an id (the id columns of LOG
    events; ``random`` has none) and the segment dimensions."""
    return {
        "goals": list(goal_names(path)),
        "value_goals": list(value_goals(path)),
        "unit_types": list(UNIT_ID_TYPES),
        "segment_dimensions": list(SEGMENT_NAMES),
    }


@functools.lru_cache(maxsize=8)
def _load(path: str) -> tuple[Goal, ...]:
    from strata.safe_yaml import YamlProblem, load_file

    try:
        doc = load_file(Path(path))
    except (OSError, YamlProblem) as exc:
        raise GoalsError(f"{path}: {exc}") from exc
    entries = doc.get("goals") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise GoalsError(f"{path}: expected a mapping with a non-empty list `goals`")
    out: list[Goal] = []
    for i, entry in enumerate(entries):
        out.append(_goal(entry, f"{path}: goals[{i}]"))
    names = [g.name for g in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GoalsError(f"{path}: goal(s) declared twice: {', '.join(dupes)}")
    return tuple(out)


def _goal(entry: Any, where: str) -> Goal:
    if not isinstance(entry, dict):
        raise GoalsError(f"{where}: expected a mapping with at least `name`")
    unknown = sorted(set(entry) - _GOAL_FIELDS)
    if unknown:
        raise GoalsError(f"{where}: unknown field(s) {unknown}; known: {sorted(_GOAL_FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not _GOAL_NAME.match(name):
        raise GoalsError(f"{where}: name {name!r} is not a lower-case identifier")
    if name == EXPOSURE_GOAL or name.startswith(PRE_PERIOD_PREFIX):
        raise GoalsError(
            f"{where}: {name!r} is reserved (the exposure rows and the pre_<goal> covariates)"
        )
    has_value = entry.get("value", False)
    if not isinstance(has_value, bool):
        raise GoalsError(f"{where}: value must be true or false")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise GoalsError(f"{where}: description must be text")
    declared = entry.get("synthetic")
    if declared is None:
        return Goal(name, description.strip(), has_value)
    if declared == "funnel":
        return Goal(name, description.strip(), has_value, "funnel")
    rate = declared.get("rate") if isinstance(declared, dict) else None
    if not isinstance(rate, int | float) or set(declared) != {"rate"} or not 0 < rate <= 1:
        raise GoalsError(f"{where}: synthetic must be `funnel` or {{rate: 0 < p <= 1}}")
    if has_value:
        raise GoalsError(f"{where}: the generator draws no amounts for a rate goal")
    return Goal(name, description.strip(), has_value, "rate", float(rate))


if __name__ == "__main__":
    # `python -m strata.contracts` prints the dbt vars, for running dbt by hand:
    #   dbt build --vars "$(python -m strata.contracts)"
    json.dump(dbt_vars(sys.argv[1] if len(sys.argv) > 1 else None), sys.stdout)
    print()
