"""The Bayesian view of a comparison: probability to beat control, expected loss, credible interval.

A normal approximation, as GrowthBook's default engine: the likelihood of the effect is
``N(δ, s²)`` with ``δ`` and ``s`` the frequentist path's point estimate and delta-method standard
error, computed from the same per-variant moments (after CUPED). The effect is the relative lift
``m_t / m_c − 1`` (signed as ``(m_t − m_c) / |m_c|``, like ``rel_diff``) or, with
``EvaluationConfig.bayes_scale = "absolute"``, the difference ``m_t − m_c``.

Prior on the effect: flat (improper, the default: ``bayes_prior_sd = None``), under which the
posterior is ``N(δ, s²)``; or ``N(μ₀, σ₀²)`` (``bayes_prior_mean``, ``bayes_prior_sd``, on the
relative scale), under which it is ``N(μ, τ²)`` with ``1/τ² = 1/σ₀² + 1/s²`` and
``μ = τ² (μ₀/σ₀² + δ/s²)``. With the sign ``d`` of the metric's direction (+1 ``increase``,
−1 ``decrease``) the gain of the treatment is ``G = d·Δ ~ N(g = d·μ, τ²)`` and

* ``prob_beat_control = P(G > 0) = Φ(g/τ)``;
* ``expected_loss_treatment = E[max(0, −G)] = τ φ(g/τ) − g Φ(−g/τ)`` (the risk of shipping
  the treatment, in the effect's units);
* ``expected_loss_control = E[max(0, G)] = τ φ(g/τ) + g Φ(g/τ)`` (the risk of keeping the
  control); the two differ by ``g``;
* the ``1 − α`` credible interval ``μ ± z_{1−α/2} τ`` (equal-tailed; ``α`` is
  ``EvaluationConfig.alpha``), reported in ``bayes_effect``, ``bayes_lower``, ``bayes_upper``.

The view is not affected by sequential looks or multiple-testing corrections and does not change
the frequentist decisions. Everything is vectorised over (metric rows, variants) arrays; rows that
cannot be compared (the control, fewer than two units, zero variance) are NaN.

Usage:
    >>> import numpy as np
    >>> from strata.stats.models import EvaluationConfig
    >>> m = np.array([[1.0, 1.1]]); var = np.array([[1.0, 1.0]]); n = np.array([[400, 400]])
    >>> ctrl = np.array([[True, False]])
    >>> out = bayesian_view(m, var, n, ctrl, ~ctrl, ["increase"], EvaluationConfig())
    >>> round(float(out["prob_beat_control"][0, 1]), 4), bool(np.isnan(out["bayes_effect"][0, 0]))
    (0.9107, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from strata.stats.models import EvaluationConfig

__all__ = ["BAYES_COLUMNS", "bayesian_view", "posterior"]

#: Columns :func:`bayesian_view` adds to the engine's metrics frame.
BAYES_COLUMNS = (
    "bayes_effect",
    "bayes_lower",
    "bayes_upper",
    "prob_beat_control",
    "expected_loss_treatment",
    "expected_loss_control",
)


def posterior(
    effect: np.ndarray,
    se: np.ndarray,
    prior_mean: float = 0.0,
    prior_sd: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation of an effect with likelihood ``N(effect, se²)``.

    ``prior_sd=None`` is the flat (improper) prior: the posterior is the likelihood.

    Usage:
        >>> mu, tau = posterior(np.array([0.1]), np.array([0.1]), 0.0, 0.1)
        >>> round(float(mu[0]), 6), round(float(tau[0]), 6)
        (0.05, 0.070711)
    """
    effect, se = np.asarray(effect, dtype=float), np.asarray(se, dtype=float)
    if prior_sd is None:
        return effect, se
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = 1.0 / prior_sd**2 + 1.0 / se**2
        mean = (prior_mean / prior_sd**2 + effect / se**2) / precision
        return mean, 1.0 / np.sqrt(precision)


def bayesian_view(
    m: np.ndarray,
    var_l: np.ndarray,
    n: np.ndarray,
    is_ctrl: np.ndarray,
    testable: np.ndarray,
    directions: Sequence[str],
    config: EvaluationConfig,
) -> dict[str, np.ndarray]:
    """The Bayesian columns of every metric row × variant, from the per-variant moments.

    ``m``, ``var_l`` (variance of the per-unit linearisation), ``n`` (units), ``is_ctrl`` and
    ``testable`` are (R, V) arrays as in the engine (each row has exactly one control column);
    ``directions`` has one ``increase``/``decrease`` per row. Returns (R, V) arrays named as
    :data:`BAYES_COLUMNS`, NaN where a comparison is not testable.
    """
    m, var_l, n = (np.asarray(a, dtype=float) for a in (m, var_l, n))
    is_ctrl = np.asarray(is_ctrl, dtype=bool)
    ok = np.asarray(testable, dtype=bool) & ~is_ctrl

    def control(a: np.ndarray) -> np.ndarray:
        """The control column of an (R, V) array as (R, 1)."""
        return np.sum(np.where(is_ctrl, np.nan_to_num(a), 0.0), axis=1, keepdims=True)

    m_c = control(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_t = var_l / n
        a_c = control(var_l) / control(n)
        diff = m - m_c
        if config.bayes_scale == "absolute":
            effect, se = diff, np.sqrt(a_t + a_c)
        else:
            effect = diff / np.abs(m_c)
            se = np.sqrt(a_t + (m / m_c) ** 2 * a_c) / np.abs(m_c)
    ok &= np.isfinite(effect) & np.isfinite(se) & (se > 0)
    effect, se = np.where(ok, effect, np.nan), np.where(ok, se, np.nan)
    mu, tau = posterior(effect, se, config.bayes_prior_mean, config.bayes_prior_sd)
    sign = np.array([-1.0 if d == "decrease" else 1.0 for d in directions]).reshape(-1, 1)
    g = sign * mu
    with np.errstate(invalid="ignore"):
        z = g / tau
        density = tau * stats.norm.pdf(z)
        crit = stats.norm.isf(config.alpha / 2)
        return {
            "bayes_effect": mu,
            "bayes_lower": mu - crit * tau,
            "bayes_upper": mu + crit * tau,
            "prob_beat_control": stats.norm.cdf(z),
            "expected_loss_treatment": density - g * stats.norm.cdf(-z),
            "expected_loss_control": density + g * stats.norm.cdf(z),
        }
