"""The nightly evaluation: which experiments at which date, then their results, verdicts and
recommendations.

One home for what ``strata evaluate`` and the Airflow ``evaluate_experiments`` DAG both do:
:func:`plan_night` picks the analysis date (the newest with aggregates unless given) and the
experiments (every one with aggregates that day unless named), failing with one line
(:class:`NothingToEvaluate`) before any work. A stopped or shipped experiment's analysis ends
at its final date (:func:`final_dates`: the day the ``experiments`` table recorded the stop or
the ship, or its end date when earlier): it is evaluated a last time as of that date (a
``final`` entry of the plan) and then no more; a paused one is analysed over its window as
usual; :func:`evaluate_night` evaluates them into the
Iceberg ``results`` table, at that date or, with ``history``, at every date with aggregates up to
it (what a backfill or a full refresh of the aggregates needs). The CLI evaluates every planned
experiment in one call; the DAG maps one task per experiment over :meth:`NightPlan.task_kwargs`.

Usage:
    >>> from datetime import date
    >>> plan = NightPlan(date(2026, 11, 14), ("checkout_button",))
    >>> plan.task_kwargs()
    [{'experiment_id': 'checkout_button', 'analysis_date': '2026-11-14', 'history': False}]
    >>> ended = NightPlan(date(2026, 11, 14), (), finals=(("dark_mode", date(2026, 11, 11)),))
    >>> ended.task_kwargs()
    [{'experiment_id': 'dark_mode', 'analysis_date': '2026-11-11', 'history': False}]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from strata import contracts
from strata.errors import DataError
from strata.stats.engine import Evaluation, verdicts
from strata.stats.ramps import read_ramp_srm
from strata.stats.recommend import recommend
from strata.stats.results import (
    NightSettlement,
    evaluable_by_date,
    evaluable_experiments,
    run_evaluation,
    settle_night,
)

if TYPE_CHECKING:
    import pandas as pd
    from pyiceberg.catalog import Catalog


class NothingToEvaluate(DataError):
    """The night asked for has nothing to evaluate: no aggregates yet, none at that date, or an
    experiment that is unknown or has no aggregates that day (deterministic: never retried)."""


@dataclass(frozen=True)
class NightPlan:
    """What a nightly run evaluates: these experiments as of ``analysis_date``."""

    analysis_date: date
    experiment_ids: tuple[str, ...]
    history: bool = False
    #: Stopped or shipped experiments evaluated a last time, each as of its final date.
    finals: tuple[tuple[str, date], ...] = ()

    def task_kwargs(self) -> list[dict[str, Any]]:
        """One set of arguments per experiment (the mapped evaluation tasks' ``op_kwargs``)."""
        day = self.analysis_date.isoformat()
        return [
            {"experiment_id": e, "analysis_date": day, "history": self.history}
            for e in self.experiment_ids
        ] + [
            {"experiment_id": e, "analysis_date": d.isoformat(), "history": self.history}
            for e, d in self.finals
        ]


@dataclass(frozen=True)
class NightResult:
    """What :func:`evaluate_night` did: result rows written over ``dates`` analysis dates, and
    the evaluation at the last of them (``analysis_date``)."""

    analysis_date: date
    experiment_ids: tuple[str, ...]
    rows: int
    dates: int
    evaluation: Evaluation
    #: SRM per ramp cohort of the ramped experiments among them over their assigned units
    #: (:mod:`strata.stats.ramps`; empty without ramps); the ``results`` SRM row of such an
    #: experiment is the same test over its exposed units (``goal_cohort_aggregates``).
    ramp_srm: pd.DataFrame | None = None
    #: The segment flags settled across each evaluated date's night (:func:`settle_night`),
    #: oldest first; empty when the caller settles later (``settle=False``).
    settlements: tuple[NightSettlement, ...] = ()
    #: Every analysis date evaluated, oldest first (``dates`` of them).
    evaluated_dates: tuple[date, ...] = ()

    def ramp_srm_lines(self) -> list[str]:
        """``ramp SRM <experiment>: passed|FAILED (chi2 .., dof .., p ..)``, per ramped one."""
        if self.ramp_srm is None:
            return []
        return [
            f"ramp SRM {r.exp_id}: {'passed' if r.passed else 'FAILED'} (chi2 {r.chi2:.2f}, "
            f"dof {r.dof}, p {r.p_value:.4g}, {r.units:,.0f} units in {len(r.observed)} cohorts)"
            for r in self.ramp_srm.itertuples(index=False)
        ]

    def verdicts(self) -> pd.DataFrame:
        """One verdict per experiment × treatment variant at ``analysis_date``."""
        return verdicts(self.evaluation.metrics)

    def recommendations(self) -> pd.DataFrame:
        """One recommendation per experiment at ``analysis_date`` with its reason (the
        ``__recommendation__`` rows of the results, :mod:`strata.stats.recommend`)."""
        ev = self.evaluation
        return recommend(
            ev.metrics, ev.srm, ev.days_run, ev.config.power, ev.config.srm_alpha
        ).recommendations

    def recommendation_lines(self) -> list[str]:
        """``recommend <experiment>: <decision> — <reason>``, one line per experiment."""
        return [
            f"recommend {r.exp_id}: {r.recommendation} — {r.reason}"
            for r in self.recommendations().itertuples(index=False)
        ]


def known_experiments(catalog: Catalog, namespace: str = "strata") -> set[str]:
    """Every experiment id in the ``experiments`` table (what the assignment run recorded)."""
    table = catalog.load_table(f"{namespace}.{contracts.EXPERIMENTS}")
    return set(
        table.scan(selected_fields=("experiment_id",)).to_arrow()["experiment_id"].to_pylist()
    )


def final_dates(catalog: Catalog, namespace: str = "strata") -> dict[str, date]:
    """{experiment: final analysis date} of the stopped and shipped experiments the
    ``experiments`` table records: the day the status was recorded (``status_since``), or the
    end date when earlier (an older table without ``status_since``: the end date)."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = catalog.load_table(f"{namespace}.{contracts.EXPERIMENTS}")
    except NoSuchTableError:
        return {}
    names = {f.name for f in table.schema().fields}
    wanted = ("experiment_id", "status", "end_date", "status_since")
    rows = table.scan(selected_fields=tuple(c for c in wanted if c in names)).to_arrow()
    out = {}
    for r in rows.to_pylist():
        if (r.get("status") or "").lower() not in contracts.ENDED_STATUSES:
            continue
        days = [d for d in (r.get("end_date"), r.get("status_since")) if d is not None]
        if days:
            out[r["experiment_id"]] = min(days)
    return out


def _evaluated_on(
    catalog: Catalog, experiment_ids: Sequence[str], namespace: str
) -> dict[str, set[date]]:
    """The analysis dates the ``results`` table holds per experiment (of ``experiment_ids``)."""
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import In

    if not experiment_ids:
        return {}
    try:
        table = catalog.load_table(f"{namespace}.{contracts.RESULTS}")
    except NoSuchTableError:
        return {}
    rows = table.scan(
        row_filter=In("experiment_id", list(experiment_ids)),
        selected_fields=("experiment_id", "analysis_date"),
    ).to_arrow()
    out: dict[str, set[date]] = {}
    for e, d in zip(
        rows["experiment_id"].to_pylist(), rows["analysis_date"].to_pylist(), strict=True
    ):
        out.setdefault(e, set()).add(d)
    return out


def plan_night(
    catalog: Catalog,
    analysis_date: date | None = None,
    experiment_ids: Sequence[str] = (),
    history: bool = False,
    namespace: str = "strata",
) -> NightPlan:
    """Which experiments at which date; raise :class:`NothingToEvaluate` before any work.

    ``analysis_date`` defaults to the newest ``as_of_date`` with aggregates; ``experiment_ids``
    (default: every experiment with aggregates that day) must be known experiments with
    aggregates that day. A stopped or shipped experiment whose final date
    (:func:`final_dates`) is before that day moves to ``finals``, evaluated as of its final
    date (the newest date with aggregates up to it): by default only while the ``results``
    table has no row at that date yet (once written, its analysis has ended), always when named.
    """
    available, day = evaluable_experiments(catalog, analysis_date, namespace)
    if day is None:
        raise NothingToEvaluate(f"no goal aggregates in {namespace}.goal_aggregates yet")
    if not available:
        raise NothingToEvaluate(f"analysis_date {day}: no goal aggregates for that date")
    wanted = [str(e) for e in experiment_ids]
    if wanted:
        known = known_experiments(catalog, namespace)
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise NothingToEvaluate(f"unknown experiment(s) {unknown}; known: {sorted(known)}")
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise NothingToEvaluate(f"experiment(s) {missing}: no goal aggregates on {day}")
    selected = sorted(set(wanted)) if wanted else available
    final = {e: f for e, f in final_dates(catalog, namespace).items() if f < day and e in selected}
    if not final:
        return NightPlan(day, tuple(selected), history)
    done = {} if wanted else _evaluated_on(catalog, sorted(final), namespace)
    by_date = evaluable_by_date(catalog, max(final.values()), namespace)
    finals = []
    for e, f in sorted(final.items()):
        dates = [d for d, at in by_date.items() if d <= f and e in at]
        if dates and max(dates) not in done.get(e, set()):
            finals.append((e, max(dates)))
    kept = tuple(e for e in selected if e not in final)
    if not kept and not finals:
        ended = ", ".join(f"{e} (final {f})" for e, f in sorted(final.items()))
        raise NothingToEvaluate(
            f"analysis_date {day}: every experiment with aggregates has ended its analysis "
            f"and has its final result: {ended}"
        )
    return NightPlan(day, kept, history, tuple(finals))


def evaluate_night(
    catalog: Catalog,
    experiment_ids: Sequence[str],
    analysis_date: date,
    history: bool = False,
    namespace: str = "strata",
    settle: bool = True,
) -> NightResult:
    """Evaluate ``experiment_ids`` at ``analysis_date`` into the ``results`` table (one commit
    replacing their rows for that date); with ``history``, at every earlier date with
    aggregates too, oldest first, each date with the experiments evaluable at it.

    Then (``settle``) each evaluated date's segment flags are settled across the night
    (:func:`settle_night`: BH over the heterogeneity tests of every experiment with results that
    day, not only these). The DAG's mapped tasks, one experiment each, pass ``settle=False``
    and settle once after all of them (``write_reports``): concurrent settlements would race.
    """
    ids = list(experiment_ids)
    per_date = {analysis_date: ids}
    if history:
        per_date = {
            d: [e for e in ids if e in at]
            for d, at in evaluable_by_date(catalog, analysis_date, namespace).items()
        }
        per_date = {d: at for d, at in per_date.items() if at}
    if not per_date:
        raise NothingToEvaluate(
            f"experiment(s) {sorted(ids)}: no goal aggregates up to {analysis_date}"
        )
    rows = 0
    evaluation = None
    for d, at in per_date.items():
        evaluation, frame = run_evaluation(catalog, at, d, namespace=namespace)
        rows += len(frame)
    assert evaluation is not None
    ramps = read_ramp_srm(catalog, ids, evaluation.config.srm_alpha, namespace)
    settled = tuple(settle_night(catalog, d, namespace) for d in per_date) if settle else ()
    return NightResult(
        max(per_date),
        tuple(ids),
        rows,
        len(per_date),
        evaluation,
        ramps,
        settled,
        tuple(per_date),
    )
