"""The nightly evaluation: which experiments at which date, then their results, verdicts and
recommendations.

One home for what ``strata evaluate`` and the Airflow ``evaluate_experiments`` DAG both do:
:func:`plan_night` picks the analysis date (the newest with aggregates unless given) and the
experiments (every one with aggregates that day unless named), failing with one line
(:class:`NothingToEvaluate`) before any work; :func:`evaluate_night` evaluates them into the
Iceberg ``results`` table, at that date or, with ``history``, at every date with aggregates up to
it (what a backfill or a full refresh of the aggregates needs). The CLI evaluates every planned
experiment in one call; the DAG maps one task per experiment over :meth:`NightPlan.task_kwargs`.

Usage:
    >>> from datetime import date
    >>> plan = NightPlan(date(2026, 11, 14), ("checkout_button",))
    >>> plan.task_kwargs()
    [{'experiment_id': 'checkout_button', 'analysis_date': '2026-11-14', 'history': False}]
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
from strata.stats.results import evaluable_by_date, evaluable_experiments, run_evaluation

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

    def task_kwargs(self) -> list[dict[str, Any]]:
        """One set of arguments per experiment (the mapped evaluation tasks' ``op_kwargs``)."""
        day = self.analysis_date.isoformat()
        return [
            {"experiment_id": e, "analysis_date": day, "history": self.history}
            for e in self.experiment_ids
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
    #: SRM per ramp cohort of the ramped experiments among them (:mod:`strata.stats.ramps`;
    #: empty without ramps): the engine's pooled SRM row is not meaningful for those.
    ramp_srm: pd.DataFrame | None = None

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
    aggregates that day.
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
    return NightPlan(day, tuple(selected), history)


def evaluate_night(
    catalog: Catalog,
    experiment_ids: Sequence[str],
    analysis_date: date,
    history: bool = False,
    namespace: str = "strata",
) -> NightResult:
    """Evaluate ``experiment_ids`` at ``analysis_date`` into the ``results`` table (one commit
    replacing their rows for that date); with ``history``, at every earlier date with
    aggregates too, oldest first, each date with the experiments evaluable at it.
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
    return NightResult(max(per_date), tuple(ids), rows, len(per_date), evaluation, ramps)
