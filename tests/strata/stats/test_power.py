"""Power, sample size and MDE: closed forms, ep-stats' formula, and mutual consistency."""

from __future__ import annotations

import numpy as np
import pytest
from epstats.toolkit.statistics import Statistics
from scipy import stats

from strata.stats.power import minimum_detectable_effect, power, required_sample_size


@pytest.mark.parametrize(("variants", "std_2"), [(2, None), (3, 0.35), (4, 0.3)])
def test_sample_size_matches_epstats_formula(variants, std_2):
    mean, std, effect = 0.2, 0.3, 0.04
    ours = required_sample_size(
        mean, std, effect, comparisons=variants - 1, std_treatment=std_2
    )  # ep-stats rounds where we round up
    theirs = Statistics.required_sample_size_per_variant(variants, effect, mean, std, std_2)
    assert abs(float(ours) - float(theirs)) <= 1


def test_hand_computed_sample_size():
    # (z_.975 + z_.8)^2 * 2 * sigma^2 / delta^2 with sigma = 1, delta = 0.1
    z = stats.norm.isf(0.025) + stats.norm.ppf(0.8)
    assert required_sample_size(1.0, 1.0, 0.1) == np.ceil(z**2 * 2 / 0.01)


def test_power_sample_size_and_mde_are_inverse():
    mean = np.array([0.1, 5.0, 30.0])
    std = np.array([0.3, 4.0, 50.0])
    n = required_sample_size(mean, std, 0.05, power=0.9, comparisons=2)
    assert power(mean, std, 0.05, n, comparisons=2) == pytest.approx(0.9, abs=2e-4)
    assert minimum_detectable_effect(mean, std, n, power=0.9, comparisons=2) == pytest.approx(
        0.05, rel=1e-3
    )
    # more comparisons cost sample size; a larger effect needs fewer units
    one = required_sample_size(mean, std, 0.05)
    assert (required_sample_size(mean, std, 0.05, comparisons=3) > one).all()
    assert (required_sample_size(mean, std, 0.1) < one).all()


def test_power_at_zero_effect_is_alpha():
    assert power(1.0, 1.0, 0.0, 1000) == pytest.approx(0.05)
