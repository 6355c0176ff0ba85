"""Group-sequential boundaries: Lan–DeMets alpha spending with an O'Brien–Fleming-type function.

For planned looks at information fractions ``t_1 < ... < t_K = 1`` the two-sided boundary
``c_k`` solves ``P(|Z_j| < c_j for j < k, |Z_k| >= c_k) = alpha(t_k) - alpha(t_{k-1})`` under H0,
where ``Z_k = B(t_k) / sqrt(t_k)`` for a Brownian motion ``B`` (the joint law of cumulative Wald
statistics). The crossing probabilities are computed exactly on a grid by recursive numerical
integration (Armitage–McPherson–Rowe; Jennison & Turnbull, ch. 19), so the any-look false-positive
rate is the spent alpha, not more.

ep-stats uses the *cumulative* spent alpha ``alpha(t_k)`` as the nominal level of look ``k``; that
spends alpha more than once and its any-look false-positive rate exceeds alpha (tested).

Usage:
    >>> c = obf_boundaries(np.array([0.5, 1.0]), alpha=0.05)
    >>> z = stats.norm.isf(0.025)  # first look: the spending quantile z / sqrt(t), closed form
    >>> round(float(c[0]), 4) == round(float(z / np.sqrt(0.5)), 4), bool(c[1] > z)
    (True, True)
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from scipy import optimize, signal, stats

from strata.stats.errors import DesignError
from strata.stats.multiple import family_matrix

if TYPE_CHECKING:
    from strata.stats.models import EvaluationConfig, ExperimentDesign

#: Grid half-width in standard deviations of B(t_k) and points per unit of B; the integration
#: error is far below 1e-6 in spent alpha at these settings.
GRID_SDS = 9.0
GRID_POINTS_PER_UNIT = 400
#: Alpha below this at a look is treated as "no spending": the boundary is effectively infinite.
MIN_SPEND = 1e-12
INFINITE_BOUNDARY = 40.0


def obf_spending(t: np.ndarray, alpha: float) -> np.ndarray:
    """O'Brien–Fleming-type spending ``2 - 2 Φ(z_{1-α/2} / sqrt(t))`` (Lan & DeMets 1983)."""
    z = stats.norm.isf(alpha / 2)
    t = np.asarray(t, dtype=float)
    return 2.0 * stats.norm.sf(z / np.sqrt(t))


@lru_cache(maxsize=256)
def _boundaries(fractions: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    t = np.asarray(fractions)
    spend = np.diff(np.concatenate([[0.0], obf_spending(t, alpha)]))
    grid_half = GRID_SDS * np.sqrt(t[-1])
    n_grid = int(2 * grid_half * GRID_POINTS_PER_UNIT) | 1
    b = np.linspace(-grid_half, grid_half, n_grid)
    db = b[1] - b[0]
    density = None  # density of B(t_{k-1}) on the continuation region, on the grid
    out = []
    prev_t = 0.0
    for k, tk in enumerate(t):
        dt = tk - prev_t
        sd = np.sqrt(dt)
        if density is None:
            dens_k = stats.norm.pdf(b, scale=sd)
        else:
            half = min(n_grid - 1, int(np.ceil(GRID_SDS * sd / db)))
            kernel = stats.norm.pdf(np.arange(-half, half + 1) * db, scale=sd)
            dens_k = signal.fftconvolve(density * db, kernel, mode="same")
        z = b / np.sqrt(tk)

        absz = np.abs(z)
        half = 0.5 * db / np.sqrt(tk)  # half a grid cell on the z scale
        mass = dens_k * db

        def beyond(c: float, absz=absz, half=half) -> np.ndarray:
            """Share of each grid cell (width 2·half around |z|) lying beyond c: a continuous,
            piecewise-linear tail instead of a step function of c."""
            return np.clip((absz + half - c) / (2 * half), 0.0, 1.0)

        if spend[k] < MIN_SPEND:
            c_k = INFINITE_BOUNDARY
        else:

            def f(c: float, mass=mass, target=spend[k]) -> float:
                return float(np.sum(mass * beyond(c))) - target

            hi = float(absz.max())
            c_k = (
                optimize.brentq(f, 0.0, hi, xtol=1e-10) if f(0.0) > 0 > f(hi) else INFINITE_BOUNDARY
            )
        out.append(c_k)
        density = dens_k * (1.0 - beyond(c_k))
        prev_t = tk
    return tuple(out)


def obf_boundaries(fractions: np.ndarray, alpha: float) -> np.ndarray:
    """Two-sided z boundaries at the given increasing information fractions (last may be < 1).

    Fractions are rounded to 1e-6 for caching; they must be in (0, 1] and strictly increasing.
    """
    t = np.round(np.asarray(fractions, dtype=float), 6)
    if t.ndim != 1 or t.size == 0 or np.any(t <= 0) or np.any(t > 1) or np.any(np.diff(t) <= 0):
        raise ValueError(f"information fractions must increase within (0, 1]: {fractions!r}")
    return np.asarray(_boundaries(tuple(float(x) for x in t), float(alpha)))


def daily_boundary(look: int, planned_looks: int, alpha: float) -> float:
    """Boundary at daily look ``look`` (1-based) of ``planned_looks`` equally spaced looks.

    Looks past the plan use the final boundary (the design's alpha is spent by then).

    Usage:
        >>> round(daily_boundary(14, 14, 0.05), 3) > 1.96
        True
    """
    if planned_looks < 1 or look < 1:
        raise ValueError(f"look {look} / planned {planned_looks} must both be >= 1")
    k = min(look, planned_looks)
    fractions = np.arange(1, planned_looks + 1) / planned_looks
    return float(obf_boundaries(fractions, alpha)[k - 1])


# --- the engine's sequential steps: looks, boundary tables, step-down Holm ---------------------


def looks(
    experiments: list[ExperimentDesign], analysis_date: date | None, config: EvaluationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per experiment (look, planned looks); 0 planned = fixed-horizon analysis."""
    look = np.zeros(len(experiments), dtype=np.int64)
    planned = np.zeros(len(experiments), dtype=np.int64)
    if not config.sequential or analysis_date is None:
        return look, planned
    for i, exp in enumerate(experiments):  # per experiment (design), not per data row
        if exp.planned_days is None or exp.start_date is None:  # no planned duration
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


def boundary_table(
    look: np.ndarray, planned: np.ndarray, alpha: float, max_family: int
) -> np.ndarray:
    """crit[e, j-1] = z boundary at the experiment's look for level alpha / j (j = 1..max)."""
    table = np.full((len(look), max_family), np.nan)
    for k_plan, k_look in {(int(p), int(k)) for p, k in zip(planned, look, strict=True) if p}:
        fractions = np.arange(1, k_plan + 1) / k_plan
        crit = [obf_boundaries(fractions, alpha / j)[k_look - 1] for j in range(1, max_family + 1)]
        table[(planned == k_plan) & (look == k_look)] = crit
    return table


def sequential_holm(
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
        fam, order, cols = family_matrix(z, exp_index, n_exp, -np.inf)
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
    assert cols is not None  # set with `order` by family_matrix
    out = np.zeros_like(testable)
    out[order] = np.take_along_axis(reject[exp_index[order]], cols, axis=1)
    return out & testable


def final_boundary(planned, exp_index, alpha, fam) -> np.ndarray:
    out = np.full(fam.shape, np.nan)
    for k_plan in {int(p) for p in planned[exp_index] if p}:
        for j in np.unique(fam):
            c = obf_boundaries(np.arange(1, k_plan + 1) / k_plan, alpha / j)[-1]
            out[(planned[exp_index][:, None] == k_plan) & (fam == j)] = c
    return out
