"""Power, required sample size and minimum detectable effect for the test Strata actually runs.

The evaluation tests ``H0: mu_t = mu_c`` two-sided with a Welch statistic at level ``alpha``
divided by the number of treatment comparisons (Bonferroni: Holm's first step, so the planned
power is a lower bound for Holm), against the final critical value ``crit`` of the design
(``z_{1-alpha'/2}`` for a fixed horizon, or the last group-sequential boundary). With
``se = sqrt(var_c / n_c + var_t / n_t)`` and effect ``delta`` the power is
``Φ(|delta|/se - crit) + Φ(-|delta|/se - crit)``; sample size and MDE invert the dominant term.

All functions broadcast over numpy arrays (experiments × metrics × variants at once).

Usage:
    >>> n = required_sample_size(mean=0.1, std=0.3, minimum_effect=0.05, alpha=0.05, power=0.8)
    >>> int(n)
    56512
    >>> round(float(power(mean=0.1, std=0.3, minimum_effect=0.05, n_per_variant=n)), 3)
    0.8
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from strata.stats.models import DEFAULT_ALPHA, DEFAULT_POWER


def critical_value(alpha: float = DEFAULT_ALPHA, comparisons: int = 1) -> float:
    """Two-sided normal critical value at Bonferroni level ``alpha / comparisons``."""
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons}")
    return float(stats.norm.isf(alpha / comparisons / 2.0))


def power(
    mean,
    std,
    minimum_effect,
    n_per_variant,
    alpha: float = DEFAULT_ALPHA,
    comparisons: int = 1,
    crit: float | np.ndarray | None = None,
    std_treatment=None,
):
    """Probability of a significant result for a relative effect ``minimum_effect`` on ``mean``."""
    c = critical_value(alpha, comparisons) if crit is None else crit
    std_t = std if std_treatment is None else std_treatment
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt((np.square(std) + np.square(std_t)) / np.asarray(n_per_variant, float))
        shift = np.abs(np.asarray(mean, float) * minimum_effect) / se
    return stats.norm.sf(c - shift) + stats.norm.cdf(-shift - c)


def required_sample_size(
    mean,
    std,
    minimum_effect,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    comparisons: int = 1,
    crit: float | np.ndarray | None = None,
    std_treatment=None,
):
    """Units per variant (rounded up) so that :func:`power` reaches ``power``."""
    c = critical_value(alpha, comparisons) if crit is None else crit
    std_t = std if std_treatment is None else std_treatment
    delta = np.asarray(mean, float) * minimum_effect
    with np.errstate(divide="ignore", invalid="ignore"):
        n = (c + stats.norm.ppf(power)) ** 2 * (np.square(std) + np.square(std_t)) / delta**2
    return np.ceil(n)


def minimum_detectable_effect(
    mean,
    std,
    n_per_variant,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    comparisons: int = 1,
    crit: float | np.ndarray | None = None,
    std_treatment=None,
):
    """Smallest relative effect detected with probability ``power`` at the given sample size."""
    c = critical_value(alpha, comparisons) if crit is None else crit
    std_t = std if std_treatment is None else std_treatment
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt((np.square(std) + np.square(std_t)) / np.asarray(n_per_variant, float))
        return (c + stats.norm.ppf(power)) * se / np.abs(np.asarray(mean, float))
