"""The Bayesian view (strata.stats.bayes): closed forms, the engine's columns, and Monte-Carlo
calibration with fixed seeds through one vectorised engine call per case.

Done criterion of issue #15 item 6: the credible interval covers the true effect within ±0.01 of
its nominal 95% over ≥ 5,000 simulated experiments.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from strata.stats import DesignError, EvaluationConfig, evaluate, experiments_from_records
from strata.stats.aggregate import aggregate_arrays
from strata.stats.bayes import BAYES_COLUMNS, bayesian_view, posterior

SEED = 15
NOMINAL = 0.95
COVERAGE_TOLERANCE = 0.01  # the criterion (about 3 Monte-Carlo standard errors at 5,000)


# --- closed forms -------------------------------------------------------------------------------


def one_row(m_t, m_c=1.0, var=1.0, n=400, direction="increase", **config):
    m = np.array([[m_c, m_t]])
    ctrl = np.array([[True, False]])
    out = bayesian_view(
        m, np.full_like(m, var), np.full_like(m, n), ctrl, ~ctrl, [direction],
        EvaluationConfig(**config),
    )  # fmt: skip
    return {k: float(v[0, 1]) for k, v in out.items()}


def test_flat_prior_is_the_normal_likelihood_with_delta_method_se():
    out = one_row(1.1)
    se = np.sqrt(1 / 400 + 1.1**2 / 400)  # relative delta method, as rel_se
    assert out["bayes_effect"] == pytest.approx(0.1)
    assert out["bayes_upper"] - out["bayes_lower"] == pytest.approx(2 * 1.959964 * se, rel=1e-6)
    assert out["prob_beat_control"] == pytest.approx(stats.norm.cdf(0.1 / se))
    absolute = one_row(1.1, bayes_scale="absolute")
    assert absolute["bayes_effect"] == pytest.approx(0.1)
    assert absolute["prob_beat_control"] == pytest.approx(stats.norm.cdf(0.1 / np.sqrt(2 / 400)))


def test_expected_losses_match_numerical_integration():
    out = one_row(1.03, var=2.0, n=300)
    mu, tau = out["bayes_effect"], (out["bayes_upper"] - out["bayes_lower"]) / (2 * 1.959964)

    def expect(f):
        return integrate.quad(lambda x: f(x) * stats.norm.pdf(x, mu, tau), -1, 1)[0]

    assert out["expected_loss_treatment"] == pytest.approx(expect(lambda x: max(-x, 0)), 1e-6)
    assert out["expected_loss_control"] == pytest.approx(expect(lambda x: max(x, 0)), 1e-6)
    assert out["expected_loss_control"] - out["expected_loss_treatment"] == pytest.approx(mu)


def test_direction_decrease_flips_the_gain():
    up, down = one_row(1.05), one_row(1.05, direction="decrease")
    assert down["prob_beat_control"] == pytest.approx(1 - up["prob_beat_control"])
    assert down["expected_loss_treatment"] == pytest.approx(up["expected_loss_control"])
    assert down["bayes_effect"] == up["bayes_effect"]  # the effect itself is not flipped


def test_proper_prior_shrinks_towards_its_mean():
    mu, tau = posterior(np.array([0.2]), np.array([0.1]), prior_mean=0.0, prior_sd=0.1)
    assert mu[0] == pytest.approx(0.1)
    assert tau[0] == pytest.approx(0.1 / np.sqrt(2))
    flat, proper = one_row(1.1), one_row(1.1, bayes_prior_sd=0.05)
    assert 0 < proper["bayes_effect"] < flat["bayes_effect"]
    assert proper["bayes_upper"] - proper["bayes_lower"] < flat["bayes_upper"] - flat["bayes_lower"]


@pytest.mark.parametrize(
    "config",
    [{"bayes_prior_sd": 0.0}, {"bayes_prior_sd": -1.0}, {"bayes_scale": "log"},
     {"bayes_scale": "absolute", "bayes_prior_sd": 0.3}, {"bayes_prior_mean": float("nan")}],
)  # fmt: skip
def test_bad_prior_settings_are_refused(config):
    with pytest.raises(DesignError):
        EvaluationConfig(**config)


def test_untestable_rows_are_nan():
    m = np.array([[1.0, 1.2, 1.1]])
    out = bayesian_view(
        m, np.array([[0.0, 0.0, 1.0]]), np.array([[50, 50, 1]]), np.array([[True, False, False]]),
        np.array([[False, True, False]]), ["increase"], EvaluationConfig(),
    )  # fmt: skip
    assert set(out) == set(BAYES_COLUMNS)
    for v in out.values():
        assert np.isnan(v).all()  # control, zero variance, untestable


# --- through the engine -------------------------------------------------------------------------


def designs(n_exp: int, metric: dict, **extra) -> list:
    records = [
        {
            "experiment_id": f"sim{i}",
            "variants": [{"vid": v, "is_control": v == 1, "weight": 1} for v in (1, 2)],
            "metrics": [{"id": 1, "name": "m", "role": "primary", **metric}],
            **extra,
        }
        for i in range(n_exp)
    ]
    return experiments_from_records(records)


MEAN = {"nominator": "value(user.unit.rev)", "denominator": "count(user.global.exposure)"}
RATIO = {"nominator": "count(user.unit.click)", "denominator": "count(user.unit.view)"}
RATIO_CROSS = [("count(user.unit.click)", "count(user.unit.view)")]
CUPED = {**MEAN, "covariate": "value(user.unit.pre)"}
CUPED_CROSS = [("value(user.unit.pre)", "value(user.unit.rev)")]


def simulate(rng, sims: int, n: int, lift: np.ndarray):
    """Per-user revenue (mean 11, with a correlated pre-period covariate) and views / clicks
    (CTR 0.1); the treatment multiplies revenue and CTR by ``1 + lift`` (one lift per sim), so
    the true relative lift of every metric is ``lift``."""
    shape = (sims, 2, n)
    factor = np.stack([np.ones(sims), 1.0 + lift], axis=1)[:, :, None]
    pre = rng.gamma(2.0, 5.0, shape)
    revenue = (0.8 * pre + rng.gamma(1.0, 3.0, shape)) * factor
    views = 1.0 + rng.poisson(4.0, shape)
    clicks = rng.binomial(views.astype(np.int64), np.clip(0.1 * factor, 0, 1)).astype(float)
    ones = np.ones(shape)
    return {"rev": (ones, revenue), "pre": (ones, pre), "view": (views, views),
            "click": (clicks, clicks)}  # fmt: skip


def run(data, metric, cross=(), **config):
    sims = next(iter(data.values()))[0].shape[0]
    exps = designs(sims, metric)
    goals, cross_df = aggregate_arrays(
        [e.experiment_id for e in exps], [[1, 2]] * sims, "user", data, cross
    )
    out = evaluate(goals, exps, cross=cross_df, config=EvaluationConfig(**config)).metrics
    return out[~out["is_control"]].reset_index(drop=True)


def test_engine_adds_the_columns_beside_the_frequentist_result():
    data = simulate(np.random.default_rng(SEED), 50, 400, np.full(50, 0.05))
    exps = designs(50, MEAN)
    goals, _ = aggregate_arrays([e.experiment_id for e in exps], [[1, 2]] * 50, "user", data)
    out = evaluate(goals, exps).metrics
    assert set(BAYES_COLUMNS) <= set(out.columns)
    assert out.loc[out["is_control"], list(BAYES_COLUMNS)].isna().all().all()
    t = out[~out["is_control"]]
    # flat prior: the posterior mean is the frequentist relative effect
    np.testing.assert_allclose(t["bayes_effect"], t["rel_diff"], rtol=1e-12)
    # a significant win has P(beat control) above 1 - alpha/2 (two-sided test, single treatment)
    wins = t[t["decision"] == "win"]
    assert len(wins)
    assert (wins["prob_beat_control"] > 0.97).all()


@pytest.mark.slow  # Monte Carlo: seconds each; run by make test, not make test-unit
@pytest.mark.parametrize(
    ("metric", "cross"), [(MEAN, ()), (RATIO, RATIO_CROSS), (CUPED, CUPED_CROSS)],
    ids=["mean", "ratio", "cuped"],
)  # fmt: skip
def test_credible_interval_coverage_flat_prior(metric, cross):
    """A fixed true lift of 5%: the flat-prior 95% credible interval covers it in 95% ± 0.01 of
    10,000 experiments (it is then also a frequentist interval). The delta-method interval of a
    relative lift misses a little more often below than above (the ratio's skew): about 0.947
    over seeds 16-19 for the ratio metric, so 5,000 runs would leave too little margin."""
    sims, lift = 10_000, 0.05
    rng = np.random.default_rng(SEED + 1)
    t = run(simulate(rng, sims, 400, np.full(sims, lift)), metric, cross)
    assert len(t) == sims
    cover = ((t["bayes_lower"] <= lift) & (lift <= t["bayes_upper"])).mean()
    assert abs(cover - NOMINAL) < COVERAGE_TOLERANCE, cover


@pytest.mark.slow  # Monte Carlo: seconds each; run by make test, not make test-unit
def test_calibration_with_a_proper_prior():
    """True lifts drawn from the prior N(0, 0.05²): the credible interval covers 95% ± 0.01 of
    them over 8,000 experiments, P(beat control) is calibrated and the expected loss is the
    average loss actually incurred."""
    sims, prior_sd = 8000, 0.05
    rng = np.random.default_rng(SEED + 2)
    lift = rng.normal(0.0, prior_sd, sims)
    t = run(simulate(rng, sims, 400, lift), CUPED, CUPED_CROSS, bayes_prior_sd=prior_sd)
    cover = ((t["bayes_lower"] <= lift) & (lift <= t["bayes_upper"])).mean()
    assert abs(cover - NOMINAL) < COVERAGE_TOLERANCE, cover
    p, won = t["prob_beat_control"].to_numpy(), lift > 0
    for lo, hi in ((0.0, 0.2), (0.2, 0.8), (0.8, 1.0)):  # calibration by bins of P
        sel = (p >= lo) & (p < hi)
        assert abs(won[sel].mean() - p[sel].mean()) < 3.5 * np.sqrt(0.25 / sel.sum())
    for column, loss in (("expected_loss_treatment", np.maximum(-lift, 0)),
                         ("expected_loss_control", np.maximum(lift, 0))):  # fmt: skip
        se = loss.std() / np.sqrt(sims)
        assert abs(t[column].mean() - loss.mean()) < 3.5 * se
