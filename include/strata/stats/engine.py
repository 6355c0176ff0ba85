"""The evaluation engine: ep-stats aggregates in, per metric × variant statistics out.

Everything is computed on arrays shaped (metric rows R, variants V) where a metric row is one
metric of one experiment, so a single call evaluates all experiments × metrics × variants with
numpy, with no per-row Python loop. The model (see docs/statistics.md):

* every metric is ``mean(N) / mean(D)`` over randomisation units, where ``N`` (nominator) and
  ``D`` (denominator) are per-unit linear combinations of goal terms. A denominator made of
  ``global`` terms counts the units (``D = 1``: a plain mean, as in ep-stats); a denominator of
  ``unit`` terms is random per unit (a ratio metric, e.g. clicks / views) and the unit count is the
  ``count(<unit_type>.global.exposure)`` goal;
* variances come from the sums and sums of squares in the aggregates plus, where a side has two or
  more terms, a ratio metric, or a CUPED covariate, the per-unit cross-product sums in ``cross``;
* ratio metrics use the delta method with the numerator × denominator covariance; CUPED uses a
  pre-period covariate with one ``theta`` pooled over the experiment's variants;
* comparisons against the control are Welch tests of the absolute difference; the absolute and the
  relative (Fieller) intervals invert that same test, so they agree with its p-value (adjusted
  intervals, at level alpha * p / p_adj, with the decision); corrections are Holm, Bonferroni or
  Benjamini–Hochberg per family; sequential looks use Lan–DeMets O'Brien–Fleming boundaries on the
  t scale (repeated p-values); SRM is a chi-square test against the design's weights.

Usage:
    >>> import pandas as pd
    >>> goals = pd.DataFrame({
    ...     "exp_id": "e1", "exp_variant_id": [1, 1, 2, 2], "unit_type": "user",
    ...     "agg_type": ["global", "unit"] * 2, "goal": ["exposure", "click"] * 2,
    ...     "count": [4, 2, 4, 6], "sum_sqr_count": [4, 2, 4, 10],
    ...     "sum_value": 0.0, "sum_sqr_value": 0.0, "count_unique": [4, 2, 4, 3]})
    >>> exp = {"experiment_id": "e1",
    ...        "variants": [{"vid": 1, "is_control": True, "weight": 1},
    ...                     {"vid": 2, "weight": 1}],
    ...        "metrics": [{"id": 1, "name": "clicks per user", "role": "primary",
    ...                     "nominator": "count(user.unit.click)",
    ...                     "denominator": "count(user.global.exposure)"}]}
    >>> ev = evaluate(goals, [exp])
    >>> row = ev.metrics.query("variant == '2'").iloc[0]
    >>> float(row["mean"]), round(float(row["abs_diff"]), 6), row["decision"]
    (1.5, 1.0, 'win')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from strata import contracts
from strata.metrics import (
    CAPPED_COLUMNS,
    CAPPED_FUNCTION,
    LinearForm,
    Term,
    capped_term,
    metric_forms,
)
from strata.stats.bayes import bayesian_view
from strata.stats.errors import AggregateError, DesignError, ExpressionError
from strata.stats.inputs import (
    CROSS_COLUMNS,
    DATE_COLUMN,
    KEY_COLUMNS,
    VALUE_COLUMNS,
    check_counts,
    cross_lookup,
    goal_sums,
    quadratic_sums,
)
from strata.stats.models import EvaluationConfig, ExperimentDesign, experiment_from_record
from strata.stats.multiple import adjust, family_sizes
from strata.stats.power import minimum_detectable_effect
from strata.stats.power import power as power_fn
from strata.stats.power import required_sample_size as sample_size_fn
from strata.stats.sequential import BoundaryCurves, final_boundary, looks
from strata.stats.srm import sample_ratio_mismatch

__all__ = [
    "CROSS_COLUMNS",
    "DATE_COLUMN",
    "KEY_COLUMNS",
    "VALUE_COLUMNS",
    "Evaluation",
    "evaluate",
    "required_cross_terms",
    "verdicts",
]

#: Decision labels.
WIN, LOSS, INCONCLUSIVE, INVALID_SRM, NO_DATA = (
    "win",
    "loss",
    "inconclusive",
    "invalid_srm",
    "insufficient_data",
)
MIN_UNITS = 2
#: Interval columns of the metrics frame (NaN where there is no test). ``*_adjusted`` are at level
#: ``alpha * p / p_adj`` and agree with the decision; the others with ``p_value <= alpha``;
#: ``rel_*_delta`` is the delta-method interval of ep-stats (extra, may disagree).
INTERVAL_COLUMNS = (
    "abs_lower",
    "abs_upper",
    "abs_lower_adjusted",
    "abs_upper_adjusted",
    "rel_lower",
    "rel_upper",
    "rel_lower_adjusted",
    "rel_upper_adjusted",
    "rel_lower_delta",
    "rel_upper_delta",
)


@dataclass
class Evaluation:
    """Output of :func:`evaluate`: ``metrics`` (one row per experiment × metric × variant, control
    rows included) and ``srm`` (one row per experiment × unit type)."""

    metrics: pd.DataFrame
    srm: pd.DataFrame
    config: EvaluationConfig
    analysis_date: date | None = None
    #: Days of data per experiment at ``analysis_date`` (from its start, at most its planned
    #: days): the rate the recommendation's "days still needed" extrapolates.
    days_run: dict[str, int] = field(default_factory=dict)


@dataclass
class MetricRows:
    """Metric rows (R) with their terms in fixed-width slots (L)."""

    exp_index: np.ndarray  # (R,)
    experiments: list[ExperimentDesign]
    metrics: list  # (R,) Metric
    terms: list[Term]  # all distinct terms, index = term id
    slot_term: np.ndarray  # (R, L) term id, -1 = empty
    coef: dict[str, np.ndarray]  # "N", "D", "X", "n" -> (R, L)
    is_ratio: np.ndarray  # (R,) bool
    has_cov: np.ndarray  # (R,) bool


# --- design -> metric rows --------------------------------------------------------------------


def _metric_rows(experiments: list[ExperimentDesign], config: EvaluationConfig) -> MetricRows:
    term_id: dict[Term, int] = {}
    rows: list[tuple[int, Any, dict[str, LinearForm], bool]] = []
    for e, exp in enumerate(experiments):
        for m in exp.metrics:
            where = f"experiment {exp.experiment_id!r}, metric {m.id!r}"
            try:
                f = metric_forms(m.nominator, m.denominator, m.covariate if config.cuped else None)
            except ExpressionError as exc:
                raise ExpressionError(f"{where}: {exc}") from exc
            num, den, cov, ratio, unit_type = (
                f.nominator,
                f.denominator,
                f.covariate,
                f.is_ratio,
                f.unit_type,
            )
            if m.cap is not None:  # winsorized: read the capped sums of the goal's rows
                try:
                    t = capped_term(f)
                except ExpressionError as exc:
                    raise ExpressionError(f"{where}: {exc}") from exc
                capped = Term(CAPPED_FUNCTION, t.unit_type, t.agg_type, t.goal, t.dimensions)
                num = LinearForm({capped: num[t]})
            n_form = (
                LinearForm({Term("count", unit_type, "global", config.exposure_goal): 1.0})
                if ratio
                else den
            )
            forms = {"N": num, "D": den if ratio else LinearForm(), "X": cov, "n": n_form}
            for form in forms.values():
                for t in form:
                    term_id.setdefault(t, len(term_id))
            rows.append((e, m, forms, ratio))
    n_rows = len(rows)
    width = max([len({t for f in r[2].values() for t in f}) for r in rows] or [1])
    slot_term = np.full((n_rows, width), -1, dtype=np.int64)
    coef = {k: np.zeros((n_rows, width)) for k in ("N", "D", "X", "n")}
    for r, (_, _, forms, _) in enumerate(rows):  # design-sized loop (metrics), not data rows
        slots: dict[Term, int] = {}
        for k, form in forms.items():
            for t, c in form.items():
                s = slots.setdefault(t, len(slots))
                slot_term[r, s] = term_id[t]
                coef[k][r, s] = c
    return MetricRows(
        exp_index=np.array([r[0] for r in rows], dtype=np.int64),
        experiments=experiments,
        metrics=[r[1] for r in rows],
        terms=list(term_id),
        slot_term=slot_term,
        coef=coef,
        is_ratio=np.array([r[3] for r in rows], dtype=bool),
        has_cov=np.array([bool(r[2]["X"]) for r in rows], dtype=bool),
    )


# --- statistics ---------------------------------------------------------------------------------


def evaluate(
    goals: pd.DataFrame,
    experiments: Sequence[ExperimentDesign | Mapping[str, Any]],
    cross: pd.DataFrame | None = None,
    analysis_date: date | None = None,
    config: EvaluationConfig | None = None,
    cohorts: pd.DataFrame | None = None,
    cohort_cross: pd.DataFrame | None = None,
) -> Evaluation:
    """Evaluate every metric of every experiment from ep-stats-layout aggregates.

    ``goals``: the aggregated-goals table (``KEY_COLUMNS`` + dimension columns + ``VALUE_COLUMNS``),
    one row per experiment × variant × unit type × agg type × goal × dimension values, each
    aggregated over the whole analysis window per unit. ``cross``: per-unit cross-product sums
    (``CROSS_COLUMNS``) for metrics that need them (see :func:`required_cross_terms`).
    ``experiments``: :class:`ExperimentDesign` objects or experiments-table records.
    ``analysis_date`` with the experiments' start/end dates enables sequential boundaries (one
    look per day). Aggregate rows of experiments not listed are not read; rows of goals no metric
    uses are only checked for valid counts (:func:`strata.stats.inputs.check_counts`); rows for
    variants missing from a listed experiment's design are an error.

    ``cohorts`` / ``cohort_cross``: the same aggregates per ramp cohort (a ``ramp_period``
    column; ``goal_cohort_aggregates``, the ramped experiments only). An experiment with cohort
    rows is evaluated by cohort (:func:`_cohort_srm`, :func:`_stratify`): its SRM is the
    chi-square summed over cohorts against each period's shares, and its metrics (but capped
    ones and those with dimension terms, which stay pooled) are post-stratified by cohort. The
    others are evaluated as without ``cohorts``.

    The steps: designs → metric rows → SRM → term sums → per-variant moments → CUPED →
    (stratification by ramp cohort) → comparisons with the control → significance
    (corrections, sequential boundaries) → power → decisions → the Bayesian view
    (:mod:`strata.stats.bayes`) → the metrics frame.
    """
    config = config or EvaluationConfig()
    exps = _designs(experiments)
    rows = _metric_rows(exps, config)
    n_var = max(len(e.variants) for e in exps)
    check_counts(goals, exps, config.exposure_goal)
    srm = sample_ratio_mismatch(goals, exps, config)
    by_cohort = _cohort_frames(cohorts, cohort_cross, exps)
    if by_cohort:
        srm = _cohort_srm(srm, by_cohort, exps, config)
    days = _days_run(exps, analysis_date)
    if not len(rows.metrics):
        return Evaluation(pd.DataFrame(), srm, config, analysis_date, days)
    sums = goal_sums(goals, exps, rows, n_var)
    q = quadratic_sums(rows, sums, cross_lookup(cross, exps, rows, n_var), n_var)
    mom = _moments(rows, sums, q, exps, n_var)
    cuped = _cuped(rows, mom)
    if by_cohort:
        _stratify(rows, exps, mom, cuped, by_cohort, n_var)
    cmp = _comparisons(rows, exps, mom, cuped, n_var)
    sig = _significance(rows, exps, cmp, analysis_date, config)
    pw = _power(rows, mom, cmp, sig, config)
    decision = _decisions(rows, exps, srm, cmp, sig)
    rel_ci = fieller_relative(cmp.m, cmp.m_c, cmp.a_t, cmp.a_c, sig.t_crit)
    rel_ci_adj = fieller_relative(cmp.m, cmp.m_c, cmp.a_t, cmp.a_c, sig.t_crit_adj)
    with np.errstate(invalid="ignore"):  # a zero control mean: inf - inf
        rel_delta = (cmp.rel - sig.t_crit * cmp.rel_se, cmp.rel + sig.t_crit * cmp.rel_se)
    bayes = bayesian_view(  # the Bayesian view beside the frequentist result (bayes.py)
        cmp.m, cmp.var_l, cmp.n, cmp.is_ctrl, cmp.testable,
        [mt.direction for mt in rows.metrics], config,
    )  # fmt: skip
    out = _frame(
        rows,
        exps,
        mom.valid_variant,
        n_var,
        {
            "count": mom.n,
            "sum_value": mom.sN,
            "mean": cuped.m,
            "mean_unadjusted": cuped.m_raw,
            "std": pw.sd,
            "variance_reduction": cuped.variance_reduction,
            "abs_diff": np.where(cmp.is_ctrl, np.nan, cmp.diff),
            "abs_se": np.where(cmp.is_ctrl, np.nan, cmp.se),
            "abs_lower": cmp.diff - sig.t_crit * cmp.se,
            "abs_upper": cmp.diff + sig.t_crit * cmp.se,
            "abs_lower_adjusted": cmp.diff - sig.t_crit_adj * cmp.se,
            "abs_upper_adjusted": cmp.diff + sig.t_crit_adj * cmp.se,
            "rel_diff": np.where(cmp.is_ctrl, np.nan, cmp.rel),
            "rel_lower": rel_ci[0],
            "rel_upper": rel_ci[1],
            "rel_lower_adjusted": rel_ci_adj[0],
            "rel_upper_adjusted": rel_ci_adj[1],
            "rel_se": np.where(cmp.is_ctrl, np.nan, cmp.rel_se),
            "rel_lower_delta": rel_delta[0],
            "rel_upper_delta": rel_delta[1],
            "t_stat": np.where(cmp.is_ctrl, np.nan, cmp.t_stat),
            "df": np.where(cmp.is_ctrl, np.nan, cmp.df),
            "p_value": sig.p,
            "p_value_adjusted": sig.p_adj,
            "p_value_fixed": np.where(cmp.testable, cmp.p, np.nan),
            "critical_value": np.where(cmp.testable, sig.t_crit, np.nan),
            "critical_value_adjusted": np.where(cmp.testable, sig.t_crit_adj, np.nan),
            "mde": pw.mde,
            "power": pw.power,
            "required_sample_size": pw.required,
            **bayes,
        },
        {
            "significant": sig.significant & cmp.testable,
            "decision": decision,
            "is_control": cmp.is_ctrl,
        },
        sig.look,
        sig.planned,
    )
    for col in INTERVAL_COLUMNS:
        out.loc[~out["p_value"].notna(), col] = np.nan
    return Evaluation(out, srm, config, analysis_date, days)


#: The ramp cohort column of the cohort aggregates (strata.contracts.COHORT_COLUMN).
COHORT_COLUMN = contracts.COHORT_COLUMN
#: ``method`` of an SRM row: against the design's weights, or per ramp cohort.
SRM_POOLED, SRM_COHORTS = "pooled", "ramp_cohorts"


def _cohort_frames(
    cohorts: pd.DataFrame | None,
    cohort_cross: pd.DataFrame | None,
    exps: list[ExperimentDesign],
) -> dict[int, tuple[pd.DataFrame, pd.DataFrame | None]]:
    """{ramp period: (its goal rows, its cross rows)} of the listed experiments, without the
    ``ramp_period`` column; empty when no listed experiment has cohort rows. A period past an
    experiment's ramp (or cohorts of one without a ramp) is an :class:`AggregateError`."""
    if cohorts is None or not len(cohorts):
        return {}
    if COHORT_COLUMN not in cohorts.columns:
        raise AggregateError(f"cohort aggregates lack the {COHORT_COLUMN!r} column")
    wanted = {e.experiment_id: e for e in exps}
    c = cohorts[cohorts["exp_id"].astype(str).isin(wanted)]
    if not len(c):
        return {}
    periods = pd.to_numeric(c[COHORT_COLUMN], errors="coerce")
    if periods.isna().any() or (periods < 0).any():
        raise AggregateError(f"cohort aggregates: missing or negative {COHORT_COLUMN}")
    for exp_id, top in periods.groupby(c["exp_id"].astype(str)).max().items():
        n_periods = max(len(wanted[exp_id].periods), 1)
        if top >= n_periods:
            raise AggregateError(
                f"cohort aggregates of {exp_id!r}: ramp period {int(top)} but its design has "
                f"{n_periods} period(s) (the experiments table's ramp)"
            )
    x = None
    if cohort_cross is not None and len(cohort_cross):
        if COHORT_COLUMN not in cohort_cross.columns:
            raise AggregateError(f"cohort cross-products lack the {COHORT_COLUMN!r} column")
        x = cohort_cross[cohort_cross["exp_id"].astype(str).isin(wanted)]
    out = {}
    for k in sorted(periods.astype(int).unique()):
        g = c[periods.astype(int) == k].drop(columns=[COHORT_COLUMN])
        xk = None if x is None else x[x[COHORT_COLUMN] == k].drop(columns=[COHORT_COLUMN])
        out[int(k)] = (g, xk)
    return out


def _cohort_srm(
    srm: pd.DataFrame,
    by_cohort: Mapping[int, tuple[pd.DataFrame, pd.DataFrame | None]],
    exps: list[ExperimentDesign],
    config: EvaluationConfig,
) -> pd.DataFrame:
    """The SRM rows of the experiments with cohort rows replaced by the per-cohort test
    (:func:`strata.stats.ramps.cohort_srm`: each cohort's exposures against its period's shares,
    chi-square and degrees of freedom summed); ``observed`` stays the pooled exposures per
    variant and ``expected_share`` becomes the pooled share the cohorts' sizes imply."""
    from strata.stats.ramps import cohort_srm

    exposures = pd.concat(
        [g.assign(**{COHORT_COLUMN: k}) for k, (g, _) in by_cohort.items()], ignore_index=True
    )
    exposures = exposures[
        (exposures["agg_type"] == "global") & (exposures["goal"] == config.exposure_goal)
    ]
    out = srm.copy()
    if "method" not in out:
        out["method"] = SRM_POOLED
    out["method"] = out["method"].astype(object)
    for exp in exps:  # design-sized
        mine = exposures[exposures["exp_id"].astype(str) == exp.experiment_id]
        if mine.empty:
            continue
        shares = np.asarray(exp.periods or ((tuple(v.weight for v in exp.variants)),), float)
        shares = shares / shares.sum(axis=1, keepdims=True)
        vids = [v.vid for v in exp.variants]
        for unit_type, part in mine.groupby(mine["unit_type"].astype(str)):
            observed = np.zeros_like(shares)
            for r in part.itertuples(index=False):
                vid = int(r.exp_variant_id)
                if vid not in vids:
                    raise AggregateError(
                        f"cohort aggregates of {exp.experiment_id!r}: variant {vid} is not in "
                        f"its design (vids {vids})"
                    )
                observed[int(getattr(r, COHORT_COLUMN)), vids.index(vid)] += float(r.count)
            chi2, dof, p = cohort_srm(observed, shares)
            sizes = observed.sum(axis=1)
            row = {
                "exp_id": exp.experiment_id,
                "unit_type": unit_type,
                "exposures": float(observed.sum()),
                "observed": list(observed.sum(axis=0)),
                "expected_share": list(sizes @ shares / max(sizes.sum(), 1.0)),
                "chi2": float(chi2),
                "dof": int(dof),
                "p_value": float(p),
                "passed": bool(p >= config.srm_alpha),
                "method": SRM_COHORTS,
            }
            hit = (out["exp_id"] == exp.experiment_id) & (out["unit_type"] == unit_type)
            out = out[~hit]
            out = pd.concat([out, pd.DataFrame([row])], ignore_index=True)
    return out.sort_values(["exp_id", "unit_type"], kind="stable", ignore_index=True)


def _stratify(
    rows: MetricRows,
    exps: list[ExperimentDesign],
    mom: _Moments,
    cuped: _Cuped,
    by_cohort: Mapping[int, tuple[pd.DataFrame, pd.DataFrame | None]],
    n_var: int,
) -> None:
    """Post-stratify by ramp cohort, in place, the metric rows of the experiments with cohort
    rows (not capped metrics, nor metrics with dimension terms: the cohort aggregates carry
    neither; those stay pooled).

    Each cohort's moments and CUPED are computed as for the pooled rows (its own ``theta``);
    cohort ``c`` gets weight ``w_c = N_c / sum N`` (its units in every variant) when every
    variant has at least ``MIN_UNITS`` units in it (else it is left out, its weight going to the
    others, as :func:`strata.stats.ramps.stratified_difference`). Each variant's value is then
    ``sum_c w_c m_vc`` and the variance of its mean ``sum_c w_c² Var_vc / n_vc``; the pooled unit
    count ``n`` stays, with the variance scaled to ``n · that`` so every later step (Welch test,
    intervals, power, the Bayesian view) uses the stratified estimate. A row with no usable
    cohort has insufficient data."""
    ids = {e.experiment_id for e in exps}
    with_cohorts = {
        str(e) for g, _ in by_cohort.values() for e in g["exp_id"].astype(str).unique()
    } & ids
    exp_has = np.array([e.experiment_id in with_cohorts for e in exps])
    plain = np.array(
        [
            m.cap is None and not any(rows.terms[t].dimensions for t in slots if t >= 0)
            for m, slots in zip(rows.metrics, rows.slot_term, strict=True)
        ],
        dtype=bool,
    )
    sel = np.flatnonzero(exp_has[rows.exp_index] & plain)
    if not len(sel):
        return
    sub = MetricRows(
        exp_index=rows.exp_index[sel],
        experiments=rows.experiments,
        metrics=[rows.metrics[r] for r in sel],
        terms=rows.terms,
        slot_term=rows.slot_term[sel],
        coef={k: c[sel] for k, c in rows.coef.items()},
        is_ratio=rows.is_ratio[sel],
        has_cov=rows.has_cov[sel],
    )
    capped = any(t.func == CAPPED_FUNCTION for t in rows.terms)
    parts = []
    for goals_k, cross_k in by_cohort.values():
        if capped:  # capped metrics are not stratified: their columns are only placeholders
            goals_k = goals_k.assign(**dict.fromkeys(CAPPED_COLUMNS, np.nan))
        sums = goal_sums(goals_k, exps, sub, n_var)
        q = quadratic_sums(sub, sums, cross_lookup(cross_k, exps, sub, n_var), n_var)
        mom_k = _moments(sub, sums, q, exps, n_var)
        parts.append((mom_k, _cuped(sub, mom_k)))
    n_k = np.stack([mk.n for mk, _ in parts])  # (K, R', V)
    defined = mom.valid_variant[sub.exp_index]  # (R', V): the experiment's variants
    usable = np.stack([(mk.valid | ~defined).all(axis=1) for mk, _ in parts])  # (K, R')
    size = np.where(usable, np.where(defined, n_k, 0).sum(axis=2), 0.0)
    total = size.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (size / total)[:, :, None]  # (K, R', 1)

        def combine(values: list[np.ndarray], squared: bool = False) -> np.ndarray:
            a = np.stack(values)
            terms = w**2 * a / n_k if squared else w * a
            return np.where(usable[:, :, None], terms, 0.0).sum(axis=0)

        m = combine([ck.m for _, ck in parts])
        m_raw = combine([ck.m_raw for _, ck in parts])
        a_cuped = combine([ck.var_l for _, ck in parts], squared=True)
        a_raw = combine([mk.var_l for mk, _ in parts], squared=True)
        n = mom.n[sel]
        var_l = a_cuped * n
        reduction = np.where(sub.has_cov[:, None] & (a_raw > 0), 1.0 - a_cuped / a_raw, np.nan)
    ok = (total > 0)[:, None] & defined
    mom.valid[sel] = mom.valid[sel] & ok
    cuped.m[sel] = np.where(ok, m, np.nan)
    cuped.m_raw[sel] = np.where(ok, m_raw, np.nan)
    cuped.var_l[sel] = np.where(ok, var_l, np.nan)
    cuped.variance_reduction[sel] = np.where(ok & sub.has_cov[:, None], reduction, np.nan)


def _days_run(exps: list[ExperimentDesign], analysis_date: date | None) -> dict[str, int]:
    """Days from each experiment's start to ``analysis_date`` (inclusive), capped at its planned
    days (no units arrive after the end); experiments without a start date are left out."""
    out = {}
    for e in exps:  # design-sized
        if analysis_date is None or e.start_date is None:
            continue
        days = (analysis_date - e.start_date).days + 1
        if e.planned_days is not None:
            days = min(days, e.planned_days)
        if days >= 1:
            out[e.experiment_id] = days
    return out


def _designs(experiments: Sequence[ExperimentDesign | Mapping[str, Any]]) -> list[ExperimentDesign]:
    """Validated designs with unique ids."""
    exps = [
        e if isinstance(e, ExperimentDesign) else experiment_from_record(e) for e in experiments
    ]
    if not exps:
        raise DesignError("no experiments to evaluate")
    ids = [e.experiment_id for e in exps]
    if len(set(ids)) != len(ids):
        raise DesignError(
            f"duplicate experiment ids: {sorted({i for i in ids if ids.count(i) > 1})}"
        )
    return exps


@dataclass
class _Moments:
    """Per metric row × variant (R, V): units ``n``, sums, the metric value ``m`` and the variance
    of its per-unit linearisation ``var_l``, and what CUPED needs (covariate moments,
    ``cov_lx``)."""

    n: np.ndarray
    sN: np.ndarray
    sX: np.ndarray
    mX: np.ndarray
    dof1: np.ndarray
    vXX: np.ndarray
    m: np.ndarray
    var_l: np.ndarray
    cov_lx: np.ndarray
    valid: np.ndarray
    valid_variant: np.ndarray  # (E, V)


def _moments(
    rows: MetricRows,
    sums: dict[str, np.ndarray],
    q: np.ndarray,
    exps: list[ExperimentDesign],
    n_var: int,
) -> _Moments:
    """Means, variances and covariances of every metric row and variant (delta method)."""
    e = rows.exp_index[:, None]
    v = np.arange(n_var)[None, :]
    s1 = sums["s1"][e[:, :, None], v[:, :, None], np.maximum(rows.slot_term, 0)[:, None, :]]
    s1 = np.where(rows.slot_term[:, None, :] >= 0, s1, 0.0)
    cN, cD, cX, cn = (rows.coef[k][:, None, :] for k in ("N", "D", "X", "n"))
    n = np.sum(cn * s1, axis=-1)
    sN, sX = np.sum(cN * s1, axis=-1), np.sum(cX * s1, axis=-1)

    def quad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-unit cross sums of two linear forms: sum_u (a·T_u)(b·T_u) = a^T Q b."""
        return np.einsum("rvl,rvlm,rvm->rv", a, q, b)

    cN_b, cD_b, cX_b = (np.broadcast_to(c, s1.shape) for c in (cN, cD, cX))
    sNN, sXX, sNX = quad(cN_b, cN_b), quad(cX_b, cX_b), quad(cN_b, cX_b)
    ratio = rows.is_ratio[:, None]
    # a mean metric is a ratio metric with D = 1 for every unit
    sD = np.where(ratio, np.sum(cD * s1, axis=-1), n)
    sDD = np.where(ratio, quad(cD_b, cD_b), n)
    sND = np.where(ratio, quad(cN_b, cD_b), sN)
    sDX = np.where(ratio, quad(cD_b, cX_b), sX)

    valid_variant = np.zeros((len(exps), n_var), dtype=bool)
    for i, exp in enumerate(exps):
        valid_variant[i, : len(exp.variants)] = True
    valid = valid_variant[rows.exp_index] & (n >= MIN_UNITS)
    with np.errstate(divide="ignore", invalid="ignore"):
        mN, mD, mX = sN / n, sD / n, sX / n
        dof1 = n - 1
        vNN = (sNN - sN * mN) / dof1
        vDD = (sDD - sD * mD) / dof1
        cND = (sND - sN * mD) / dof1
        vXX = (sXX - sX * mX) / dof1
        cNX = (sNX - sN * mX) / dof1
        cDX = (sDX - sD * mX) / dof1
        m = mN / mD
        var_l = (vNN - 2 * m * cND + m**2 * vDD) / mD**2
        cov_lx = (cNX - m * cDX) / mD
    with np.errstate(divide="ignore", invalid="ignore"):  # padded variants have n = 0
        mean_sq = {"nominator": sNN / n, "denominator": sDD / n, "covariate": sXX / n}
    _check_variances(rows, valid, {"nominator": (vNN, mean_sq["nominator"]),
                                   "denominator": (vDD, mean_sq["denominator"]),
                                   "covariate": (vXX, mean_sq["covariate"])})  # fmt: skip
    var_l = np.where(valid, np.maximum(var_l, 0.0), np.nan)
    m = np.where(valid, m, np.nan)
    return _Moments(n, sN, sX, mX, dof1, vXX, m, var_l, cov_lx, valid, valid_variant)


@dataclass
class _Cuped:
    """The metric value and variance after CUPED (unchanged where a row has no covariate), the
    value before, and the share of variance removed, ``1 - var_cuped / var_raw`` (NaN without
    CUPED)."""

    m: np.ndarray
    var_l: np.ndarray
    m_raw: np.ndarray
    variance_reduction: np.ndarray


def _cuped(rows: MetricRows, mom: _Moments) -> _Cuped:
    """CUPED with one ``theta`` per metric row pooled over its variants (docs/statistics.md)."""
    m, var_l = mom.m, mom.var_l
    m_raw, var_raw = m.copy(), var_l
    cuped = rows.has_cov[:, None] & mom.valid
    if rows.has_cov.any():
        w = np.where(cuped, mom.dof1, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            theta = np.nansum(w * mom.cov_lx, axis=1) / np.nansum(w * mom.vXX, axis=1)
            x_pool = np.nansum(np.where(cuped, mom.sX, 0), axis=1) / np.nansum(
                np.where(cuped, mom.n, 0), axis=1
            )
        theta = np.where(np.isfinite(theta), theta, 0.0)[:, None]
        m = np.where(cuped, m - theta * (mom.mX - x_pool[:, None]), m)
        var_l = np.where(
            cuped,
            np.maximum(var_l - 2 * theta * mom.cov_lx + theta**2 * mom.vXX, 0.0),
            var_l,
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        reduction = np.where(cuped & (var_raw > 0), 1.0 - var_l / var_raw, np.nan)
    return _Cuped(m, var_l, m_raw, reduction)


@dataclass
class _Comparisons:
    """Each variant against its experiment's control (R, V): Welch statistics and p-values."""

    m: np.ndarray
    m_c: np.ndarray
    var_l: np.ndarray
    var_c: np.ndarray
    n: np.ndarray
    is_ctrl: np.ndarray
    se: np.ndarray
    diff: np.ndarray
    df: np.ndarray
    t_stat: np.ndarray
    rel: np.ndarray
    rel_se: np.ndarray
    testable: np.ndarray
    p: np.ndarray
    a_t: np.ndarray  # Var / n of the variant
    a_c: np.ndarray  # Var / n of its control


def _comparisons(
    rows: MetricRows, exps: list[ExperimentDesign], mom: _Moments, cuped: _Cuped, n_var: int
) -> _Comparisons:
    """Welch tests of every treatment variant against the control, absolute and relative."""
    m, var_l, n = cuped.m, cuped.var_l, mom.n
    v = np.arange(n_var)[None, :]
    ctrl = np.array([next(j for j, x in enumerate(exp.variants) if x.is_control) for exp in exps])
    c_idx = ctrl[rows.exp_index][:, None]

    def take(a: np.ndarray) -> np.ndarray:
        """The control variant's column of an (R, V) array, as (R, 1)."""
        return np.take_along_axis(a, c_idx, axis=1)

    m_c, var_c, n_c = take(m), take(var_l), take(n)
    is_ctrl = v == c_idx
    with np.errstate(divide="ignore", invalid="ignore"):
        a_t, a_c = var_l / n, var_c / n_c
        se = np.sqrt(a_t + a_c)
        diff = m - m_c
        df = (a_t + a_c) ** 2 / (a_t**2 / (n - 1) + a_c**2 / (n_c - 1))
        t_stat = diff / se
        rel = diff / np.abs(m_c)
        rel_se = np.sqrt(a_t + (m / m_c) ** 2 * a_c) / np.abs(m_c)
    testable = mom.valid & ~is_ctrl & np.isfinite(t_stat) & (se > 0) & np.isfinite(m_c)
    p = np.where(testable, 2 * stats.t.sf(np.abs(t_stat), df), np.nan)
    return _Comparisons(
        m, m_c, var_l, var_c, n, is_ctrl, se, diff, df, t_stat, rel, rel_se, testable, p, a_t, a_c
    )


@dataclass
class _Significance:
    """p-values on the decision's scale, their adjustment, and the critical values of the
    intervals that agree with them: ``t_crit`` (unadjusted: excludes zero exactly when
    ``p <= alpha``) and ``t_crit_adj`` (level ``alpha * p / p_adj``: excludes zero exactly when
    ``p_adj <= alpha``, the decision). Both on the t scale of the Welch statistic."""

    family_size: np.ndarray
    p: np.ndarray
    p_adj: np.ndarray
    look: np.ndarray
    planned: np.ndarray
    seq: np.ndarray
    t_crit: np.ndarray
    t_crit_adj: np.ndarray
    significant: np.ndarray


def _significance(
    rows: MetricRows,
    exps: list[ExperimentDesign],
    cmp: _Comparisons,
    analysis_date: date | None,
    config: EvaluationConfig,
) -> _Significance:
    """Multiple-testing families (:mod:`strata.stats.multiple`) and group-sequential looks
    (:mod:`strata.stats.sequential`).

    Fixed horizon: the Welch p-value. Sequential: the repeated p-value of the look (the smallest
    level whose Lan–DeMets boundary the statistic reaches), with the Welch t moved to the z scale
    by matching its nominal p-value, ``z = Φ⁻¹(1 - F_t,df(|t|))``, so small samples keep the
    boundaries' error rate. Either p-value is then adjusted per family (Holm, BH, Bonferroni or
    none) and the decision is ``p_adj <= alpha``; sequential Holm is then the step-down
    procedure with boundaries at alpha / m, alpha / (m - 1), ... (Maurer & Bretz 2013)."""
    family_size = family_sizes(cmp.testable, rows.exp_index, len(exps), config)
    look, planned = looks(exps, analysis_date, config)
    seq = planned[rows.exp_index] > 0
    alpha = config.alpha
    df = np.where(cmp.testable, cmp.df, np.nan)
    p_fixed = np.where(cmp.testable, cmp.p, np.nan)
    p = p_fixed
    if seq.any():
        if config.correction == "bh":
            raise DesignError(
                "Benjamini–Hochberg has no group-sequential version; use holm, bonferroni or none"
            )
        m_max = int(max(family_size.max(), 1))
        curves = BoundaryCurves(tuple(alpha / j for j in range(1, m_max + 1)))
        with np.errstate(invalid="ignore"):
            z = stats.norm.isf(stats.t.sf(np.abs(cmp.t_stat), df))
        look_r, planned_r = look[rows.exp_index], planned[rows.exp_index]
        p = np.where(seq[:, None], curves.p_value(z, look_r, planned_r), p_fixed)
        p = np.where(cmp.testable, p, np.nan)
    p_adj = adjust(p, rows.exp_index, len(exps), config)
    with np.errstate(divide="ignore", invalid="ignore"):
        # the adjusted interval's level alpha * p / p_adj (p_adj >= p); p = p_adj = 0 underflow:
        # any finite level excludes zero, take the Bonferroni one
        ratio = np.where(p_adj > 0, p / p_adj, 1.0 / np.maximum(family_size, 1))
        level_adj = np.where(cmp.testable, alpha * np.minimum(ratio, 1.0), np.nan)
        t_crit = stats.t.isf(alpha / 2, df)
        t_crit_adj = stats.t.isf(level_adj / 2, df)
        if seq.any():
            level = np.where(cmp.testable, alpha, np.nan)
            z_crit = curves.boundary(level, look_r, planned_r)
            z_crit_adj = curves.boundary(level_adj, look_r, planned_r)
            t_crit = np.where(seq[:, None], stats.t.isf(stats.norm.sf(z_crit), df), t_crit)
            t_crit_adj = np.where(
                seq[:, None], stats.t.isf(stats.norm.sf(z_crit_adj), df), t_crit_adj
            )
    significant = cmp.testable & (p_adj <= alpha)
    return _Significance(family_size, p, p_adj, look, planned, seq, t_crit, t_crit_adj, significant)


def fieller_relative(
    m_t: np.ndarray,
    m_c: np.ndarray,
    a_t: np.ndarray,
    a_c: np.ndarray,
    crit: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fieller interval of the relative difference ``(m_t - m_c) / |m_c|``: every relative effect
    ``ρ - 1`` (``ρ = μ_t / μ_c``) that the test of ``m_t - ρ m_c = 0`` with critical value
    ``crit`` does not reject, ``(m_t - ρ m_c)² <= crit² (a_t + ρ² a_c)`` (``a = Var / n`` of each
    arm). At ``ρ = 1`` that is the Welch test, so the interval excludes zero exactly when the test
    of the difference is significant. It is bounded only when the control mean is itself
    significantly non-zero (``m_c² > crit² a_c``); otherwise, and when the treatment arm is
    constant zero (a zero-width degenerate set), both bounds are NaN: not estimable.

    Usage:
        >>> lo, hi = fieller_relative(np.array([1.2]), np.array([1.0]), np.array([0.01]),
        ...                           np.array([0.01]), np.array([1.96]))
        >>> bool(lo[0] < 0.2 < hi[0]), bool(lo[0] < 0 < hi[0])  # |t| = 0.2 / 0.141 < 1.96
        (True, True)
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a = m_c**2 - crit**2 * a_c
        b = m_t * m_c
        c = m_t**2 - crit**2 * a_t
        disc = np.sqrt(np.maximum(b**2 - a * c, 0.0))
        r_lo, r_hi = (b - disc) / a, (b + disc) / a
        sign = np.sign(m_c)
        lo = np.where(sign > 0, r_lo - 1.0, 1.0 - r_hi)
        hi = np.where(sign > 0, r_hi - 1.0, 1.0 - r_lo)
    estimable = (a > 0) & ~((m_t == 0) & (a_t == 0)) & np.isfinite(lo) & np.isfinite(hi)
    return np.where(estimable, lo, np.nan), np.where(estimable, hi, np.nan)


@dataclass
class _Power:
    sd: np.ndarray
    mde: np.ndarray
    power: np.ndarray
    required: np.ndarray


def _power(
    rows: MetricRows,
    mom: _Moments,
    cmp: _Comparisons,
    sig: _Significance,
    config: EvaluationConfig,
) -> _Power:
    """Power / MDE with the critical value of the test actually run (Bonferroni over the family,
    Holm's first step; BH's first step is the same level)."""
    alpha, family_size, n, testable = config.alpha, sig.family_size, mom.n, cmp.testable
    fam = np.ones_like(family_size) if config.correction == "none" else np.maximum(family_size, 1)
    crit_power = np.where(
        sig.seq[:, None],
        final_boundary(sig.planned, rows.exp_index, alpha, fam),
        stats.norm.isf(alpha / fam / 2),
    )
    sd, sd_c = np.sqrt(cmp.var_l), np.sqrt(cmp.var_c)
    m_c = cmp.m_c
    mde = np.where(
        testable,
        minimum_detectable_effect(
            m_c, sd_c, n, power=config.power, crit=crit_power, std_treatment=sd
        ),
        np.nan,
    )
    min_eff = np.array([mt.minimum_effect or np.nan for mt in rows.metrics])[:, None]
    pw = np.where(
        testable, power_fn(m_c, sd_c, min_eff, n, crit=crit_power, std_treatment=sd), np.nan
    )
    req = np.where(
        testable,
        sample_size_fn(m_c, sd_c, min_eff, power=config.power, crit=crit_power, std_treatment=sd),
        np.nan,
    )
    return _Power(sd, mde, pw, req)


def _decisions(
    rows: MetricRows,
    exps: list[ExperimentDesign],
    srm: pd.DataFrame,
    cmp: _Comparisons,
    sig: _Significance,
) -> np.ndarray:
    """win / loss (by the metric's direction) / inconclusive / insufficient_data / invalid_srm;
    None on control rows."""
    srm_failed = srm.groupby("exp_id")["passed"].all().map(lambda ok: not ok).to_dict()
    exp_srm_fail = np.array([srm_failed.get(x.experiment_id, False) for x in exps])[rows.exp_index][
        :, None
    ]
    direction = np.array([1.0 if mt.direction == "increase" else -1.0 for mt in rows.metrics])[
        :, None
    ]
    decision = np.where(
        sig.significant, np.where(cmp.diff * direction > 0, WIN, LOSS), INCONCLUSIVE
    ).astype(object)
    decision = np.where(cmp.testable, decision, NO_DATA)
    decision = np.where(exp_srm_fail & ~cmp.is_ctrl, INVALID_SRM, decision)
    return np.where(cmp.is_ctrl, np.array(None, dtype=object), decision)


#: Relative tolerance for round-off when a sum of squares is checked against its sum.
VARIANCE_TOLERANCE = 1e-9


def _check_variances(rows: MetricRows, valid: np.ndarray, parts: dict) -> None:
    """A negative sample variance means sum_sqr_* is not the sum of per-unit squares (e.g. squares
    of per-event or per-day values were summed). That is bad input, not something to clip."""
    for side, (var, mean_sq) in parts.items():
        with np.errstate(invalid="ignore"):
            bad = valid & (var < -VARIANCE_TOLERANCE * (np.abs(mean_sq) + 1.0))
        if bad.any():
            r, v = np.argwhere(bad)[0]
            exp = rows.experiments[rows.exp_index[r]]
            raise AggregateError(
                f"negative variance of the {side} of metric {rows.metrics[r].id!r} in experiment "
                f"{exp.experiment_id!r}, variant {exp.variants[v].vid!r}: its sum of squares is "
                "smaller than sum²/count, so it is not a sum of per-unit squares"
            )


def _frame(rows, exps, valid_variant, n_var, floats, others, look, planned) -> pd.DataFrame:
    present = valid_variant[rows.exp_index]
    r_idx, v_idx = np.nonzero(present)
    exp_of = rows.exp_index[r_idx]
    vid = np.array(
        [[str(x.vid) for x in e.variants] + [""] * (n_var - len(e.variants)) for e in exps],
        dtype=object,
    )
    vname = np.array(
        [[x.name for x in e.variants] + [""] * (n_var - len(e.variants)) for e in exps],
        dtype=object,
    )
    ctrl = np.array([str(e.control.vid) for e in exps], dtype=object)
    data = {
        "exp_id": np.array([e.experiment_id for e in exps], dtype=object)[exp_of],
        "metric_id": np.array([mt.id for mt in rows.metrics], dtype=object)[r_idx],
        "metric_name": np.array([mt.name for mt in rows.metrics], dtype=object)[r_idx],
        "role": np.array([mt.role for mt in rows.metrics], dtype=object)[r_idx],
        "direction": np.array([mt.direction for mt in rows.metrics], dtype=object)[r_idx],
        "minimum_effect": np.array(
            [np.nan if mt.minimum_effect is None else mt.minimum_effect for mt in rows.metrics]
        )[r_idx],
        "margin": np.array([np.nan if mt.margin is None else mt.margin for mt in rows.metrics])[
            r_idx
        ],
        "kind": np.where(rows.is_ratio, "ratio", "mean")[r_idx],
        "cuped": rows.has_cov[r_idx],
        "variant": vid[exp_of, v_idx],
        "variant_name": vname[exp_of, v_idx],
        "control": ctrl[exp_of],
    }
    for name, arr in {**others, **floats}.items():
        data[name] = np.broadcast_to(arr, present.shape)[r_idx, v_idx]
    data["look"] = look[exp_of]
    data["planned_looks"] = planned[exp_of]
    return pd.DataFrame(data)


def required_cross_terms(
    experiments: Sequence[ExperimentDesign | Mapping[str, Any]],
    config: EvaluationConfig | None = None,
) -> pd.DataFrame:
    """The (term_x, term_y) cross-product sums the dbt model must produce for these metrics.

    Usage:
        >>> exp = {"experiment_id": "e", "variants": [{"vid": 1, "is_control": True,
        ...        "weight": 1}, {"vid": 2, "weight": 1}], "metrics": [{"id": 1, "name": "CTR",
        ...        "nominator": "count(user.unit.click)", "denominator": "count(user.unit.view)"}]}
        >>> required_cross_terms([exp]).to_dict("records")
        [{'exp_id': 'e', 'term_x': 'count(user.unit.click)', 'term_y': 'count(user.unit.view)'}]
    """
    config = config or EvaluationConfig()
    exps = [
        e if isinstance(e, ExperimentDesign) else experiment_from_record(e) for e in experiments
    ]
    rows = _metric_rows(exps, config)
    used = (rows.coef["N"] != 0) | (rows.coef["D"] != 0) | (rows.coef["X"] != 0)
    out = set()
    for r in range(len(rows.metrics)):  # design-sized
        slots = [
            rows.terms[t] for t, u in zip(rows.slot_term[r], used[r], strict=True) if u and t >= 0
        ]
        for i, a in enumerate(slots):
            for b in slots[i + 1 :]:
                if a.goal_key == b.goal_key and "unique" in (a.func, b.func) and a.func != b.func:
                    continue  # derived from the goal's own sums
                x, y = sorted((str(a), str(b)))
                out.add((exps[rows.exp_index[r]].experiment_id, x, y))
    return pd.DataFrame(sorted(out), columns=["exp_id", "term_x", "term_y"])


GUARDRAIL_BREACH = "guardrail_breach"


def verdicts(metrics: pd.DataFrame) -> pd.DataFrame:
    """One verdict per experiment × treatment variant from the metric decisions.

    In order: ``invalid_srm`` if the SRM check failed; ``guardrail_breach`` if a guardrail metric
    is a significant loss; ``loss`` if a primary metric is; ``win`` if a primary metric is a
    significant win; else ``inconclusive``. Secondary metrics never decide.

    Usage:
        >>> m = pd.DataFrame({"exp_id": "e", "variant": ["b", "b", "c", "c"],
        ...     "is_control": False, "role": ["primary", "guardrail"] * 2,
        ...     "decision": ["win", "inconclusive", "win", "loss"]})
        >>> verdicts(m)["verdict"].tolist()
        ['win', 'guardrail_breach']
    """
    t = metrics[~metrics["is_control"]]
    flags = pd.DataFrame(
        {
            "exp_id": t["exp_id"],
            "variant": t["variant"],
            "srm": t["decision"].eq(INVALID_SRM),
            "guard": t["role"].eq("guardrail") & t["decision"].eq(LOSS),
            "loss": t["role"].eq("primary") & t["decision"].eq(LOSS),
            "win": t["role"].eq("primary") & t["decision"].eq(WIN),
        }
    )
    g = flags.groupby(["exp_id", "variant"], sort=True).any()
    verdict = np.select(
        [g["srm"], g["guard"], g["loss"], g["win"]],
        [INVALID_SRM, GUARDRAIL_BREACH, LOSS, WIN],
        default=INCONCLUSIVE,
    )
    return pd.DataFrame({"exp_id": g.index.get_level_values(0),
                         "variant": g.index.get_level_values(1), "verdict": verdict})  # fmt: skip
