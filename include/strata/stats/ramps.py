"""Ramp analysis: sample-ratio checks and effects per ramp cohort (issue #16, item 3).

A sticky ramp changes the split of *new* units only: the units first assigned in ramp period
``p`` (their cohort, the ``ramp_period`` column of ``assignments``) split by period ``p``'s
weights, and keep their variant afterwards. So

- **SRM** compares each cohort's counts with its own period's shares and sums the chi-square
  statistics (degrees of freedom add up): :func:`cohort_srm`. A pooled test against today's
  weights raises a false alarm on every ramped experiment.
- **Effects** are estimated per cohort and combined with weights proportional to the cohort's
  size (post-stratification): :func:`stratified_difference`. The pooled difference of means is
  biased when cohorts differ (new units behave unlike early ones) because the ramp makes the
  treatment arm over-represent the late cohort: the A/A simulation in ``tests`` shows the
  pooled test's false-positive rate far above alpha while the stratified one holds it.

Both are vectorised over leading axes (the simulation runs thousands of experiments at once).

Usage:
    >>> import numpy as np
    >>> chi2, dof, p = cohort_srm([[9000, 1000], [5000, 5000]], [[0.9, 0.1], [0.5, 0.5]])
    >>> float(chi2), int(dof), round(float(p), 3)
    (0.0, 2, 1.0)
    >>> n = np.array([[900, 100], [500, 500]]); mean = np.array([[0.1, 0.1], [0.2, 0.2]])
    >>> effect, se, p = stratified_difference(n, mean, mean * (1 - mean))
    >>> float(effect), round(float(p), 3)
    (0.0, 1.0)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from strata import contracts

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog


def cohort_srm(
    observed: ArrayLike, shares: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64]]:
    """Chi-square of counts per cohort against each cohort's period shares, summed.

    ``observed``: ``[..., cohort, variant]`` counts; ``shares``: ``[cohort, variant]`` (or
    broadcastable), each row summing to 1. Cohorts with no unit add nothing; the degrees of
    freedom are the sum over non-empty cohorts of (variants with a share) - 1. Returns
    ``(chi2, dof, p_value)`` over the leading axes.
    """
    obs = np.asarray(observed, dtype=float)
    share = np.asarray(shares, dtype=float)
    share = share / share.sum(axis=-1, keepdims=True)
    total = obs.sum(axis=-1, keepdims=True)
    expected = total * share
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (obs - expected) ** 2 / expected, 0.0)
        terms = np.where((expected == 0) & (obs > 0), np.inf, terms)
    chi2 = terms.sum(axis=(-2, -1))
    present = total[..., 0] > 0
    dof = (present * ((share > 0).sum(axis=-1) - 1)).sum(axis=-1)
    p = stats.chi2.sf(chi2, np.maximum(dof, 1))
    return chi2, np.asarray(dof), np.where(dof > 0, p, 1.0)


def stratified_difference(
    n: ArrayLike, mean: ArrayLike, var: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Treatment - control mean difference combined over cohorts, weighted by cohort size.

    ``n``, ``mean``, ``var``: ``[..., cohort, 2]`` (index 0 control, 1 treatment) unit counts,
    means and unit-level variances. Cohort ``c`` gets weight ``N_c / sum N`` (its units, both
    arms); a cohort with an empty arm is left out (its weight is given to the others). Returns
    ``(effect, standard error, two-sided z-test p-value)``.
    """
    n_ = np.asarray(n, dtype=float)
    m = np.asarray(mean, dtype=float)
    v = np.asarray(var, dtype=float)
    usable = (n_ > 0).all(axis=-1)
    size = np.where(usable, n_.sum(axis=-1), 0.0)
    w = size / size.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.where(usable, m[..., 1] - m[..., 0], 0.0)
        var_c = np.where(usable, v[..., 1] / n_[..., 1] + v[..., 0] / n_[..., 0], 0.0)
    effect = (w * diff).sum(axis=-1)
    se = np.sqrt((w**2 * var_c).sum(axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, effect / se, 0.0)
    return effect, se, 2 * stats.norm.sf(np.abs(z))


def period_shares(
    variants: Iterable[Mapping[str, Any]], ramp: Iterable[Mapping[str, Any]]
) -> tuple[list[int], NDArray[np.float64]]:
    """Shares per ramp period (rows) and variant (columns, in ``variants`` order, by vid) from
    the ``experiments`` table's ``variants`` and ``ramp`` JSON."""
    vids = [int(v["vid"]) for v in variants]
    rows = [[float(v["weight"]) for v in variants]]
    for step in ramp:
        by_vid = {int(v["vid"]): float(v["weight"]) for v in step["variants"]}
        rows.append([by_vid[vid] for vid in vids])
    shares = np.asarray(rows)
    return vids, shares / shares.sum(axis=1, keepdims=True)


def ramp_srm(counts: pd.DataFrame, experiments: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """SRM per experiment from assignment counts per cohort (:func:`cohort_srm`).

    ``counts``: ``experiment_id, ramp_period, variant_id, units`` (the ``assignments`` table
    grouped); ``experiments``: ``experiment_id, variants, ramp`` (the ``experiments`` table,
    JSON strings; a missing or empty ``ramp`` means one period). One row per experiment with
    counts: ``observed`` per period and variant, ``expected_share``, ``chi2``, ``dof``,
    ``p_value`` and ``passed`` (``p_value >= alpha``).
    """
    out = []
    for rec in experiments.to_dict("records"):
        eid = rec["experiment_id"]
        mine = counts[counts["experiment_id"] == eid]
        if mine.empty:
            continue
        raw_ramp = rec.get("ramp")
        ramp = json.loads(raw_ramp) if isinstance(raw_ramp, str) and raw_ramp else []
        vids, shares = period_shares(json.loads(rec["variants"]), ramp)
        observed = np.zeros_like(shares)
        for r in mine.itertuples(index=False):
            period, vid = int(r.ramp_period), int(r.variant_id)
            if period >= len(shares) or vid not in vids:
                raise ValueError(
                    f"assignments of {eid!r}: period {period} / variant {vid} is not in its "
                    f"definition ({len(shares)} periods, vids {vids})"
                )
            observed[period, vids.index(vid)] += float(r.units)
        chi2, dof, p = cohort_srm(observed, shares)
        out.append(
            {
                "exp_id": eid,
                "units": float(observed.sum()),
                "observed": observed.tolist(),
                "expected_share": shares.tolist(),
                "chi2": float(chi2),
                "dof": int(dof),
                "p_value": float(p),
                "passed": bool(p >= alpha),
            }
        )
    return pd.DataFrame(
        out,
        columns=[
            "exp_id",
            "units",
            "observed",
            "expected_share",
            "chi2",
            "dof",
            "p_value",
            "passed",
        ],
    )


def read_ramp_srm(
    catalog: Catalog,
    experiment_ids: Iterable[str] | None = None,
    alpha: float = 0.001,
    namespace: str = "strata",
) -> pd.DataFrame:
    """:func:`ramp_srm` of the ramped experiments (a non-empty ``ramp`` in the ``experiments``
    table; ``experiment_ids``: among these) from the current ``assignments`` snapshot, read with
    pyiceberg (only those experiments' rows, three columns). Empty when none is ramped or the
    tables predate ramps."""
    from pyiceberg.expressions import In

    exps = catalog.load_table(f"{namespace}.{contracts.EXPERIMENTS}").scan().to_arrow().to_pandas()
    if "ramp" not in exps.columns:
        return ramp_srm(pd.DataFrame(), exps.iloc[0:0], alpha)
    exps = exps[exps["ramp"].fillna("[]") != "[]"]
    if experiment_ids is not None:
        exps = exps[exps["experiment_id"].isin(list(experiment_ids))]
    if exps.empty:
        return ramp_srm(pd.DataFrame(), exps, alpha)
    rows = (
        catalog.load_table(f"{namespace}.{contracts.ASSIGNMENTS}")
        .scan(
            row_filter=In("experiment_id", set(exps["experiment_id"])),
            selected_fields=("experiment_id", "ramp_period", "variant_id"),
        )
        .to_arrow()
        .to_pandas()
    )
    counts = (
        rows.groupby(["experiment_id", "ramp_period", "variant_id"]).size().rename("units")
    ).reset_index()
    return ramp_srm(counts, exps, alpha)
