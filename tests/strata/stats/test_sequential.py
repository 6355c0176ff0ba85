"""Group-sequential boundaries: exact checks against closed forms and the bivariate normal, and a
Brownian-motion Monte-Carlo over many daily looks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from strata.stats.sequential import daily_boundary, obf_boundaries, obf_spending

ALPHA = 0.05


def test_first_look_boundary_is_the_spending_quantile():
    # P(|Z_1| >= c_1) = alpha(t_1) = 2 - 2 Φ(z / sqrt(t_1))  =>  c_1 = z_{1-alpha/2} / sqrt(t_1)
    for t1 in (0.25, 0.5, 0.8):
        c = obf_boundaries(np.array([t1, 1.0]), ALPHA)
        assert c[0] == pytest.approx(stats.norm.isf(ALPHA / 2) / np.sqrt(t1), abs=1e-3)


def test_two_looks_spend_exactly_alpha_bivariate_normal():
    t = np.array([0.4, 1.0])
    c = obf_boundaries(t, ALPHA)
    rho = np.sqrt(t[0] / t[1])  # corr(Z_1, Z_2) for cumulative statistics
    mvn = stats.multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]])
    inside = (
        mvn.cdf([c[0], c[1]]) - mvn.cdf([-c[0], c[1]]) - mvn.cdf([c[0], -c[1]])
        + mvn.cdf([-c[0], -c[1]])
    )  # fmt: skip
    assert 1 - inside == pytest.approx(ALPHA, abs=1e-5)
    assert c[1] > stats.norm.isf(ALPHA / 2)  # the final look pays for the interim one


def test_any_look_false_positive_rate_over_30_daily_looks():
    looks, paths = 30, 200_000
    c = obf_boundaries(np.arange(1, looks + 1) / looks, ALPHA)
    assert np.all(np.diff(c[np.isfinite(c) & (c < 40)]) < 0)  # boundaries shrink over time
    rng = np.random.default_rng(11)
    z = np.cumsum(rng.standard_normal((paths, looks)), axis=1) / np.sqrt(np.arange(1, looks + 1))
    fpr = (np.abs(z) >= c).any(axis=1).mean()
    assert abs(fpr - ALPHA) < 3.5 * np.sqrt(ALPHA * (1 - ALPHA) / paths)
    # the spending function is what the boundaries spend, look by look
    crossed = np.maximum.accumulate(np.abs(z) >= c, axis=1).mean(axis=0)
    assert crossed == pytest.approx(obf_spending(np.arange(1, looks + 1) / looks, ALPHA), abs=3e-3)


def test_daily_boundary_past_the_plan_uses_the_final_boundary():
    assert daily_boundary(20, 14, ALPHA) == daily_boundary(14, 14, ALPHA)
    with pytest.raises(ValueError, match="must both be >= 1"):
        daily_boundary(0, 14, ALPHA)


@pytest.mark.parametrize("bad", [[0.5, 0.5], [0.0, 1.0], [0.5, 1.2], []])
def test_bad_fractions_are_rejected(bad):
    with pytest.raises(ValueError, match="information fractions"):
        obf_boundaries(np.array(bad), ALPHA)


def test_planned_power_with_the_final_boundary_is_a_tight_lower_bound():
    """Power planned with the final boundary (what strata.stats.power gets in sequential mode):
    the simulated any-look power is at least the claim and only slightly above it."""
    looks, paths = 10, 100_000
    t = np.arange(1, looks + 1) / looks
    c = obf_boundaries(t, ALPHA)
    drift = c[-1] + stats.norm.ppf(0.8)  # E[Z_K] giving 80% at the final look
    rng = np.random.default_rng(12)
    b = np.cumsum(rng.standard_normal((paths, looks)) * np.sqrt(1 / looks), axis=1)
    z = (b + drift * t) / np.sqrt(t)
    simulated = (np.abs(z) >= c).any(axis=1).mean()
    assert 0.8 - 0.005 <= simulated <= 0.8 + 0.03
