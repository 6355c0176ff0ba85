"""The aggregates' contract and reading them: the ep-stats columns the engine reads, matching rows
to designs, and the dense per-term sums (and cross-product sums) of every metric row's terms.

Usage:
    >>> import pandas as pd
    >>> from strata.stats.models import experiment_from_record
    >>> exp = experiment_from_record({"experiment_id": "e", "variants": [
    ...     {"vid": 1, "is_control": True, "weight": 1}, {"vid": 2, "weight": 1}], "metrics": []})
    >>> e_idx, v_idx = variant_codes(pd.Series(["e", "e"]), pd.Series([2, 1]), [exp], "goals")
    >>> e_idx.tolist(), v_idx.tolist()
    ([0, 0], [1, 0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from strata.metrics import CAPPED_COLUMNS, CAPPED_FUNCTION, goal_key, parse_linear
from strata.stats.errors import AggregateError, ExpressionError

if TYPE_CHECKING:
    from strata.stats.engine import MetricRows
    from strata.stats.models import ExperimentDesign

#: Columns every aggregate row must carry (the ep-stats layout).
KEY_COLUMNS = ("exp_id", "exp_variant_id", "unit_type", "agg_type", "goal")
VALUE_COLUMNS = ("count", "sum_sqr_count", "sum_value", "sum_sqr_value", "count_unique")
#: Capping (optional columns, null on goals no metric caps): the cap used and the sum and sum of
#: squares over units of min(value, cap), for metrics with a ``cap`` (docs/statistics.md).
CAP_COLUMNS = ("value_cap", *CAPPED_COLUMNS)
#: Date column of the cumulative aggregate tables; must be selected and dropped before evaluate.
DATE_COLUMN = "as_of_date"
#: Columns of the cross-product input: per-unit sum of term_x × term_y, terms in canonical text.
CROSS_COLUMNS = ("exp_id", "exp_variant_id", "term_x", "term_y", "sum_product")


def dimension_columns(frame: pd.DataFrame) -> list[str]:
    """The dimension columns of an aggregates frame: every column but the ep-stats key and value
    columns and the capping columns."""
    return sorted(set(frame.columns) - set(KEY_COLUMNS) - set(VALUE_COLUMNS) - set(CAP_COLUMNS))


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AggregateError(f"{what} is missing columns {missing} (has {list(frame.columns)})")


def variant_codes(
    exp_ids: pd.Series, vids: pd.Series, experiments: list[ExperimentDesign], what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Experiment and variant indexes of rows; rows of unknown variants are an error."""
    exp_pos = {e.experiment_id: i for i, e in enumerate(experiments)}
    e_idx = exp_ids.astype(str).map(exp_pos).to_numpy()
    pairs = {
        (e.experiment_id, str(v.vid)): j for e in experiments for j, v in enumerate(e.variants)
    }
    keys = pd.Series(list(zip(exp_ids.astype(str), vids.astype(str), strict=True)), dtype=object)
    v_idx = keys.map(pairs).to_numpy()
    unknown = pd.isna(v_idx)
    if unknown.any():
        bad = sorted({k for k, u in zip(keys, unknown, strict=True) if u})[:5]
        raise AggregateError(f"{what}: rows for variants not in the experiment design: {bad}")
    return e_idx.astype(np.int64), v_idx.astype(np.int64)


#: Columns that count units or events: non-negative integers.
COUNT_COLUMNS = ("count", "sum_sqr_count", "count_unique")


def check_counts(
    goals: pd.DataFrame, experiments: list[ExperimentDesign], exposure_goal: str
) -> None:
    """Counts must be what the aggregation makes them: non-negative integers; for ``unit`` rows
    ``count_unique <= count <= sum_sqr_count`` (each unit with an event counts at least once, and
    ``c² >= c`` for integer ``c``), ``sum_sqr_value >= 0``, and no more units with a goal than
    exposed units of the variant (when its exposure row is present). Otherwise an
    :class:`AggregateError` names experiment, variant, goal and the broken rule.

    Usage:
        >>> from strata.stats.models import experiment_from_record
        >>> exp = experiment_from_record({"experiment_id": "e", "variants": [
        ...     {"vid": 1, "is_control": True, "weight": 1}, {"vid": 2, "weight": 1}],
        ...     "metrics": []})
        >>> goals = pd.DataFrame({"exp_id": "e", "exp_variant_id": [1, 2], "unit_type": "user",
        ...     "agg_type": "global", "goal": "exposure", "count": [10, -3],
        ...     "sum_sqr_count": [10, -3], "sum_value": 0.0, "sum_sqr_value": 0.0,
        ...     "count_unique": [10, -3]})
        >>> check_counts(goals, [exp], "exposure")
        Traceback (most recent call last):
        ...
        strata.stats.errors.AggregateError: goal aggregates: experiment 'e', variant '2', goal
        'user.global.exposure': 'count' = -3 is not a non-negative integer
    """
    require_columns(goals, KEY_COLUMNS + VALUE_COLUMNS, "goal aggregates")
    wanted = {e.experiment_id for e in experiments}
    g = goals[goals["exp_id"].astype(str).isin(wanted)]
    if not len(g):
        return
    val = {c: pd.to_numeric(g[c], errors="coerce").to_numpy(dtype=float) for c in VALUE_COLUMNS}
    tol = 1e-9
    checks: list[tuple[np.ndarray, str]] = []
    for c in COUNT_COLUMNS:
        v = val[c]
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(v) | (v < 0) | (np.abs(v - np.round(v)) > tol * np.maximum(1, v))
        checks.append((bad, f"{c!r} = {{{c}}} is not a non-negative integer"))
    unit = (g["agg_type"].astype(str) == "unit").to_numpy()  # global rows: counts only
    with np.errstate(invalid="ignore"):
        checks.append(
            (unit & (val["count_unique"] > val["count"] * (1 + tol)),
             "count_unique = {count_unique} exceeds count = {count}")
        )  # fmt: skip
        checks.append(
            (unit & (val["count"] > val["sum_sqr_count"] * (1 + tol)),
             "count = {count} exceeds sum_sqr_count = {sum_sqr_count} (c² >= c for counts)")
        )  # fmt: skip
        checks.append((val["sum_sqr_value"] < 0, "sum_sqr_value = {sum_sqr_value} is negative"))
    is_exp = (g["agg_type"].astype(str) == "global").to_numpy() & (
        g["goal"].astype(str) == exposure_goal
    ).to_numpy()
    dims = dimension_columns(g)
    if dims:
        is_exp &= (g[dims].fillna("").astype(str) == "").all(axis=1).to_numpy()
    key = (
        g["exp_id"].astype(str) + "|" + g["exp_variant_id"].astype(str) + "|"
        + g["unit_type"].astype(str)
    ).to_numpy(dtype=object)  # fmt: skip
    exposures = pd.Series(val["count"][is_exp], index=key[is_exp])
    exposures = exposures[~exposures.index.duplicated()]
    units = pd.Series(key).map(exposures).to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        checks.append(
            (unit & (val["count_unique"] > units),
             "count_unique = {count_unique} exceeds the variant's {units} exposed units")
        )  # fmt: skip
    for bad, rule in checks:
        if bad.any():
            i = int(np.argmax(bad))
            row = g.iloc[i]
            goal = f"{row['unit_type']}.{row['agg_type']}.{row['goal']}"
            dim_text = ",".join(
                f"{d}={row[d]}" for d in dims if str(row[d] or "") not in ("", "nan")
            )
            goal += f"({dim_text})" if dim_text else ""
            fields = {c: _num(val[c][i]) for c in VALUE_COLUMNS} | {"units": _num(units[i])}
            raise AggregateError(
                f"goal aggregates: experiment {str(row['exp_id'])!r}, variant "
                f"{str(row['exp_variant_id'])!r}, goal {goal!r}: {rule.format(**fields)}"
            )


def _num(x: float) -> str:
    return str(int(x)) if np.isfinite(x) and float(x).is_integer() else str(x)


# --- aggregates -> dense term sums ----------------------------------------------------------------


def goal_sums(
    goals: pd.DataFrame, experiments: list[ExperimentDesign], rows: MetricRows, n_var: int
) -> dict[str, np.ndarray]:
    """Dense (E, V, T) arrays of each term's per-unit sum ``s1`` and sum of squares ``s2``."""
    require_columns(goals, KEY_COLUMNS + VALUE_COLUMNS, "goal aggregates")
    if DATE_COLUMN in goals.columns:
        raise AggregateError(
            f"goal aggregates still have {DATE_COLUMN!r}: select one analysis date and drop the "
            "column (any extra column is a dimension; results.read_inputs does this)"
        )
    wanted = {e.experiment_id for e in experiments}
    g = goals[goals["exp_id"].astype(str).isin(wanted)]
    dims = dimension_columns(g)
    capped_terms = [t for t in rows.terms if t.func == CAPPED_FUNCTION]
    if capped_terms:
        require_columns(g, CAPPED_COLUMNS, "goal aggregates (a metric has a cap)")
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
    keys = dict.fromkeys(
        goal_key(t.unit_type, t.agg_type, t.goal, t.dimensions) for t in rows.terms
    )
    key_pos = {k: i for i, k in enumerate(keys)}
    k_idx = pd.Series(key).map(key_pos).to_numpy()
    used = ~pd.isna(k_idx)
    g = g[used]
    k_idx = k_idx[used].astype(np.int64)
    e_idx, v_idx = variant_codes(g["exp_id"], g["exp_variant_id"], experiments, "goal aggregates")
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
    for col in VALUE_COLUMNS + (CAPPED_COLUMNS if capped_terms else ()):
        arr = np.zeros(n_exp * n_var * n_keys)
        col_values = pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=float)
        if col in VALUE_COLUMNS and not np.isfinite(col_values).all():
            raise AggregateError(f"goal aggregates: non-numeric or missing values in {col!r}")
        arr[flat] = col_values  # capped columns: NaN (null) on goals without a cap, checked below
        values[col] = arr.reshape(n_exp, n_var, n_keys)
    term_key = np.array(
        [key_pos[goal_key(t.unit_type, t.agg_type, t.goal, t.dimensions)] for t in rows.terms]
    )
    s1 = np.stack(
        [values[t.columns[0]][:, :, k] for t, k in zip(rows.terms, term_key, strict=True)],
        axis=-1,
    )
    s2 = np.stack(
        [values[t.columns[1]][:, :, k] for t, k in zip(rows.terms, term_key, strict=True)],
        axis=-1,
    )
    _check_capped(s1, s2, rows, experiments)
    return {"s1": s1, "s2": s2, "term_key": term_key}


def _check_capped(
    s1: np.ndarray, s2: np.ndarray, rows: MetricRows, experiments: list[ExperimentDesign]
) -> None:
    """A capped metric needs its goal's capped sums: null there means dbt capped nothing."""
    for r, m in enumerate(rows.metrics):  # design-sized loop (metrics), not data rows
        if m.cap is None:
            continue
        e = int(rows.exp_index[r])
        for t in rows.slot_term[r]:
            if t < 0 or rows.terms[t].func != CAPPED_FUNCTION:
                continue
            bad = ~(np.isfinite(s1[e, :, t]) & np.isfinite(s2[e, :, t]))
            if bad.any():
                exp = experiments[e]
                raise AggregateError(
                    f"goal aggregates: experiment {exp.experiment_id!r}, metric {m.id!r} has cap "
                    f"{m.cap.as_json()} but the rows of goal "
                    f"{rows.terms[t].goal_key!r} carry no capped sums (sum_value_capped is null): "
                    "rebuild goal_aggregates after the experiments table has the cap"
                )


def cross_lookup(
    cross: pd.DataFrame | None, experiments: list[ExperimentDesign], rows: MetricRows, n_var: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 keys ((e*V+v)*T+a)*T+b (a < b) and their per-unit product sums."""
    n_terms = len(rows.terms)
    if cross is None or len(cross) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    require_columns(cross, CROSS_COLUMNS, "cross-product aggregates")
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
    e_idx, v_idx = variant_codes(c["exp_id"], c["exp_variant_id"], experiments, "cross-products")
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


def _describe_cross(key: int, experiments, rows: MetricRows, n_var: int) -> str:
    n_terms = len(rows.terms)
    rest, b = divmod(key, n_terms)
    rest, a = divmod(rest, n_terms)
    e, v = divmod(rest, n_var)
    exp = experiments[e]
    return (
        f"experiment {exp.experiment_id!r}, variant {exp.variants[v].vid!r}, "
        f"terms {str(rows.terms[a])!r} × {str(rows.terms[b])!r}"
    )


def quadratic_sums(
    rows: MetricRows, sums: dict[str, np.ndarray], cross: tuple[np.ndarray, np.ndarray], n_var: int
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


def capped_variances(goals: pd.DataFrame, exposure_goal: str = "exposure") -> pd.DataFrame:
    """Per capped goal row (``value_cap`` set) of one analysis date: the per-unit sample variance
    of the value before and after capping, over the variant's exposed units (units without the
    goal count as 0), and ``change`` = var_capped / var - 1.

    Usage (4 units with values 10, 200, 30 and 0, capped at 50):
        >>> g = pd.DataFrame({"exp_id": "e", "exp_variant_id": 1, "unit_type": "user",
        ...     "agg_type": ["global", "unit"], "goal": ["exposure", "buy"], "platform": "",
        ...     "count": [4, 3], "sum_value": [0.0, 240.0], "sum_sqr_value": [0.0, 41000.0],
        ...     "value_cap": [None, 50.0], "sum_value_capped": [None, 90.0],
        ...     "sum_sqr_value_capped": [None, 3500.0]})
        >>> round(float(capped_variances(g)["change"].iloc[0]), 4)
        -0.9445
    """
    require_columns(goals, (*KEY_COLUMNS, "count", "sum_value", "sum_sqr_value", *CAP_COLUMNS),
                    "goal aggregates")  # fmt: skip
    dims = dimension_columns(goals)
    keys = ["exp_id", "exp_variant_id", "unit_type"]
    exposed = goals[(goals["agg_type"] == "global") & (goals["goal"] == exposure_goal)]
    if dims:
        exposed = exposed[(exposed[dims].fillna("").astype(str) == "").all(axis=1)]
    units = exposed[[*keys, "count"]].rename(columns={"count": "units"})
    capped = goals[goals["value_cap"].notna()].merge(units, on=keys, how="left")
    n = capped["units"].astype(float)

    def variance(s1: pd.Series, s2: pd.Series) -> pd.Series:
        return (s2.astype(float) - s1.astype(float) ** 2 / n) / (n - 1)

    out = capped[[*keys, "goal", *dims, "value_cap", "units"]].copy()
    out["var"] = variance(capped["sum_value"], capped["sum_sqr_value"])
    out["var_capped"] = variance(capped["sum_value_capped"], capped["sum_sqr_value_capped"])
    out["change"] = out["var_capped"] / out["var"] - 1
    return out.reset_index(drop=True)
