"""Multiple-testing corrections (Holm, Benjamini–Hochberg, Bonferroni), vectorised over many
families at once.

Each row of ``p`` is one family; NaN marks "no hypothesis here" (the control's own slot, a padded
variant), so the family size is the number of finite p-values in the row, wherever the control
sits. ep-stats instead assumes the control is the first variant of every metric block.

Usage:
    >>> import numpy as np
    >>> holm(np.array([[0.01, np.nan, 0.04, 0.03]]))
    array([[0.03, nan, 0.06, 0.06]])
    >>> benjamini_hochberg(np.array([[0.01, 0.04, np.nan, 0.03]]))
    array([[0.03, 0.04,  nan, 0.04]])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from strata.stats.models import EvaluationConfig


def _sorted(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"p-values must be 2-D (families × hypotheses), got shape {p.shape}")
    finite = np.isfinite(p)
    m = finite.sum(axis=1, keepdims=True)
    order = np.argsort(np.where(finite, p, np.inf), axis=1, kind="stable")
    ps = np.take_along_axis(np.where(finite, p, np.inf), order, axis=1)
    rank = np.arange(1, p.shape[1] + 1)[None, :]
    return ps, order, m, rank


def _unsort(adj_sorted: np.ndarray, order: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = np.empty_like(adj_sorted)
    np.put_along_axis(out, order, adj_sorted, axis=1)
    return np.where(np.isfinite(p), out, np.nan)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate), one family per row."""
    ps, order, m, rank = _sorted(p)
    with np.errstate(invalid="ignore"):
        scaled = np.minimum(1.0, (m - rank + 1) * ps)
    scaled = np.where(np.isfinite(ps), scaled, 1.0)
    adj = np.maximum.accumulate(scaled, axis=1)
    return _unsort(adj, order, np.asarray(p, dtype=float))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg step-up adjusted p-values (false discovery rate), one family per row."""
    ps, order, m, rank = _sorted(p)
    with np.errstate(invalid="ignore"):
        scaled = np.minimum(1.0, m * ps / rank)
    scaled = np.where(np.isfinite(ps), scaled, np.inf)
    adj = np.minimum.accumulate(scaled[:, ::-1], axis=1)[:, ::-1]
    return _unsort(adj, order, np.asarray(p, dtype=float))


def bonferroni(p: np.ndarray) -> np.ndarray:
    """Bonferroni adjusted p-values ``min(1, m p)`` (family-wise error rate), one family per row.

    Usage:
        >>> bonferroni(np.array([[0.01, np.nan, 0.04, 0.5]]))
        array([[0.03, nan, 0.12, 1.  ]])
    """
    p = np.asarray(p, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"p-values must be 2-D (families × hypotheses), got shape {p.shape}")
    m = np.isfinite(p).sum(axis=1, keepdims=True)
    return np.where(np.isfinite(p), np.minimum(1.0, m * p), np.nan)


CORRECTIONS = {
    "holm": holm,
    "bh": benjamini_hochberg,
    "bonferroni": bonferroni,
    "none": lambda p: np.asarray(p, float),
}


# --- the engine's families: per metric (across variants) or per experiment -------------------


def family_sizes(testable: np.ndarray, exp_index: np.ndarray, n_exp: int, config) -> np.ndarray:
    per_row = testable.sum(axis=1, keepdims=True)
    if config.correction_scope == "variants":
        return np.broadcast_to(per_row, testable.shape)
    per_exp = np.zeros(n_exp, dtype=np.int64)
    np.add.at(per_exp, exp_index, per_row[:, 0])
    return np.broadcast_to(per_exp[exp_index][:, None], testable.shape)


def family_matrix(values: np.ndarray, exp_index: np.ndarray, n_exp: int, fill: float):
    """Reshape (R, V) into (families, members) for the per-experiment scope."""
    order = np.argsort(exp_index, kind="stable")
    counts = np.bincount(exp_index, minlength=n_exp)
    width = int(counts.max()) * values.shape[1]
    mat = np.full((n_exp, width), fill)
    pos_in_exp = np.arange(len(exp_index)) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = pos_in_exp[:, None] * values.shape[1] + np.arange(values.shape[1])[None, :]
    mat[exp_index[order][:, None], cols] = values[order]
    return mat, order, cols


def adjust(
    p: np.ndarray, exp_index: np.ndarray, n_exp: int, config: EvaluationConfig
) -> np.ndarray:
    fn = CORRECTIONS[config.correction]
    if config.correction_scope == "variants":
        return fn(p)
    mat, order, cols = family_matrix(p, exp_index, n_exp, np.nan)
    adj = fn(mat)
    out = np.empty_like(p)
    out[order] = np.take_along_axis(adj[exp_index[order]], cols, axis=1)
    return out
