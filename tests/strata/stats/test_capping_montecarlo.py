"""Monte-Carlo check of capping (winsorization), fixed seed: on heavy-tailed revenue the capped
metric keeps the A/A false-positive rate at alpha and its variance falls.

20,000 A/A experiments of 2 x 500 users: a user buys with probability 0.2 and spends a lognormal
amount (mu 3, sigma 2: mean e^5 ~ 148, a few users spend thousands). The capped metric winsorizes
each user's value at the pooled 99th percentile of the buyers' values (as goal_aggregates does),
through the reference aggregation and the real engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from strata.metrics import Cap
from strata.stats import evaluate, experiments_from_records
from strata.stats.aggregate import aggregate_arrays

pytestmark = pytest.mark.slow  # ~15 s

ALPHA, SEED, SIMS, UNITS, CHUNK = 0.05, 7, 20_000, 500, 2_500
REVENUE = {"nominator": "value(user.unit.purchase)", "denominator": "count(user.global.exposure)"}


def _simulate():
    rng = np.random.default_rng(SEED)
    p_raw, p_cap, var_raw, var_cap = [], [], [], []
    for start in range(0, SIMS, CHUNK):
        shape = (CHUNK, 2, UNITS)
        buyer = rng.random(shape) < 0.2
        value = np.where(buyer, rng.lognormal(3.0, 2.0, shape), 0.0)
        ids = [f"sim{start + i}" for i in range(CHUNK)]
        goals, _ = aggregate_arrays(
            ids, [["1", "2"]] * CHUNK, "user", {"purchase": (buyer.astype(float), value)},
            caps={"purchase": Cap(percentile=0.99)},
        )  # fmt: skip
        exps = experiments_from_records(
            [
                {
                    "experiment_id": i,
                    "variants": [
                        {"vid": 1, "is_control": True, "weight": 1},
                        {"vid": 2, "weight": 1},
                    ],
                    "metrics": [
                        REVENUE | {"id": "raw", "name": "revenue"},
                        REVENUE
                        | {"id": "capped", "name": "revenue, capped", "cap": {"percentile": 0.99}},
                    ],
                }
                for i in ids
            ]
        )
        m = evaluate(goals, exps).metrics
        treat, ctrl = m[~m["is_control"]], m[m["is_control"]]
        p_raw.append(treat.loc[treat["metric_id"] == "raw", "p_value"].to_numpy())
        p_cap.append(treat.loc[treat["metric_id"] == "capped", "p_value"].to_numpy())
        var_raw.append(ctrl.loc[ctrl["metric_id"] == "raw", "std"].to_numpy() ** 2)
        var_cap.append(ctrl.loc[ctrl["metric_id"] == "capped", "std"].to_numpy() ** 2)
    return (np.concatenate(x) for x in (p_raw, p_cap, var_raw, var_cap))


def test_capping_keeps_the_false_positive_rate_and_cuts_the_variance():
    p_raw, p_cap, var_raw, var_cap = _simulate()
    assert len(p_cap) == SIMS
    fpr_cap, fpr_raw = (p_cap < ALPHA).mean(), (p_raw < ALPHA).mean()
    # measured: capped 0.0478, uncapped 0.0292 (heavy tails make the raw Welch test conservative)
    assert abs(fpr_cap - ALPHA) < 0.005  # 3.2 Monte-Carlo standard errors (0.00154)
    assert fpr_raw < fpr_cap
    # winsorizing is a 1-Lipschitz monotone map, so no sample's variance can grow
    assert (var_cap <= var_raw * (1 + 1e-9)).all()
    # measured: median per-experiment variance -30%, pooled over experiments -85%
    assert np.median(var_cap / var_raw) < 0.75
    assert var_cap.mean() / var_raw.mean() < 0.25
