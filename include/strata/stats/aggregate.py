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

import numpy as np
import pandas as pd

from strata.metrics import parse_linear

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
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Aggregate per-unit ``{goal: (count, value)}`` arrays (E, V, U) into goals and cross frames.

    ``cross_terms``: pairs of term texts (``count(user.unit.click)``) whose per-unit product sums
    go into the cross frame. Every variant listed gets rows, also when it has no units.
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
                }
            )
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
