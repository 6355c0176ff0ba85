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
* comparisons against the control are Welch tests; corrections are Holm or Benjamini–Hochberg per
  family; sequential looks use Lan–DeMets O'Brien–Fleming boundaries; SRM is a chi-square test
  against the design's weights.

Usage:
    >>> import pandas as pd
    >>> goals = pd.DataFrame({
    ...     "exp_id": "e1", "exp_variant_id": ["a", "a", "b", "b"], "unit_type": "user",
    ...     "agg_type": ["global", "unit"] * 2, "goal": ["exposure", "click"] * 2,
    ...     "count": [4, 2, 4, 6], "sum_sqr_count": [4, 2, 4, 10],
    ...     "sum_value": 0.0, "sum_sqr_value": 0.0, "count_unique": [4, 2, 4, 3]})
    >>> exp = {"experiment_id": "e1",
    ...        "variants": [{"vid": "a", "is_control": True, "weight": 1},
    ...                     {"vid": "b", "weight": 1}],
    ...        "metrics": [{"id": 1, "name": "clicks per user", "role": "primary",
    ...                     "nominator": "count(user.unit.click)",
    ...                     "denominator": "count(user.global.exposure)"}]}
    >>> ev = evaluate(goals, [exp])
    >>> row = ev.metrics.query("variant == 'b'").iloc[0]
    >>> float(row["mean"]), round(float(row["abs_diff"]), 6), row["decision"]
    (1.5, 1.0, 'win')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import stats

from strata.stats.errors import AggregateError, DesignError, ExpressionError
from strata.stats.expressions import FUNCTION_COLUMNS, LinearForm, Term, goal_key, parse_linear
from strata.stats.models import EvaluationConfig, Experiment, experiment_from_record
from strata.stats.multiple import CORRECTIONS
from strata.stats.power import minimum_detectable_effect
from strata.stats.power import power as power_fn
from strata.stats.power import required_sample_size as sample_size_fn
from strata.stats.sequential import obf_boundaries

#: Columns every aggregate row must carry (the ep-stats layout).
KEY_COLUMNS = ("exp_id", "exp_variant_id", "unit_type", "agg_type", "goal")
VALUE_COLUMNS = ("count", "sum_sqr_count", "sum_value", "sum_sqr_value", "count_unique")
#: Date column of the cumulative aggregate tables; must be selected and dropped before evaluate.
DATE_COLUMN = "as_of_date"
#: Columns of the cross-product input: per-unit sum of term_x × term_y, terms in canonical text.
CROSS_COLUMNS = ("exp_id", "exp_variant_id", "term_x", "term_y", "sum_product")
#: Decision labels.
WIN, LOSS, INCONCLUSIVE, INVALID_SRM, NO_DATA = (
    "win",
    "loss",
    "inconclusive",
    "invalid_srm",
    "insufficient_data",
)
MIN_UNITS = 2


@dataclass
class Evaluation:
    """Output of :func:`evaluate`: ``metrics`` (one row per experiment × metric × variant, control
    rows included) and ``srm`` (one row per experiment × unit type)."""

    metrics: pd.DataFrame
    srm: pd.DataFrame
    config: EvaluationConfig
    analysis_date: date | None = None


@dataclass
class _MetricRows:
    """Metric rows (R) with their terms in fixed-width slots (L)."""

    exp_index: np.ndarray  # (R,)
    experiments: list[Experiment]
    metrics: list  # (R,) Metric
    terms: list[Term]  # all distinct terms, index = term id
    slot_term: np.ndarray  # (R, L) term id, -1 = empty
    coef: dict[str, np.ndarray]  # "N", "D", "X", "n" -> (R, L)
    is_ratio: np.ndarray  # (R,) bool
    has_cov: np.ndarray  # (R,) bool


# --- design -> metric rows --------------------------------------------------------------------


def _metric_rows(experiments: list[Experiment], config: EvaluationConfig) -> _MetricRows:
    term_id: dict[Term, int] = {}
    rows: list[tuple[int, Any, dict[str, LinearForm], bool]] = []
    for e, exp in enumerate(experiments):
        for m in exp.metrics:
            where = f"experiment {exp.experiment_id!r}, metric {m.id!r}"
            try:
                num = parse_linear(m.nominator)
                den = parse_linear(m.denominator)
                cov = parse_linear(m.covariate) if (m.covariate and config.cuped) else LinearForm()
            except ExpressionError as exc:
                raise ExpressionError(f"{where}: {exc}") from exc
            den_aggs = {t.agg_type for t in den}
            if len(den_aggs) != 1:
                raise ExpressionError(f"{where}: denominator mixes global and unit terms")
            unit_types = {t.unit_type for t in (*num, *den, *cov)}
            if len(unit_types) != 1:
                raise ExpressionError(f"{where}: terms mix unit types {sorted(unit_types)}")
            if any(t.agg_type != "unit" for t in cov):
                raise ExpressionError(f"{where}: CUPED covariate must use unit terms")
            ratio = den_aggs == {"unit"}
            (unit_type,) = unit_types
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
    return _MetricRows(
        exp_index=np.array([r[0] for r in rows], dtype=np.int64),
        experiments=experiments,
        metrics=[r[1] for r in rows],
        terms=list(term_id),
        slot_term=slot_term,
        coef=coef,
        is_ratio=np.array([r[3] for r in rows], dtype=bool),
        has_cov=np.array([bool(r[2]["X"]) for r in rows], dtype=bool),
    )


# --- aggregates -> dense term sums ----------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AggregateError(f"{what} is missing columns {missing} (has {list(frame.columns)})")


def _variant_codes(
    exp_ids: pd.Series, vids: pd.Series, experiments: list[Experiment], what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Experiment and variant indexes of rows; rows of unknown variants are an error."""
    exp_pos = {e.experiment_id: i for i, e in enumerate(experiments)}
    e_idx = exp_ids.astype(str).map(exp_pos).to_numpy()
    pairs = {(e.experiment_id, v.vid): j for e in experiments for j, v in enumerate(e.variants)}
    keys = pd.Series(list(zip(exp_ids.astype(str), vids.astype(str), strict=True)), dtype=object)
    v_idx = keys.map(pairs).to_numpy()
    unknown = pd.isna(v_idx)
    if unknown.any():
        bad = sorted({k for k, u in zip(keys, unknown, strict=True) if u})[:5]
        raise AggregateError(f"{what}: rows for variants not in the experiment design: {bad}")
    return e_idx.astype(np.int64), v_idx.astype(np.int64)


def _goal_sums(
    goals: pd.DataFrame, experiments: list[Experiment], rows: _MetricRows, n_var: int
) -> dict[str, np.ndarray]:
    """Dense (E, V, T) arrays of each term's per-unit sum ``s1`` and sum of squares ``s2``."""
    _require_columns(goals, KEY_COLUMNS + VALUE_COLUMNS, "goal aggregates")
    if DATE_COLUMN in goals.columns:
        raise AggregateError(
            f"goal aggregates still have {DATE_COLUMN!r}: select one analysis date and drop the "
            "column (any extra column is a dimension; results.read_inputs does this)"
        )
    wanted = {e.experiment_id for e in experiments}
    g = goals[goals["exp_id"].astype(str).isin(wanted)]
    dims = sorted(set(g.columns) - set(KEY_COLUMNS) - set(VALUE_COLUMNS))
    key = (
        g["unit_type"].astype(str) + "." + g["agg_type"].astype(str) + "." + g["goal"].astype(str)
    ).to_numpy(dtype=object)
    dim_text = np.full(len(g), "", dtype=object)
    for d in dims:  # loop over dimension columns, not rows
        val = g[d].fillna("").astype(str).to_numpy(dtype=object)
        part = d + "=" + val
        dim_text = np.where(
            val == "", dim_text, np.where(dim_text == "", part, dim_text + "," + part)
        )
    key = np.where(dim_text == "", key, key + "(" + dim_text + ")")
    key_pos: dict[str, int | None]
    key_pos = {goal_key(t.unit_type, t.agg_type, t.goal, t.dimensions): None for t in rows.terms}
    key_pos = {k: i for i, k in enumerate(key_pos)}
    k_idx = pd.Series(key).map(key_pos).to_numpy()
    used = ~pd.isna(k_idx)
    g = g[used]
    k_idx = k_idx[used].astype(np.int64)
    e_idx, v_idx = _variant_codes(g["exp_id"], g["exp_variant_id"], experiments, "goal aggregates")
    n_exp, n_keys = len(experiments), len(key_pos)
    flat = (e_idx * n_var + v_idx) * n_keys + k_idx
    uniq, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        e, rest = divmod(int(dup), n_var * n_keys)
        v, k = divmod(rest, n_keys)
        raise AggregateError(
            f"goal aggregates: duplicate rows for experiment {experiments[e].experiment_id!r}, "
            f"variant {experiments[e].variants[v].vid!r}, goal {list(key_pos)[k]!r} (pre-aggregate "
            "per unit over the whole window; sums of squares of partial rows do not add up)"
        )
    values = {}
    for col in VALUE_COLUMNS:
        arr = np.zeros(n_exp * n_var * n_keys)
        col_values = pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(col_values).all():
            raise AggregateError(f"goal aggregates: non-numeric or missing values in {col!r}")
        arr[flat] = col_values
        values[col] = arr.reshape(n_exp, n_var, n_keys)
    term_key = np.array(
        [key_pos[goal_key(t.unit_type, t.agg_type, t.goal, t.dimensions)] for t in rows.terms]
    )
    s1 = np.stack(
        [
            values[FUNCTION_COLUMNS[t.func][0]][:, :, k]
            for t, k in zip(rows.terms, term_key, strict=True)
        ],
        axis=-1,
    )
    s2 = np.stack(
        [
            values[FUNCTION_COLUMNS[t.func][1]][:, :, k]
            for t, k in zip(rows.terms, term_key, strict=True)
        ],
        axis=-1,
    )
    return {"s1": s1, "s2": s2, "term_key": term_key}


def _cross_lookup(
    cross: pd.DataFrame | None, experiments: list[Experiment], rows: _MetricRows, n_var: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 keys ((e*V+v)*T+a)*T+b (a < b) and their per-unit product sums."""
    n_terms = len(rows.terms)
    if cross is None or len(cross) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    _require_columns(cross, CROSS_COLUMNS, "cross-product aggregates")
    wanted = {e.experiment_id for e in experiments}
    c = cross[cross["exp_id"].astype(str).isin(wanted)]
    term_pos = {str(t): i for i, t in enumerate(rows.terms)}
    canon = {}
    for text in pd.unique(pd.concat([c["term_x"], c["term_y"]]).astype(str)):
        try:
            form = parse_linear(text)
        except ExpressionError as exc:
            raise AggregateError(f"cross-product aggregates: bad term {text!r}: {exc}") from exc
        if len(form) != 1 or next(iter(form.values())) != 1.0:
            raise AggregateError(f"cross-product aggregates: {text!r} is not a single goal term")
        canon[text] = term_pos.get(str(next(iter(form))), -1)
    a = c["term_x"].astype(str).map(canon).to_numpy(dtype=np.int64)
    b = c["term_y"].astype(str).map(canon).to_numpy(dtype=np.int64)
    used = (a >= 0) & (b >= 0)
    if (used & (a == b)).any():
        raise AggregateError(
            "cross-product aggregates: a term crossed with itself; that is sum_sqr_* of the goal"
        )
    c, a, b = c[used], a[used], b[used]
    e_idx, v_idx = _variant_codes(c["exp_id"], c["exp_variant_id"], experiments, "cross-products")
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keys = ((e_idx * n_var + v_idx) * n_terms + lo) * n_terms + hi
    vals = pd.to_numeric(c["sum_product"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(vals).all():
        raise AggregateError("cross-product aggregates: non-numeric or missing sum_product")
    order = np.argsort(keys, kind="stable")
    keys, vals = keys[order], vals[order]
    if (np.diff(keys) == 0).any():
        k = int(keys[:-1][np.diff(keys) == 0][0])
        raise AggregateError(
            "cross-product aggregates: duplicate row "
            f"({_describe_cross(k, experiments, rows, n_var)})"
        )
    return keys, vals


def _describe_cross(key: int, experiments, rows: _MetricRows, n_var: int) -> str:
    n_terms = len(rows.terms)
    rest, b = divmod(key, n_terms)
    rest, a = divmod(rest, n_terms)
    e, v = divmod(rest, n_var)
    exp = experiments[e]
    return (
        f"experiment {exp.experiment_id!r}, variant {exp.variants[v].vid!r}, "
        f"terms {str(rows.terms[a])!r} × {str(rows.terms[b])!r}"
    )


def _quadratic_sums(
    rows: _MetricRows, sums: dict[str, np.ndarray], cross: tuple[np.ndarray, np.ndarray], n_var: int
) -> np.ndarray:
    """Q[r, v, l, l'] = sum over units of T_l * T_l' for the row's slots."""
    n_rows, width = rows.slot_term.shape
    n_terms = len(rows.terms)
    e = rows.exp_index[:, None]
    v = np.arange(n_var)[None, :]
    q = np.zeros((n_rows, n_var, width, width))
    used = (rows.coef["N"] != 0) | (rows.coef["D"] != 0) | (rows.coef["X"] != 0)
    keys, vals = cross
    term_goal = sums["term_key"]
    funcs = np.array([t.func for t in rows.terms], dtype=object)
    for i in range(width):  # slot pairs: at most a few dozen, each vectorised over R × V
        ti = rows.slot_term[:, i]
        if (ti < 0).all():
            continue
        s2 = sums["s2"][e, v, np.maximum(ti, 0)[:, None]]
        q[:, :, i, i] = np.where(used[:, i : i + 1], s2, 0.0)
        for j in range(i + 1, width):
            tj = rows.slot_term[:, j]
            need = used[:, i] & used[:, j]
            if not need.any():
                continue
            lo, hi = np.minimum(ti, tj), np.maximum(ti, tj)
            key = ((e * n_var + v) * n_terms + lo[:, None]) * n_terms + hi[:, None]
            pos = np.clip(np.searchsorted(keys, key), 0, max(len(keys) - 1, 0))
            found = (keys[pos] == key) if len(keys) else np.zeros(key.shape, bool)
            value = np.where(found, vals[pos] if len(vals) else 0.0, 0.0)
            # derivable without a cross row: unique(g) is the indicator of count(g) > 0, so
            # unique × count = count and unique × value = value; a term that is zero for every
            # unit (sum of squares 0) has zero cross-products
            same_goal = term_goal[np.maximum(ti, 0)] == term_goal[np.maximum(tj, 0)]
            fi, fj = funcs[np.maximum(ti, 0)], funcs[np.maximum(tj, 0)]
            derive_i = same_goal & (fi == "unique") & (fj != "unique")  # product = T_j
            derive_j = same_goal & (fj == "unique") & (fi != "unique")
            s1 = sums["s1"]
            value = np.where(derive_i[:, None], s1[e, v, np.maximum(tj, 0)[:, None]], value)
            value = np.where(derive_j[:, None], s1[e, v, np.maximum(ti, 0)[:, None]], value)
            zero = (sums["s2"][e, v, np.maximum(ti, 0)[:, None]] == 0) | (
                sums["s2"][e, v, np.maximum(tj, 0)[:, None]] == 0
            )
            missing = need[:, None] & ~found & ~zero & ~(derive_i | derive_j)[:, None]
            if missing.any():
                r, vv = np.argwhere(missing)[0]
                exp = rows.experiments[rows.exp_index[r]]
                raise AggregateError(
                    f"cross-product aggregates: no sum_product for experiment "
                    f"{exp.experiment_id!r}, variant {exp.variants[vv].vid!r}, metric "
                    f"{rows.metrics[r].id!r}: terms {str(rows.terms[ti[r]])!r} × "
                    f"{str(rows.terms[tj[r]])!r} (needed for the variance of a multi-term, ratio "
                    "or CUPED metric)"
                )
            q[:, :, i, j] = q[:, :, j, i] = np.where(need[:, None], value, 0.0)
    return q


# --- statistics ---------------------------------------------------------------------------------


def _looks(
    experiments: list[Experiment], analysis_date: date | None, config: EvaluationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per experiment (look, planned looks); 0 planned = fixed-horizon analysis."""
    look = np.zeros(len(experiments), dtype=np.int64)
    planned = np.zeros(len(experiments), dtype=np.int64)
    if not config.sequential or analysis_date is None:
        return look, planned
    for i, exp in enumerate(experiments):  # per experiment (design), not per data row
        if exp.planned_days is None or exp.start_date is None:  # planned_days needs start_date
            continue
        if exp.planned_days < 1:
            raise DesignError(f"experiment {exp.experiment_id!r}: end_date before start_date")
        day = (analysis_date - exp.start_date).days + 1
        if day < 1:
            raise DesignError(
                f"experiment {exp.experiment_id!r}: analysis date {analysis_date} is before its "
                f"start {exp.start_date}"
            )
        look[i], planned[i] = min(day, exp.planned_days), exp.planned_days
    return look, planned


def _boundary_table(
    look: np.ndarray, planned: np.ndarray, alpha: float, max_family: int
) -> np.ndarray:
    """crit[e, j-1] = z boundary at the experiment's look for level alpha / j (j = 1..max)."""
    table = np.full((len(look), max_family), np.nan)
    for k_plan, k_look in {(int(p), int(k)) for p, k in zip(planned, look, strict=True) if p}:
        fractions = np.arange(1, k_plan + 1) / k_plan
        crit = [obf_boundaries(fractions, alpha / j)[k_look - 1] for j in range(1, max_family + 1)]
        table[(planned == k_plan) & (look == k_look)] = crit
    return table


def _srm(
    goals: pd.DataFrame, experiments: list[Experiment], config: EvaluationConfig
) -> pd.DataFrame:
    """Chi-square test of exposures per variant against the design's allocation weights."""
    wanted = {e.experiment_id for e in experiments}
    g = goals[
        goals["exp_id"].astype(str).isin(wanted)
        & (goals["agg_type"] == "global")
        & (goals["goal"] == config.exposure_goal)
    ]
    dims = sorted(set(g.columns) - set(KEY_COLUMNS) - set(VALUE_COLUMNS))
    if dims:  # the undimensioned exposure row counts units
        g = g[(g[dims].fillna("").astype(str) == "").all(axis=1)]
    unit_types = sorted(g["unit_type"].astype(str).unique())
    n_var = max(len(e.variants) for e in experiments)
    e_idx, v_idx = _variant_codes(g["exp_id"], g["exp_variant_id"], experiments, "exposures")
    u_idx = g["unit_type"].astype(str).map({u: i for i, u in enumerate(unit_types)}).to_numpy()
    observed = np.zeros((len(experiments), max(len(unit_types), 1), n_var))
    np.add.at(observed, (e_idx, u_idx.astype(np.int64), v_idx), g["count"].to_numpy(float))
    weights = np.zeros((len(experiments), n_var))
    for i, exp in enumerate(experiments):  # design-sized
        weights[i, : len(exp.variants)] = [v.weight for v in exp.variants]
    share = weights / weights.sum(axis=1, keepdims=True)
    total = observed.sum(axis=2, keepdims=True)
    expected = total * share[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (observed - expected) ** 2 / expected, 0.0)
        terms = np.where((expected == 0) & (observed > 0), np.inf, terms)
    stat = terms.sum(axis=2)
    dof = (share > 0).sum(axis=1)[:, None] - 1
    p = stats.chi2.sf(stat, np.maximum(dof, 1))
    present = total[:, :, 0] > 0
    out = pd.DataFrame(
        {
            "exp_id": np.repeat([e.experiment_id for e in experiments], observed.shape[1]),
            "unit_type": np.tile(unit_types or [""], len(experiments)),
            "exposures": total[:, :, 0].ravel(),
            "observed": [list(x) for x in observed.reshape(-1, n_var)],
            "expected_share": [list(x) for x in np.repeat(share, observed.shape[1], axis=0)],
            "chi2": stat.ravel(),
            "dof": np.broadcast_to(dof, stat.shape).ravel(),
            "p_value": p.ravel(),
        }
    )
    out = out[present.ravel()].reset_index(drop=True)
    out["observed"] = [
        o[: len(experiments[i].variants)]
        for o, i in zip(
            out["observed"],
            out["exp_id"].map({e.experiment_id: j for j, e in enumerate(experiments)}),
            strict=True,
        )
    ]
    out["expected_share"] = [
        s[: len(o)] for s, o in zip(out["expected_share"], out["observed"], strict=True)
    ]
    out["passed"] = out["p_value"] >= config.srm_alpha
    return out


def evaluate(
    goals: pd.DataFrame,
    experiments: Sequence[Experiment | Mapping[str, Any]],
    cross: pd.DataFrame | None = None,
    analysis_date: date | None = None,
    config: EvaluationConfig | None = None,
) -> Evaluation:
    """Evaluate every metric of every experiment from ep-stats-layout aggregates.

    ``goals``: the aggregated-goals table (``KEY_COLUMNS`` + dimension columns + ``VALUE_COLUMNS``),
    one row per experiment × variant × unit type × agg type × goal × dimension values, each
    aggregated over the whole analysis window per unit. ``cross``: per-unit cross-product sums
    (``CROSS_COLUMNS``) for metrics that need them (see :func:`required_cross_terms`).
    ``experiments``: :class:`Experiment` objects or experiments-table records. ``analysis_date``
    with the experiments' start/end dates enables sequential boundaries (one look per day).
    Aggregate rows of experiments not listed are not read; rows of goals no metric uses are not
    read either; rows for variants missing from a listed experiment's design are an error.
    """
    config = config or EvaluationConfig()
    exps = [e if isinstance(e, Experiment) else experiment_from_record(e) for e in experiments]
    if not exps:
        raise DesignError("no experiments to evaluate")
    ids = [e.experiment_id for e in exps]
    if len(set(ids)) != len(ids):
        raise DesignError(
            f"duplicate experiment ids: {sorted({i for i in ids if ids.count(i) > 1})}"
        )
    rows = _metric_rows(exps, config)
    n_var = max(len(e.variants) for e in exps)
    srm = _srm(goals, exps, config)
    if not len(rows.metrics):
        return Evaluation(pd.DataFrame(), srm, config, analysis_date)
    sums = _goal_sums(goals, exps, rows, n_var)
    q = _quadratic_sums(rows, sums, _cross_lookup(cross, exps, rows, n_var), n_var)

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
    m_raw = m.copy()
    cuped = rows.has_cov[:, None] & valid
    if rows.has_cov.any():
        w = np.where(cuped, dof1, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            theta = np.nansum(w * cov_lx, axis=1) / np.nansum(w * vXX, axis=1)
            x_pool = np.nansum(np.where(cuped, sX, 0), axis=1) / np.nansum(
                np.where(cuped, n, 0), axis=1
            )
        theta = np.where(np.isfinite(theta), theta, 0.0)[:, None]
        m = np.where(cuped, m - theta * (mX - x_pool[:, None]), m)
        var_l = np.where(cuped, np.maximum(var_l - 2 * theta * cov_lx + theta**2 * vXX, 0.0), var_l)

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
    testable = valid & ~is_ctrl & np.isfinite(t_stat) & (se > 0) & np.isfinite(m_c)
    p = np.where(testable, 2 * stats.t.sf(np.abs(t_stat), df), np.nan)

    # families for multiple testing: rows of (R, V) or whole experiments
    family_size = _family_sizes(testable, rows.exp_index, len(exps), config)
    p_adj = _adjust(p, rows.exp_index, len(exps), config)

    look, planned = _looks(exps, analysis_date, config)
    seq = planned[rows.exp_index] > 0
    alpha = config.alpha
    if seq.any():
        table = _boundary_table(look, planned, alpha, int(max(family_size.max(), 1)))
        crit_single = table[rows.exp_index, 0][:, None]
        significant_seq = _sequential_holm(np.abs(t_stat), testable, table, rows.exp_index, config)
    else:
        crit_single = np.full((len(rows.metrics), 1), np.nan)
        significant_seq = np.zeros_like(testable)
    t_crit = np.where(seq[:, None], crit_single, stats.t.isf(alpha / 2, df))
    significant = np.where(seq[:, None], significant_seq, testable & (p_adj <= alpha))

    # power / MDE with the critical value of the test actually run (Bonferroni over the family,
    # Holm's first step; BH's first step is the same level)
    fam = np.ones_like(family_size) if config.correction == "none" else np.maximum(family_size, 1)
    crit_power = np.where(
        seq[:, None],
        _final_boundary(planned, rows.exp_index, alpha, fam),
        stats.norm.isf(alpha / fam / 2),
    )
    sd, sd_c = np.sqrt(var_l), np.sqrt(var_c)
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

    srm_failed = srm.groupby("exp_id")["passed"].all().map(lambda ok: not ok).to_dict()
    exp_srm_fail = np.array([srm_failed.get(x.experiment_id, False) for x in exps])[rows.exp_index][
        :, None
    ]
    direction = np.array([1.0 if mt.direction == "increase" else -1.0 for mt in rows.metrics])[
        :, None
    ]
    decision = np.where(
        significant, np.where(diff * direction > 0, WIN, LOSS), INCONCLUSIVE
    ).astype(object)
    decision = np.where(testable, decision, NO_DATA)
    decision = np.where(exp_srm_fail & ~is_ctrl, INVALID_SRM, decision)
    # None fills the object array; numpy's stubs take only array-likes there
    decision = np.where(is_ctrl, None, decision)  # type: ignore[call-overload]

    out = _frame(
        rows,
        exps,
        valid_variant,
        n_var,
        {
            "count": n,
            "sum_value": sN,
            "mean": m,
            "mean_unadjusted": m_raw,
            "std": sd,
            "abs_diff": np.where(is_ctrl, np.nan, diff),
            "abs_se": np.where(is_ctrl, np.nan, se),
            "abs_lower": diff - t_crit * se,
            "abs_upper": diff + t_crit * se,
            "rel_diff": np.where(is_ctrl, np.nan, rel),
            "rel_se": np.where(is_ctrl, np.nan, rel_se),
            "rel_lower": rel - t_crit * rel_se,
            "rel_upper": rel + t_crit * rel_se,
            "t_stat": np.where(is_ctrl, np.nan, t_stat),
            "df": np.where(is_ctrl, np.nan, df),
            "p_value": p,
            "p_value_adjusted": p_adj,
            "critical_value": np.where(testable, t_crit, np.nan),
            "mde": mde,
            "power": pw,
            "required_sample_size": req,
        },
        {"significant": significant & testable, "decision": decision, "is_control": is_ctrl},
        look,
        planned,
    )
    for col in ("abs_lower", "abs_upper", "rel_lower", "rel_upper"):
        out.loc[~out["p_value"].notna(), col] = np.nan
    return Evaluation(out, srm, config, analysis_date)


#: Relative tolerance for round-off when a sum of squares is checked against its sum.
VARIANCE_TOLERANCE = 1e-9


def _check_variances(rows: _MetricRows, valid: np.ndarray, parts: dict) -> None:
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


def _family_sizes(testable: np.ndarray, exp_index: np.ndarray, n_exp: int, config) -> np.ndarray:
    per_row = testable.sum(axis=1, keepdims=True)
    if config.correction_scope == "variants":
        return np.broadcast_to(per_row, testable.shape)
    per_exp = np.zeros(n_exp, dtype=np.int64)
    np.add.at(per_exp, exp_index, per_row[:, 0])
    return np.broadcast_to(per_exp[exp_index][:, None], testable.shape)


def _family_matrix(values: np.ndarray, exp_index: np.ndarray, n_exp: int, fill: float):
    """Reshape (R, V) into (families, members) for the per-experiment scope."""
    order = np.argsort(exp_index, kind="stable")
    counts = np.bincount(exp_index, minlength=n_exp)
    width = int(counts.max()) * values.shape[1]
    mat = np.full((n_exp, width), fill)
    pos_in_exp = np.arange(len(exp_index)) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = pos_in_exp[:, None] * values.shape[1] + np.arange(values.shape[1])[None, :]
    mat[exp_index[order][:, None], cols] = values[order]
    return mat, order, cols


def _adjust(
    p: np.ndarray, exp_index: np.ndarray, n_exp: int, config: EvaluationConfig
) -> np.ndarray:
    fn = CORRECTIONS[config.correction]
    if config.correction_scope == "variants":
        return fn(p)
    mat, order, cols = _family_matrix(p, exp_index, n_exp, np.nan)
    adj = fn(mat)
    out = np.empty_like(p)
    out[order] = np.take_along_axis(adj[exp_index[order]], cols, axis=1)
    return out


def _sequential_holm(
    abs_t: np.ndarray, testable: np.ndarray, table: np.ndarray, exp_index: np.ndarray, config
) -> np.ndarray:
    """Step-down Holm with group-sequential boundaries at levels alpha/m, alpha/(m-1), ... .

    With one hypothesis this is the plain Lan–DeMets test; with several it is the
    sequentially rejective graphical procedure of Maurer & Bretz (2013), which controls the
    family-wise error over all looks and comparisons. ``correction='none'`` uses alpha for all;
    ``bh`` has no group-sequential analogue and is refused with sequential analysis.
    """
    if config.correction == "bh":
        raise DesignError("Benjamini–Hochberg has no group-sequential version; use holm or none")
    z = np.where(testable, abs_t, -np.inf)
    n_exp = table.shape[0]
    if config.correction_scope == "variants":
        fam, order, cols, fam_exp = z, None, None, exp_index
    else:
        fam, order, cols = _family_matrix(z, exp_index, n_exp, -np.inf)
        fam_exp = np.arange(n_exp)
    m = np.isfinite(fam).sum(axis=1)
    srt = np.argsort(-fam, axis=1, kind="stable")
    zs = np.take_along_axis(fam, srt, axis=1)
    step = np.arange(fam.shape[1])[None, :]
    level = m[:, None] - step  # alpha / (m - i) at step i
    if config.correction == "none":
        level = np.ones_like(level)
    crit = np.take_along_axis(table[fam_exp], np.clip(level - 1, 0, table.shape[1] - 1), axis=1)
    reject_sorted = np.cumprod(np.isfinite(zs) & (zs >= crit), axis=1).astype(bool)
    reject = np.empty_like(reject_sorted)
    np.put_along_axis(reject, srt, reject_sorted, axis=1)
    if order is None:
        return reject & testable
    out = np.zeros_like(testable)
    out[order] = np.take_along_axis(reject[exp_index[order]], cast(np.ndarray, cols), axis=1)
    return out & testable


def _final_boundary(planned, exp_index, alpha, fam) -> np.ndarray:
    out = np.full(fam.shape, np.nan)
    for k_plan in {int(p) for p in planned[exp_index] if p}:
        for j in np.unique(fam):
            c = obf_boundaries(np.arange(1, k_plan + 1) / k_plan, alpha / j)[-1]
            out[(planned[exp_index][:, None] == k_plan) & (fam == j)] = c
    return out


def _frame(rows, exps, valid_variant, n_var, floats, others, look, planned) -> pd.DataFrame:
    present = valid_variant[rows.exp_index]
    r_idx, v_idx = np.nonzero(present)
    exp_of = rows.exp_index[r_idx]
    vid = np.array(
        [[x.vid for x in e.variants] + [""] * (n_var - len(e.variants)) for e in exps], dtype=object
    )
    vname = np.array(
        [[x.name for x in e.variants] + [""] * (n_var - len(e.variants)) for e in exps],
        dtype=object,
    )
    ctrl = np.array([e.control.vid for e in exps], dtype=object)
    data = {
        "exp_id": np.array([e.experiment_id for e in exps], dtype=object)[exp_of],
        "metric_id": np.array([mt.id for mt in rows.metrics], dtype=object)[r_idx],
        "metric_name": np.array([mt.name for mt in rows.metrics], dtype=object)[r_idx],
        "role": np.array([mt.role for mt in rows.metrics], dtype=object)[r_idx],
        "direction": np.array([mt.direction for mt in rows.metrics], dtype=object)[r_idx],
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
    experiments: Sequence[Experiment | Mapping[str, Any]], config: EvaluationConfig | None = None
) -> pd.DataFrame:
    """The (term_x, term_y) cross-product sums the dbt model must produce for these metrics.

    Usage:
        >>> exp = {"experiment_id": "e", "variants": [{"vid": "a", "is_control": True,
        ...        "weight": 1}, {"vid": "b", "weight": 1}], "metrics": [{"id": 1, "name": "CTR",
        ...        "nominator": "count(user.unit.click)", "denominator": "count(user.unit.view)"}]}
        >>> required_cross_terms([exp]).to_dict("records")
        [{'exp_id': 'e', 'term_x': 'count(user.unit.click)', 'term_y': 'count(user.unit.view)'}]
    """
    config = config or EvaluationConfig()
    exps = [e if isinstance(e, Experiment) else experiment_from_record(e) for e in experiments]
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
