"""Experiment states: is a change of status legal against the one the ``experiments`` table records?

The definitions declare each experiment's status (reviewed like any change); the assignment run
records it in Iceberg's ``experiments`` table, with the day it took that status
(``status_since``) and the definitions version that set it (``status_version``). The next
registration is checked against that record with :data:`strata.contracts.TRANSITIONS`: an
illegal change (``shipped -> running``, ``stopped -> running``, ``running -> draft``, a new
experiment declared ``paused``) is a validation error naming the experiment, both states and the
definitions file, and nothing is written. ``strata validate`` and ``strata plan`` report it
before any run when the catalog is reachable.

Usage:
    >>> import datetime as dt
    >>> from strata.definitions import bundled_path, load
    >>> defs = load(bundled_path())
    >>> day = dt.date(2026, 11, 8)
    >>> recorded = {"checkout_button": RecordedState("shipped", day, "v0")}
    >>> problems = transition_problems(defs, recorded)
    >>> print(problems[0])  # doctest: +ELLIPSIS
    checkout.yaml: experiments.checkout_button.status: illegal change shipped -> running (...
    >>> states = next_states(defs, {"checkout_button": RecordedState("running", day, "v0")},
    ...                      day + dt.timedelta(days=3))
    >>> states["checkout_button"], states["holiday_theme"].since
    (RecordedState(status='running', since=datetime.date(2026, 11, 8), version='v0'), \
datetime.date(2026, 11, 11))
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strata.contracts import EXPERIMENTS, TRANSITIONS, is_legal_transition
from strata.definitions import DefinitionError, Definitions

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog


@dataclass(frozen=True)
class RecordedState:
    """An experiment's status as the ``experiments`` table records it."""

    status: str
    #: The day (the assignment run's ``as_of``) it took this status; None in an older table.
    since: dt.date | None = None
    #: The definitions version that set the status; None in an older table.
    version: str | None = None


class IllegalTransition(DefinitionError):
    """Definitions that change a status in a way the state machine forbids (a validation error)."""


def states_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, RecordedState]:
    """``experiments`` table rows -> {experiment id: recorded state} (older tables lack the
    ``status_since`` / ``status_version`` columns: their state then has neither)."""
    return {
        r["experiment_id"]: RecordedState(
            (r.get("status") or "").lower(),
            r.get("status_since"),
            r.get("status_version") or r.get("definitions_version"),
        )
        for r in rows
    }


def recorded_states(catalog: Catalog, namespace: str = "strata") -> dict[str, RecordedState] | None:
    """The states the ``experiments`` table records (pyiceberg, no JVM); None when the table does
    not exist yet (nothing registered: every status is new)."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = catalog.load_table(f"{namespace}.{EXPERIMENTS}")
    except NoSuchTableError:
        return None
    wanted = ("experiment_id", "status", "status_since", "status_version", "definitions_version")
    names = {f.name for f in table.schema().fields}
    arrow = table.scan(selected_fields=tuple(c for c in wanted if c in names)).to_arrow()
    return states_from_rows(arrow.to_pylist())


def transition_problems(
    defs: Definitions, recorded: Mapping[str, RecordedState] | None, table: str = EXPERIMENTS
) -> list[str]:
    """One ``file: path: message`` per experiment whose declared status is not a legal change
    from the recorded one (``recorded`` None: nothing recorded yet)."""
    problems = []
    for e in defs.experiments:
        was = (recorded or {}).get(e.id)
        if is_legal_transition(was.status if was else None, e.status):
            continue
        where = f"{e.source or '<definitions>'}: experiments.{e.id}.status"
        if was is None:
            problems.append(
                f"{where}: a new experiment cannot start {e.status!r} (it never ran); "
                "declare it draft or running"
            )
            continue
        legal = TRANSITIONS.get(was.status, ())  # type: ignore[call-overload]
        by = f" by definitions {was.version}" if was.version else ""
        on = f" on {was.since}" if was.since else ""
        problems.append(
            f"{where}: illegal change {was.status} -> {e.status} (recorded {was.status} in "
            f"{table}{by}{on}); legal from {was.status}: "
            f"{', '.join([was.status, *legal])}"
        )
    return problems


def check_transitions(
    defs: Definitions, recorded: Mapping[str, RecordedState] | None, table: str = EXPERIMENTS
) -> None:
    """Raise :class:`IllegalTransition` listing every illegal change of status."""
    problems = transition_problems(defs, recorded, table)
    if problems:
        raise IllegalTransition(problems)


def next_states(
    defs: Definitions, recorded: Mapping[str, RecordedState] | None, day: dt.date
) -> dict[str, RecordedState]:
    """The states to record for ``defs`` registered on ``day``: an unchanged status keeps its
    ``since`` and ``version``; a changed (or new) one starts on ``day`` with ``defs.version``."""
    out = {}
    for e in defs.experiments:
        was = (recorded or {}).get(e.id)
        if was is not None and was.status == e.status and was.since is not None:
            out[e.id] = RecordedState(e.status, was.since, was.version or defs.version)
        else:
            out[e.id] = RecordedState(e.status, day, defs.version)
    return out
