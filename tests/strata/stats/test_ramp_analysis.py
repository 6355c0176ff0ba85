"""Ramp analysis holds alpha across a 10% -> 50% sticky ramp (simulation, pure numpy).

Each simulated A/A experiment has two cohorts of 10,000 units: cohort 0 first assigned in
period 0 (treatment share 10%), cohort 1 (new units) in period 1 (50%). Units keep their variant,
so each cohort splits by its own period's share. The metric is a conversion whose rate differs
between cohorts (10% early, 15% late: new units behave differently) but not between arms (A/A).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from strata.stats.ramps import cohort_srm, ramp_srm, stratified_difference

ALPHA = 0.05
RUNS = 100_000
COHORT = np.array([10_000, 10_000])
SHARE_T = np.array([0.10, 0.50])
RATE = np.array([0.10, 0.15])
SHARES = np.stack([1 - SHARE_T, SHARE_T], axis=-1)  # [cohort, (control, treatment)]


@pytest.fixture(scope="module")
def simulated():
    rng = np.random.default_rng(20261203)
    n_t = rng.binomial(COHORT, SHARE_T, size=(RUNS, 2))
    n = np.stack([COHORT - n_t, n_t], axis=-1)  # [run, cohort, arm]
    conversions = rng.binomial(n, RATE[None, :, None])
    return n, conversions


def test_cohort_srm_false_alarm_rate_is_alpha(simulated):
    n, _ = simulated
    _, dof, p = cohort_srm(n, SHARES)
    assert set(np.unique(dof)) == {2}
    rate = float((p < ALPHA).mean())
    assert abs(rate - ALPHA) < 0.005, rate
    # the pooled test against today's 50% raises an alarm on every run
    pooled = n.sum(axis=1)[:, None, :]
    _, _, p_today = cohort_srm(pooled, SHARES[1:])
    assert float((p_today < ALPHA).mean()) == 1.0


def test_stratified_a_a_false_positive_rate_is_alpha_and_pooled_is_not(simulated):
    n, conv = simulated
    mean = conv / n
    effect, _, p = stratified_difference(n, mean, mean * (1 - mean))
    rate = float((p < ALPHA).mean())
    assert abs(rate - ALPHA) < 0.005, rate
    assert abs(float(effect.mean())) < 2e-4  # unbiased under the A/A null
    # pooled over cohorts: the treatment arm over-represents the late, higher-converting cohort
    n_p = n.sum(axis=1)[:, None, :]
    m_p = conv.sum(axis=1)[:, None, :] / n_p
    pooled, _, p_pooled = stratified_difference(n_p, m_p, m_p * (1 - m_p))
    assert float(pooled.mean()) > 0.015  # biased: ~ +0.024 with no true effect
    assert float((p_pooled < ALPHA).mean()) > 0.5


def test_ramp_srm_reads_the_tables():
    experiments = pd.DataFrame(
        {
            "experiment_id": ["ramped", "plain"],
            "variants": [
                '[{"vid":1,"weight":90},{"vid":2,"weight":10}]',
                '[{"vid":3,"weight":1},{"vid":4,"weight":1}]',
            ],
            "ramp": [
                '[{"date":"2026-11-09","variants":[{"vid":1,"weight":50},{"vid":2,"weight":50}]}]',
                "[]",
            ],
        }
    )
    counts = pd.DataFrame(
        {
            "experiment_id": ["ramped"] * 4 + ["plain"] * 2,
            "ramp_period": [0, 0, 1, 1, 0, 0],
            "variant_id": [1, 2, 1, 2, 3, 4],
            "units": [9000, 1000, 5050, 4950, 5000, 4500],
        }
    )
    out = ramp_srm(counts, experiments, ALPHA).set_index("exp_id")
    assert out.loc["ramped", "dof"] == 2
    assert bool(out.loc["ramped", "passed"])
    assert out.loc["ramped", "observed"] == [[9000, 1000], [5050, 4950]]
    assert out.loc["plain", "dof"] == 1
    assert not bool(out.loc["plain", "passed"])  # 5000 vs 4500 at 50/50
    bad = counts.assign(ramp_period=[0, 0, 2, 2, 0, 0])
    with pytest.raises(ValueError, match="'ramped': period 2 / variant 1 is not in"):
        ramp_srm(bad, experiments, ALPHA)


def test_the_nightly_result_prints_one_ramp_srm_line_per_ramped_experiment():
    import datetime as dt

    from strata.stats.nightly import NightResult

    srm = pd.DataFrame(
        {
            "exp_id": ["ramped"],
            "units": [20_000.0],
            "observed": [[[9000, 1000], [5050, 4950]]],
            "expected_share": [[[0.9, 0.1], [0.5, 0.5]]],
            "chi2": [0.5],
            "dof": [2],
            "p_value": [0.7788],
            "passed": [True],
        }
    )
    night = NightResult(dt.date(2026, 11, 14), ("ramped",), 0, 1, None, srm)
    assert night.ramp_srm_lines() == [
        "ramp SRM ramped: passed (chi2 0.50, dof 2, p 0.7788, 20,000 units in 2 cohorts)"
    ]
    assert NightResult(dt.date(2026, 11, 14), (), 0, 1, None).ramp_srm_lines() == []
