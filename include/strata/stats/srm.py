"""Sample ratio mismatch: a chi-square test of exposures per variant against the design's weights.

One row per experiment × unit type: the exposures (``count`` of the undimensioned
``<unit_type>.global.<exposure goal>`` row), observed counts per variant, expected shares, the
statistic, its p-value and ``passed`` (p >= ``EvaluationConfig.srm_alpha``).

Usage:
    >>> import pandas as pd
    >>> from strata.stats.models import EvaluationConfig, experiment_from_record
    >>> exp = experiment_from_record({"experiment_id": "e", "variants": [
    ...     {"vid": 1, "is_control": True, "weight": 1}, {"vid": 2, "weight": 1}], "metrics": []})
    >>> goals = pd.DataFrame({"exp_id": "e", "exp_variant_id": [1, 2], "unit_type": "user",
    ...     "agg_type": "global", "goal": "exposure", "count": [1000, 900], "sum_sqr_count": 0,
    ...     "sum_value": 0.0, "sum_sqr_value": 0.0, "count_unique": 0})
    >>> row = sample_ratio_mismatch(goals, [exp], EvaluationConfig()).iloc[0]
    >>> round(float(row["chi2"]), 3), bool(row["passed"])
    (5.263, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from strata.stats.inputs import dimension_columns, variant_codes
from strata.stats.models import DEFAULT_SRM_ALPHA

if TYPE_CHECKING:
    from strata.stats.models import EvaluationConfig, ExperimentDesign


def sample_ratio_mismatch(
    goals: pd.DataFrame, experiments: list[ExperimentDesign], config: EvaluationConfig
) -> pd.DataFrame:
    """Chi-square test of exposures per variant against the design's allocation weights."""
    wanted = {e.experiment_id for e in experiments}
    g = goals[
        goals["exp_id"].astype(str).isin(wanted)
        & (goals["agg_type"] == "global")
        & (goals["goal"] == config.exposure_goal)
    ]
    dims = dimension_columns(g)
    if dims:  # the undimensioned exposure row counts units
        g = g[(g[dims].fillna("").astype(str) == "").all(axis=1)]
    unit_types = sorted(g["unit_type"].astype(str).unique())
    n_var = max(len(e.variants) for e in experiments)
    e_idx, v_idx = variant_codes(g["exp_id"], g["exp_variant_id"], experiments, "exposures")
    u_idx = g["unit_type"].astype(str).map({u: i for i, u in enumerate(unit_types)}).to_numpy()
    observed = np.zeros((len(experiments), max(len(unit_types), 1), n_var))
    np.add.at(observed, (e_idx, u_idx.astype(np.int64), v_idx), g["count"].to_numpy(float))
    weights = np.zeros((len(experiments), n_var))
    for i, exp in enumerate(experiments):  # design-sized
        weights[i, : len(exp.variants)] = [v.weight for v in exp.variants]
    share = weights / weights.sum(axis=1, keepdims=True)
    total = observed.sum(axis=2, keepdims=True)
    expected = total * share[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (observed - expected) ** 2 / expected, 0.0)
        terms = np.where((expected == 0) & (observed > 0), np.inf, terms)
    stat = terms.sum(axis=2)
    dof = (share > 0).sum(axis=1)[:, None] - 1
    p = stats.chi2.sf(stat, np.maximum(dof, 1))
    present = total[:, :, 0] > 0
    out = pd.DataFrame(
        {
            "exp_id": np.repeat([e.experiment_id for e in experiments], observed.shape[1]),
            "unit_type": np.tile(unit_types or [""], len(experiments)),
            "exposures": total[:, :, 0].ravel(),
            "observed": [list(x) for x in observed.reshape(-1, n_var)],
            "expected_share": [list(x) for x in np.repeat(share, observed.shape[1], axis=0)],
            "chi2": stat.ravel(),
            "dof": np.broadcast_to(dof, stat.shape).ravel(),
            "p_value": p.ravel(),
        }
    )
    out = out[present.ravel()].reset_index(drop=True)
    out["observed"] = [
        o[: len(experiments[i].variants)]
        for o, i in zip(
            out["observed"],
            out["exp_id"].map({e.experiment_id: j for j, e in enumerate(experiments)}),
            strict=True,
        )
    ]
    out["expected_share"] = [
        s[: len(o)] for s, o in zip(out["expected_share"], out["observed"], strict=True)
    ]
    out["passed"] = out["p_value"] >= config.srm_alpha
    return out


def request_split(
    served: Mapping[tuple[str, int], float],
    shares: Mapping[str, Mapping[int, float]],
    alpha: float = DEFAULT_SRM_ALPHA,
) -> pd.DataFrame:
    """The split check of random (per-request) experiments, which have no unit: a chi-square
    test of the **requests** served each variant against the variants' shares of the draw.

    ``served``: ``{(experiment_id, vid): requests}`` (the endpoint's
    ``strata_endpoint_random_served_total``); ``shares``: ``{experiment_id: {vid: share}}``
    (each variant's slot width: the probability a served request draws it). Each request is an
    independent draw, so any set of counted requests (e.g. since the endpoint last restarted)
    splits by the shares; a failed check means the draw or the counting is broken. No per-unit
    metric exists for these experiments (``refuse_per_request``). One row per experiment with
    requests: ``exp_id, requests, observed, expected_share, chi2, dof, p_value, passed``.

    Usage:
        >>> out = request_split({("banner", 1): 5120, ("banner", 2): 4880},
        ...                     {"banner": {1: 0.5, 2: 0.5}})
        >>> round(float(out.loc[0, "chi2"]), 2), bool(out.loc[0, "passed"])
        (5.76, True)
    """
    rows = []
    for exp_id in sorted(shares):
        vids = sorted(shares[exp_id])
        observed = np.array([float(served.get((exp_id, v), 0.0)) for v in vids])
        unknown = sorted(v for e, v in served if e == exp_id and v not in shares[exp_id])
        if unknown:
            raise ValueError(f"{exp_id}: requests served variant(s) {unknown}, not in {vids}")
        total = observed.sum()
        if total <= 0:
            continue
        share = np.array([float(shares[exp_id][v]) for v in vids])
        share = share / share.sum()
        expected = total * share
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(expected > 0, (observed - expected) ** 2 / expected, 0.0)
            terms = np.where((expected == 0) & (observed > 0), np.inf, terms)
        chi2 = float(terms.sum())
        dof = int((share > 0).sum() - 1)
        p = float(stats.chi2.sf(chi2, max(dof, 1))) if dof > 0 else 1.0
        rows.append(
            {
                "exp_id": exp_id,
                "requests": float(total),
                "observed": dict(zip(vids, observed.tolist(), strict=True)),
                "expected_share": dict(zip(vids, share.tolist(), strict=True)),
                "chi2": chi2,
                "dof": dof,
                "p_value": p,
                "passed": p >= alpha,
            }
        )
    columns = ["exp_id", "requests", "observed", "expected_share", "chi2", "dof", "p_value"]
    return pd.DataFrame(rows, columns=[*columns, "passed"])
