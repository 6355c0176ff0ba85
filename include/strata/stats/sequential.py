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

from collections.abc import Iterator
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from scipy import interpolate, optimize, signal, stats

from strata.stats.errors import DesignError

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


#: Levels at which the boundary curve of a look is computed exactly (with the family's levels
#: alpha / j added); repeated p-values between them are monotone (PCHIP) interpolations.
CURVE_LEVELS = tuple(float(x) for x in np.geomspace(1e-12, 0.9, 64))


@lru_cache(maxsize=64)
def _curve_nodes(planned: int, levels: tuple[float, ...]) -> np.ndarray:
    """(len(levels), planned) z boundaries of every look at every level (cached: the nightly
    run evaluates the same plans date after date)."""
    fractions = np.arange(1, planned + 1) / planned
    return np.array([obf_boundaries(fractions, a) for a in levels])


class BoundaryCurves:
    """Per (planned looks K, look k): the look's boundary ``c_k(level)`` as a monotone function of
    the level, exact at ``levels`` (the caller's alpha / j) and at a log grid, interpolated by PCHIP
    in ``log(level)`` between them, anchored at ``c = 0, level = 1``.

    ``p_value(z)`` is the repeated p-value: the smallest level whose boundary ``z`` reaches at this
    look; ``boundary(level)`` is its exact inverse (bisection on the same interpolant), so
    ``z >= boundary(a)`` exactly when ``p_value(z) <= a``. With K = 1 this is the fixed-horizon
    normal test.

    Usage:
        >>> bc = BoundaryCurves(levels=(0.05,))
        >>> look, planned = np.array([10]), np.array([10])
        >>> c = bc.boundary(np.array([[0.05]]), look, planned)
        >>> bool(abs(c[0, 0] - daily_boundary(10, 10, 0.05)) < 1e-9)
        True
        >>> round(float(bc.p_value(c, look, planned)[0, 0]), 9)
        0.05
    """

    def __init__(self, levels: tuple[float, ...]) -> None:
        self.levels = tuple(sorted(set(CURVE_LEVELS) | {float(a) for a in levels}))
        self._curves: dict[tuple[int, int], tuple[interpolate.PchipInterpolator, float]] = {}

    def _curve(self, planned: int, look: int) -> tuple[interpolate.PchipInterpolator, float]:
        key = (planned, look)
        if key not in self._curves:
            nodes = _curve_nodes(planned, self.levels)
            for k in range(1, planned + 1):
                c = nodes[:, k - 1]
                log_a = np.log(np.asarray(self.levels))
                finite = c < INFINITE_BOUNDARY
                if not finite.all():  # keep the largest level with no spending as an end point
                    last_inf = np.nonzero(~finite)[0].max()
                    finite[last_inf] = True
                # increasing in z (guard against round-off in the root finding)
                x = np.maximum.accumulate(np.concatenate([[0.0], c[finite][::-1]]))
                y = np.concatenate([[0.0], log_a[finite][::-1]])
                keep = np.concatenate([[True], np.diff(x) > 1e-12])
                self._curves[(planned, k)] = (
                    interpolate.PchipInterpolator(x[keep], y[keep], extrapolate=False),
                    float(x[keep][-1]),
                )
        return self._curves[key]

    def _groups(
        self, look: np.ndarray, planned: np.ndarray
    ) -> Iterator[tuple[np.ndarray, tuple[interpolate.PchipInterpolator, float]]]:
        for k_plan, k_look in sorted(
            {(int(p), int(k)) for p, k in zip(planned, look, strict=True)}
        ):
            if k_plan:
                yield (planned == k_plan) & (look == k_look), self._curve(k_plan, k_look)

    def p_value(self, z: np.ndarray, look: np.ndarray, planned: np.ndarray) -> np.ndarray:
        """Repeated p-values of ``|z|`` (R, V) at each row's look (``look``, ``planned``: (R,))."""
        out = np.full(z.shape, np.nan)
        for rows, (curve, z_max) in self._groups(look, planned):
            zz = np.clip(np.abs(z[rows]), 0.0, z_max)
            p = np.exp(curve(zz))
            out[rows] = np.where(np.isfinite(z[rows]), np.minimum(p, 1.0), np.nan)
        return out

    def boundary(self, level: np.ndarray, look: np.ndarray, planned: np.ndarray) -> np.ndarray:
        """z boundaries (R, V) at ``level`` (R, V): the inverse of :meth:`p_value`."""
        out = np.full(level.shape, np.nan)
        for rows, (curve, z_max) in self._groups(look, planned):
            target = np.log(np.clip(level[rows], 1e-300, 1.0))
            lo, hi = np.zeros(target.shape), np.full(target.shape, z_max)
            for _ in range(60):  # bisection: log level decreases as z grows
                mid = 0.5 * (lo + hi)
                above = curve(mid) > target
                lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
            out[rows] = np.where(np.isfinite(level[rows]), hi, np.nan)
        return out


def final_boundary(planned, exp_index, alpha, fam) -> np.ndarray:
    out = np.full(fam.shape, np.nan)
    for k_plan in {int(p) for p in planned[exp_index] if p}:
        for j in np.unique(fam):
            c = obf_boundaries(np.arange(1, k_plan + 1) / k_plan, alpha / j)[-1]
            out[(planned[exp_index][:, None] == k_plan) & (fam == j)] = c
    return out
