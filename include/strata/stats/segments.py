"""Segments: every metric per segment value, and a heterogeneity test that flags segments whose
effect differs (docs/statistics.md, "Segments").

Input: ``goal_segment_aggregates`` (and its cross table): the ep-stats columns plus ``dimension``
and ``segment``, one dimension at a time. Each (experiment, dimension, segment) is evaluated as if
it were an experiment of its own, by the same vectorised engine (:func:`strata.stats.evaluate`),
all in one call; then, per family of one experiment × dimension × metric × treatment variant:

* **multiplicity across segments**: Holm over the segments' p-values (family-wise error per
  dimension); the segment's relative interval is the Fieller interval at the matching level
  ``alpha * p / p_adj``, so it excludes zero exactly when the adjusted decision is significant;
* **heterogeneity** (treatment × segment interaction): Cochran's Q on the segments' log ratios
  ``l_s = log(m_t / m_c)``, ``se_s² = Var_t / (n_t m_t²) + Var_c / (n_c m_c²)``, weights
  ``w_s = 1 / se_s²``: ``Q = Σ w_s (l_s - l̄)²``, ``l̄ = Σ w_s l_s / Σ w_s``, chi-square with
  ``k - 1`` degrees of freedom. Relative (log) scale: a lift that is the same in every segment is
  not heterogeneity, however different the segments' baselines. Benjamini–Hochberg across all
  heterogeneity tests of an experiment (false discovery rate); the night widens the family to
  every experiment's tests of the date (:func:`settle_families`, run by
  :func:`strata.stats.results.settle_night`);
* **flagged segments**: only in a family whose heterogeneity test survives BH, the fewest
  segments whose removal leaves the others homogeneous (:func:`flag_segments`): the segment whose
  log ratio differs most from the pooled log ratio of the *other* segments,
  ``z_s = (l_s - l_rest) / sqrt(se_s² + 1 / Σ_{j≠s} w_j)``, is flagged and set aside, and Q is
  tested again on the rest (level alpha), until the rest is homogeneous. A segment that merely
  sits on the other side of an outlier is not flagged. The same segments of a family whose raw
  p <= alpha but whose test does not survive are ``candidate`` (flagged if a wider family lets
  the test survive).

Segment analysis is fixed-horizon (an exploratory read of the cumulative data: it never changes
an experiment's verdict). Segments with fewer than ``min_units`` units in either arm, or a
non-positive mean, take no part in the heterogeneity test (still evaluated, if estimable).
Metrics whose terms carry dimension filters (``goal(platform=ios)``) are not segmented. Capped
metrics are, from the segment aggregates' capped sums: the experiment's cap (pooled over variants,
the one of ``goal_aggregates``), not a per-segment cap, so a dimension's segments add up to the
experiment's row; segment aggregates without the capping columns (a table from before them)
leave capped metrics out.

Usage:
    >>> import numpy as np
    >>> q, df, p = cochran_q(np.array([[0.1, 0.1, 0.4]]), np.array([[0.05, 0.05, 0.05]]))
    >>> round(float(q[0]), 2), int(df[0]), round(float(p[0]), 4)
    (24.0, 2, 0.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from strata.metrics import parse_linear
from strata.stats.engine import evaluate, fieller_relative
from strata.stats.errors import AggregateError
from strata.stats.inputs import CAP_COLUMNS, CROSS_COLUMNS, KEY_COLUMNS, VALUE_COLUMNS
from strata.stats.models import EvaluationConfig, ExperimentDesign, experiment_from_record
from strata.stats.multiple import benjamini_hochberg, holm

#: The columns that name a segment in the segment aggregates.
SEGMENT_COLUMNS = ("dimension", "segment")
#: Fewest units per arm for a segment to enter the heterogeneity test (normal approximation).
SEGMENT_MIN_UNITS = 50
_SEP = "\x1f"


@dataclass
class SegmentEvaluation:
    """``segments``: one row per experiment × dimension × segment × metric × variant (controls
    included); ``heterogeneity``: one row per experiment × dimension × metric × treatment."""

    segments: pd.DataFrame
    heterogeneity: pd.DataFrame
    config: EvaluationConfig
    analysis_date: date | None = None

    def flagged(self) -> pd.DataFrame:
        """The flagged segments (treatment rows), with their effect and tests."""
        s = self.segments
        return s[s["flagged"].astype(bool)] if len(s) else s


# --- pure statistics ------------------------------------------------------------------------------


def cochran_q(effect: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cochran's Q per row (one family per row; NaN marks no segment): ``(Q, df, p)``.

    ``df = k - 1`` with ``k`` the finite entries; rows with ``k < 2`` get NaN.
    """
    effect, se = np.asarray(effect, float), np.asarray(se, float)
    ok = np.isfinite(effect) & np.isfinite(se) & (se > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(ok, 1.0 / np.where(ok, se, 1.0) ** 2, 0.0)
        e = np.where(ok, effect, 0.0)
        sw = w.sum(axis=1)
        pooled = (w * e).sum(axis=1) / sw
        q = (w * (e - pooled[:, None]) ** 2).sum(axis=1)
    k = ok.sum(axis=1)
    df = (k - 1).astype(float)
    testable = k >= 2
    q = np.where(testable, q, np.nan)
    p = np.where(testable, stats.chi2.sf(q, np.maximum(df, 1)), np.nan)
    return q, np.where(testable, df, np.nan), p


def deviation_from_rest(
    effect: np.ndarray, se: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each segment against the pooled (inverse-variance) effect of the others in its row:
    ``(difference, z, two-sided p)``; NaN where the segment or its rest is not estimable.

    Usage:
        >>> d, z, p = deviation_from_rest(np.array([[0.0, 0.0, 0.3]]), np.array([[0.1] * 3]))
        >>> [round(float(x), 3) for x in d[0]], bool(p[0, 2] < 0.05 < p[0, 0])
        ([-0.15, -0.15, 0.3], True)
    """
    effect, se = np.asarray(effect, float), np.asarray(se, float)
    ok = np.isfinite(effect) & np.isfinite(se) & (se > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(ok, 1.0 / np.where(ok, se, 1.0) ** 2, 0.0)
        e = np.where(ok, effect, 0.0)
        w_rest = w.sum(axis=1, keepdims=True) - w
        rest = ((w * e).sum(axis=1, keepdims=True) - w * e) / w_rest
        diff = e - rest
        z = diff / np.sqrt(np.where(ok, se, np.nan) ** 2 + 1.0 / w_rest)
    valid = ok & (w_rest > 0)
    p = np.where(valid, 2 * stats.norm.sf(np.abs(z)), np.nan)
    return np.where(valid, diff, np.nan), np.where(valid, z, np.nan), p


def flag_segments(
    effect: np.ndarray, se: np.ndarray, start: np.ndarray, alpha: float
) -> np.ndarray:
    """Segments (columns) to flag in each family (row) whose heterogeneity test passed
    (``start``): repeatedly set aside the segment with the largest leave-one-out ``|z|`` (ties:
    the larger distance to the pooled effect) while the remaining ones are heterogeneous
    (Cochran's Q at ``alpha``), stopping when fewer than two remain.

    Usage:
        >>> flag_segments(np.array([[0.0, 0.02, 0.4, -0.01]]), np.array([[0.05] * 4]),
        ...               np.array([True]), 0.05).tolist()
        [[False, False, True, False]]
    """
    effect, se = np.asarray(effect, float), np.asarray(se, float)
    active = np.isfinite(effect) & np.isfinite(se) & (se > 0)
    flagged = np.zeros(effect.shape, dtype=bool)
    go = np.asarray(start, dtype=bool) & (active.sum(axis=1) >= 2)
    rows = np.arange(effect.shape[0])
    for _ in range(max(effect.shape[1] - 1, 0)):  # steps, each vectorised over the families
        if not go.any():
            break
        e = np.where(active, effect, np.nan)
        _, z, _ = deviation_from_rest(e, se)
        absz = np.where(np.isfinite(z), np.abs(z), -1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(active, 1.0 / np.where(active, se, 1.0) ** 2, 0.0)
            pooled = np.nansum(w * np.where(active, effect, 0.0), axis=1) / w.sum(axis=1)
        resid = np.where(active, np.abs(np.where(active, effect, 0.0) - pooled[:, None]), -1.0)
        best = absz.max(axis=1, keepdims=True)
        near = (absz >= best * (1 - 1e-9)) & (absz >= 0)
        pick = np.argmax(np.where(near, resid, -1.0), axis=1)
        go &= best[:, 0] >= 0
        flagged[rows[go], pick[go]] = True
        active[rows[go], pick[go]] = False
        _, _, p = cochran_q(np.where(active, effect, np.nan), se)
        go &= np.isfinite(p) & (p <= alpha)
    return flagged


def log_ratio(
    m_t: np.ndarray, m_c: np.ndarray, a_t: np.ndarray, a_c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``log(m_t / m_c)`` and its delta-method standard error (``a = Var / n`` of each arm);
    NaN unless both means are positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (m_t > 0) & (m_c > 0)
        lr = np.where(ok, np.log(np.where(ok, m_t / m_c, 1.0)), np.nan)
        se = np.where(ok, np.sqrt(a_t / m_t**2 + a_c / m_c**2), np.nan)
    return lr, se


def family_matrix(codes: np.ndarray, values: np.ndarray, fill: float = np.nan):
    """Lay ``values`` out as (families × members) by their family ``codes`` (0..F-1)."""
    codes = np.asarray(codes, dtype=np.int64)
    n_fam = int(codes.max()) + 1 if len(codes) else 0
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_fam)
    pos = np.empty(len(codes), dtype=np.int64)
    pos[order] = np.arange(len(codes)) - np.repeat(np.cumsum(counts) - counts, counts)
    mat = np.full((n_fam, int(counts.max()) if len(codes) else 0), fill)
    mat[codes, pos] = values
    return mat, pos


#: ``decision`` of a ``segment_deviation`` results row: flagged (its family's heterogeneity test
#: survives the false-discovery control), or a candidate (the segment :func:`flag_segments` sets
#: aside in a family whose raw heterogeneity p-value is at most alpha, but whose test does not
#: survive: flagged if a wider family, the night's, lets it survive).
FLAGGED, CANDIDATE = "flagged", "candidate"
#: ``decision`` of a ``heterogeneity`` results row.
HETEROGENEOUS, HOMOGENEOUS, NOT_TESTABLE = "heterogeneous", "homogeneous", "not_testable"
#: The columns naming one heterogeneity family in the results rows.
FAMILY_KEY = ("experiment_id", "analysis_date", "window", "metric_id", "variant", "dimension")


def settle_families(rows: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Benjamini–Hochberg across *every* heterogeneity test in ``rows`` (the results rows of one
    night: all experiments' ``heterogeneity`` and ``segment_deviation`` rows of an analysis
    date), instead of per experiment. Returns a copy with the ``heterogeneity`` rows'
    ``p_value_adjusted`` and decision recomputed, and the ``segment_deviation`` rows' decision
    settled: ``flagged`` in a family whose test survives, ``candidate`` in one that does not
    (the flags themselves come from :func:`flag_segments`, which only the raw data determine).
    Other rows are returned unchanged. Idempotent: settling settled rows changes nothing.

    Usage:
        >>> rows = pd.DataFrame({
        ...     "experiment_id": ["a", "a", "b", "b"], "analysis_date": "d", "window": "w",
        ...     "metric_id": "m", "variant": "2", "dimension": "country",
        ...     "statistic": ["heterogeneity", "segment_deviation"] * 2,
        ...     "segment": ["", "DE", "", "GB"], "p_value": [0.001, 0.0, 0.04, 0.01],
        ...     "p_value_adjusted": [0.001, None, 0.04, None],
        ...     "decision": ["heterogeneous", "flagged", "heterogeneous", "flagged"]})
        >>> out = settle_families(rows, 0.05)
        >>> out["decision"].tolist(), out["p_value_adjusted"].tolist()[::2]
        (['heterogeneous', 'flagged', 'heterogeneous', 'flagged'], [0.002, 0.04])
        >>> settle_families(rows, 0.03)["decision"].tolist()
        ['heterogeneous', 'flagged', 'homogeneous', 'candidate']
    """
    missing = [c for c in (*FAMILY_KEY, "statistic", "p_value", "decision") if c not in rows]
    if missing:
        raise AggregateError(f"results rows to settle lack columns {missing}")
    out = rows.copy()
    het = out["statistic"] == "heterogeneity"
    p = out.loc[het, "p_value"].to_numpy(float)
    adj = benjamini_hochberg(p[None, :])[0] if len(p) else p
    survives = np.isfinite(adj) & (adj <= alpha)
    out.loc[het, "p_value_adjusted"] = np.where(np.isfinite(p), adj, np.nan)
    out.loc[het, "decision"] = np.where(
        ~np.isfinite(p), NOT_TESTABLE, np.where(survives, HETEROGENEOUS, HOMOGENEOUS)
    )
    key = list(FAMILY_KEY)
    fam = out.loc[het, key].astype(str).assign(_survives=survives)
    dev = (out["statistic"] == "segment_deviation") & out["decision"].isin([FLAGGED, CANDIDATE])
    if dev.any():
        hit = out.loc[dev, key].astype(str).merge(fam, on=key, how="left")["_survives"]
        ok = hit.fillna(False).astype(bool).to_numpy()
        out.loc[dev, "decision"] = np.where(ok, FLAGGED, CANDIDATE)
    return out


# --- the evaluation -------------------------------------------------------------------------------


def _has_dimensions(metric) -> bool:
    texts = [metric.nominator, metric.denominator, metric.covariate]
    return any(t.dimensions for text in texts if text for t in parse_linear(text))


def _pseudo(frame: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    missing = [c for c in (*columns, *SEGMENT_COLUMNS) if c not in frame.columns]
    if missing:
        raise AggregateError(f"{what} is missing columns {missing} (has {list(frame.columns)})")
    out = frame[list(columns)].copy()
    out["exp_id"] = (
        frame["exp_id"].astype(str) + _SEP + frame["dimension"].astype(str) + _SEP
        + frame["segment"].fillna("").astype(str)
    )  # fmt: skip
    return out


def evaluate_segments(
    goals: pd.DataFrame,
    experiments: Sequence[ExperimentDesign | Mapping[str, Any]],
    cross: pd.DataFrame | None = None,
    analysis_date: date | None = None,
    config: EvaluationConfig | None = None,
    min_units: int = SEGMENT_MIN_UNITS,
) -> SegmentEvaluation:
    """Evaluate every metric per segment, adjust across segments, test heterogeneity.

    ``goals`` / ``cross``: the segment aggregates of one analysis date (``as_of_date`` dropped),
    with ``dimension`` and ``segment`` columns. Rows of experiments not listed are ignored.
    """
    config = config or EvaluationConfig()
    fixed = dataclasses.replace(config, sequential=False)
    exps = [
        e if isinstance(e, ExperimentDesign) else experiment_from_record(e) for e in experiments
    ]
    by_id = {e.experiment_id: e for e in exps}
    g = goals[goals["exp_id"].astype(str).isin(by_id)] if len(goals) else goals
    if not len(g):
        return _empty(config, analysis_date)
    capped = all(c in g.columns for c in CAP_COLUMNS)
    pg = _pseudo(
        g, KEY_COLUMNS + VALUE_COLUMNS + (CAP_COLUMNS if capped else ()), "segment aggregates"
    )
    pc = None
    if cross is not None and len(cross):
        c = cross[cross["exp_id"].astype(str).isin(by_id)]
        pc = _pseudo(c, CROSS_COLUMNS, "segment cross aggregates")
    keys = g[["exp_id", *SEGMENT_COLUMNS]].astype(str).drop_duplicates()
    pseudo: list[ExperimentDesign] = []
    segmentable = {  # per experiment, once: metrics without dimension filters (capped ones
        # where the aggregates carry the capped sums)
        e.experiment_id: tuple(
            m for m in e.metrics if not _has_dimensions(m) and (capped or m.cap is None)
        )
        for e in exps
    }
    for exp_id, dim, seg in keys.itertuples(index=False):  # design-sized: segments, not rows
        base = by_id[exp_id]
        metrics = segmentable[exp_id]
        if metrics:
            pid = exp_id + _SEP + dim + _SEP + seg
            pseudo.append(dataclasses.replace(base, experiment_id=pid, metrics=metrics))
    if not pseudo:
        return _empty(config, analysis_date)
    wanted = {p.experiment_id for p in pseudo}
    pg = pg[pg["exp_id"].isin(wanted)]
    ev = evaluate(pg, pseudo, pc, analysis_date=analysis_date, config=fixed)
    segments = _segment_frame(ev.metrics)
    segments, heterogeneity = _tests(segments, config, min_units)
    return SegmentEvaluation(segments, heterogeneity, config, analysis_date)


def _empty(config: EvaluationConfig, analysis_date: date | None) -> SegmentEvaluation:
    return SegmentEvaluation(
        pd.DataFrame(columns=[*_SEGMENT_OUT, "flagged", "candidate"]),
        pd.DataFrame(columns=_HET_OUT), config, analysis_date,
    )  # fmt: skip


_SEGMENT_OUT = (
    "exp_id", "dimension", "segment", "metric_id", "metric_name", "role", "variant",
    "variant_name", "control", "is_control", "count", "mean", "std", "abs_diff", "rel_diff",
    "rel_lower", "rel_upper", "p_value", "p_value_adjusted", "significant", "decision",
    "log_ratio", "log_ratio_se", "deviation", "deviation_p",
)  # fmt: skip
_HET_OUT = (
    "exp_id", "dimension", "metric_id", "metric_name", "role", "variant", "control", "segments",
    "q_stat", "df", "p_value", "p_value_adjusted", "heterogeneous", "flagged_segments",
)  # fmt: skip


def _segment_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    parts = metrics["exp_id"].str.split(_SEP, n=2, expand=True)
    out = metrics.copy()
    out["exp_id"], out["dimension"], out["segment"] = parts[0], parts[1], parts[2]
    return out


def _tests(
    m: pd.DataFrame, config: EvaluationConfig, min_units: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    alpha = config.alpha
    key = ["exp_id", "metric_id", "segment", "dimension"]
    ctrl = m[m["is_control"].astype(bool)][[*key, "mean", "std", "count"]]
    t = m[~m["is_control"].astype(bool)].merge(
        ctrl.rename(columns={"mean": "mean_c", "std": "std_c", "count": "count_c"}),
        on=key, how="left",
    )  # fmt: skip
    fam_cols = ["exp_id", "dimension", "metric_id", "variant"]
    fam = t.groupby(fam_cols, sort=True).ngroup().to_numpy()
    n_t, n_c = t["count"].to_numpy(float), t["count_c"].to_numpy(float)
    m_t, m_c = t["mean"].to_numpy(float), t["mean_c"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_t = t["std"].to_numpy(float) ** 2 / n_t
        a_c = t["std_c"].to_numpy(float) ** 2 / n_c
    lr, se = log_ratio(m_t, m_c, a_t, a_c)
    enters = np.isfinite(lr) & np.isfinite(se) & (se > 0) & (n_t >= min_units) & (n_c >= min_units)

    # multiplicity across the segments of a dimension: Holm per family on the segments' p-values
    p = t["p_value"].to_numpy(float)
    p_mat, pos = family_matrix(fam, p)
    p_adj = holm(p_mat)[fam, pos] if len(t) else p
    df_w = t["df"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = alpha * np.minimum(np.where(p_adj > 0, p / p_adj, 1.0), 1.0)
        crit = stats.t.isf(level / 2, df_w)
    lo, hi = fieller_relative(m_t, m_c, a_t, a_c, crit)
    significant = np.isfinite(p_adj) & (p_adj <= alpha)

    # heterogeneity per family, BH across the families (tests) of each experiment
    e_mat, _ = family_matrix(fam, np.where(enters, lr, np.nan))
    s_mat, _ = family_matrix(fam, np.where(enters, se, np.nan))
    q, q_df, q_p = cochran_q(e_mat, s_mat)
    fam_keys = t[fam_cols].assign(_f=fam).drop_duplicates("_f").sort_values("_f")
    exp_codes = pd.factorize(fam_keys["exp_id"])[0]
    if len(fam_keys):
        q_mat, q_pos = family_matrix(exp_codes, q_p)
        q_adj = benjamini_hochberg(q_mat)[exp_codes, q_pos]
    else:
        q_adj = q_p
    heterogeneous = np.isfinite(q_adj) & (q_adj <= alpha)

    dev, _, dev_p = deviation_from_rest(e_mat, s_mat)
    seg_dev, seg_dev_p = dev[fam, pos], dev_p[fam, pos]
    # candidates: the flags of every family that could survive a BH family (raw p <= alpha);
    # flagged where it survives this one (the night's family settles them: settle_families)
    cand_mat = flag_segments(e_mat, s_mat, np.isfinite(q_p) & (q_p <= alpha), alpha)
    flagged_mat = cand_mat & heterogeneous[:, None]
    flagged, candidate = flagged_mat[fam, pos], (cand_mat & ~flagged_mat)[fam, pos]

    decision = np.where(
        significant,
        np.where((m_t - m_c) * np.where(t["direction"] == "increase", 1, -1) > 0, "win", "loss"),
        "inconclusive",
    ).astype(object)
    decision = np.where(np.isfinite(p), decision, "insufficient_data")
    t = t.assign(
        p_value_adjusted=p_adj, rel_lower=lo, rel_upper=hi, significant=significant,
        decision=decision, log_ratio=lr, log_ratio_se=se, deviation=seg_dev,
        deviation_p=seg_dev_p, flagged=flagged, candidate=candidate,
    )  # fmt: skip
    c = m[m["is_control"].astype(bool)].assign(
        p_value_adjusted=np.nan, rel_lower=np.nan, rel_upper=np.nan, significant=False,
        decision=None, log_ratio=np.nan, log_ratio_se=np.nan, deviation=np.nan,
        deviation_p=np.nan, flagged=False, candidate=False,
    )  # fmt: skip
    segments = pd.concat([t, c], ignore_index=True)[[*_SEGMENT_OUT, "flagged", "candidate"]]
    segments = segments.sort_values(
        ["exp_id", "dimension", "metric_id", "segment", "variant"], kind="stable", ignore_index=True
    )
    flagged_by_fam = (
        pd.Series(t["segment"].to_numpy()[flagged], index=fam[flagged])
        .groupby(level=0).agg(lambda s: ",".join(sorted(s)))
    )  # fmt: skip
    f_idx = fam_keys["_f"].to_numpy()
    first = t.assign(_f=fam).drop_duplicates("_f").set_index("_f").loc[f_idx]
    het = pd.DataFrame(
        {
            "exp_id": fam_keys["exp_id"].to_numpy(),
            "dimension": fam_keys["dimension"].to_numpy(),
            "metric_id": fam_keys["metric_id"].to_numpy(),
            "metric_name": first["metric_name"].to_numpy(),
            "role": first["role"].to_numpy(),
            "variant": fam_keys["variant"].to_numpy(),
            "control": first["control"].to_numpy(),
            "segments": np.isfinite(e_mat).sum(axis=1)[f_idx],
            "q_stat": q[f_idx],
            "df": q_df[f_idx],
            "p_value": q_p[f_idx],
            "p_value_adjusted": q_adj,
            "heterogeneous": heterogeneous,
            "flagged_segments": pd.Series(f_idx).map(flagged_by_fam).fillna("").to_numpy(),
        }
    )
    return segments, het.reset_index(drop=True)
