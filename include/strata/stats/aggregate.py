"""Reference aggregation: per-unit goal values → the ep-stats layout the engine reads.

This is the Python statement of what the dbt goal-aggregate models must compute (docs/statistics.md)
and what the tests, the benchmark and the demo use to build inputs. Per-unit values are given as
arrays shaped (experiments, variants, units); NaN in a goal's ``count`` marks "no such unit" so
variants can have different sizes. A unit present with no events has count 0 and value 0.

Usage:
    >>> import numpy as np
    >>> clicks = np.array([[[1, 0, 2], [3, 1, np.nan]]])     # 1 experiment, 2 variants
    >>> goals, cross = aggregate_arrays(["e"], [["a", "b"]], "user",
    ...     {"click": (clicks, clicks * 0.5)})
    >>> cols = ["exp_variant_id", "goal", "count", "sum_sqr_count", "count_unique"]
    >>> for row in goals[cols].values.tolist():
    ...     print(row)
    ['a', 'exposure', 3.0, 3.0, 3.0]
    ['a', 'click', 3.0, 5.0, 2.0]
    ['b', 'exposure', 2.0, 2.0, 2.0]
    ['b', 'click', 4.0, 10.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import pandas as pd

from strata.metrics import Cap, parse_linear

#: Per-unit arrays of a term, by function.
_FUNCS = ("count", "value", "unique")


def _term_values(goal: tuple[np.ndarray, np.ndarray], func: str) -> np.ndarray:
    count, value = goal
    if func == "count":
        return np.nan_to_num(count)
    if func == "value":
        return np.nan_to_num(value)
    return (np.nan_to_num(count) > 0).astype(float)


def aggregate_arrays(
    exp_ids: Sequence[str],
    variant_ids: Sequence[Sequence[str]],
    unit_type: str,
    goals: Mapping[str, tuple[np.ndarray, np.ndarray]],
    cross_terms: Sequence[tuple[str, str]] = (),
    exposure_goal: str = "exposure",
    caps: Mapping[str, Cap] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Aggregate per-unit ``{goal: (count, value)}`` arrays (E, V, U) into goals and cross frames.

    ``cross_terms``: pairs of term texts (``count(user.unit.click)``) whose per-unit product sums
    go into the cross frame. Every variant listed gets rows, also when it has no units.
    ``caps``: ``{goal: Cap}``; adds the capping columns (``value_cap``, ``sum_value_capped``,
    ``sum_sqr_value_capped``; NaN on other goals) as goal_aggregates has them: a percentile cap
    is over the values of the experiment's units with the goal (count > 0), variants pooled.
    """
    first = next(iter(goals.values()))[0]
    present = ~np.isnan(first)
    n_exp, n_var, _ = first.shape
    exp_col = np.repeat(np.asarray(exp_ids, dtype=object), n_var)
    var_col = np.asarray([v for vs in variant_ids for v in vs], dtype=object)
    n_units = present.sum(axis=2).ravel().astype(float)
    frames = [
        pd.DataFrame(
            {
                "exp_id": exp_col,
                "exp_variant_id": var_col,
                "unit_type": unit_type,
                "agg_type": "global",
                "goal": exposure_goal,
                "count": n_units,
                "sum_sqr_count": n_units,
                "sum_value": 0.0,
                "sum_sqr_value": 0.0,
                "count_unique": n_units,
            }
        )
    ]
    for name, (count, value) in goals.items():
        c = np.where(present, np.nan_to_num(count), 0.0)
        v = np.where(present, np.nan_to_num(value), 0.0)
        capped = {}
        if caps is not None:
            capped = _capped_columns(c, v, caps.get(name))
        frames.append(
            pd.DataFrame(
                {
                    "exp_id": exp_col,
                    "exp_variant_id": var_col,
                    "unit_type": unit_type,
                    "agg_type": "unit",
                    "goal": name,
                    "count": c.sum(axis=2).ravel(),
                    "sum_sqr_count": (c * c).sum(axis=2).ravel(),
                    "sum_value": v.sum(axis=2).ravel(),
                    "sum_sqr_value": (v * v).sum(axis=2).ravel(),
                    "count_unique": (c > 0).sum(axis=2).ravel().astype(float),
                    **capped,
                }
            )
        )
    if caps is not None:
        frames[0] = frames[0].assign(
            value_cap=np.nan, sum_value_capped=np.nan, sum_sqr_value_capped=np.nan
        )
    order = np.argsort(np.tile(np.arange(n_exp * n_var), len(frames)), kind="stable")
    goals_df = pd.concat(frames, ignore_index=True).iloc[order].reset_index(drop=True)
    cross_frames = []
    for x, y in cross_terms:
        tx, ty = (next(iter(parse_linear(t))) for t in (x, y))
        px = np.where(present, _term_values(goals[tx.goal], tx.func), 0.0)
        py = np.where(present, _term_values(goals[ty.goal], ty.func), 0.0)
        cross_frames.append(
            pd.DataFrame(
                {
                    "exp_id": exp_col,
                    "exp_variant_id": var_col,
                    "term_x": x,
                    "term_y": y,
                    "sum_product": (px * py).sum(axis=2).ravel(),
                }
            )
        )
    cols = ["exp_id", "exp_variant_id", "term_x", "term_y", "sum_product"]
    cross_df = (
        pd.concat(cross_frames, ignore_index=True) if cross_frames else pd.DataFrame(columns=cols)
    )
    return goals_df, cross_df


def _capped_columns(c: np.ndarray, v: np.ndarray, cap: Cap | None) -> dict[str, np.ndarray]:
    """The capping columns of one goal, (E, V) raveled; NaN when the goal has no cap."""
    n_exp, n_var, _ = c.shape
    if cap is None:
        nan = np.full(n_exp * n_var, np.nan)
        return {"value_cap": nan, "sum_value_capped": nan, "sum_sqr_value_capped": nan}
    has_goal = c > 0
    if cap.value is not None:
        limit = np.full(n_exp, cap.value)
    else:
        pooled = np.where(has_goal, v, np.nan).reshape(n_exp, -1)
        limit = _nanquantile(pooled, cast(float, cap.percentile))
    w = np.where(has_goal, np.minimum(v, limit[:, None, None]), 0.0)
    return {
        "value_cap": np.repeat(limit, n_var),
        "sum_value_capped": w.sum(axis=2).ravel(),
        "sum_sqr_value_capped": (w * w).sum(axis=2).ravel(),
    }


def _nanquantile(rows: np.ndarray, p: float) -> np.ndarray:
    """Per row, the p-quantile of the non-NaN values (linear between the order statistics around
    (n - 1) * p, as Spark's percentile and DuckDB's quantile_cont); NaN for an all-NaN row."""
    ordered = np.sort(rows, axis=1)  # NaN last
    n = (~np.isnan(rows)).sum(axis=1)
    pos = (np.maximum(n, 1) - 1) * p
    lo = np.floor(pos).astype(np.int64)
    hi = np.ceil(pos).astype(np.int64)
    take = np.arange(len(rows))
    with np.errstate(invalid="ignore"):  # all-NaN rows
        out = ordered[take, lo] + (pos - lo) * (ordered[take, hi] - ordered[take, lo])
    return np.where(n > 0, out, np.nan)
