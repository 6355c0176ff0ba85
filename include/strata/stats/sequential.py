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

from functools import lru_cache

import numpy as np
from scipy import optimize, signal, stats

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
