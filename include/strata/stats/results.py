"""The long ``results`` table in Iceberg, written and read with pyiceberg (no JVM).

One row per experiment × analysis date × window × metric × variant × statistic (``count``,
``mean``, ``std``; for treatments ``abs_diff``, ``rel_diff`` with their adjusted intervals (which
agree with the decision), ``abs_diff_unadjusted``, ``rel_diff_unadjusted`` (level alpha, agree
with ``p_value``) and ``mde``; for
metrics with a CUPED covariate ``variance_reduction``, 1 − Var_cuped / Var_raw of each variant;
for treatments the Bayesian view, see :data:`BAYES_STATISTICS`; per treatment × guardrail metric
``guardrail`` (ok / violated / inconclusive) and per experiment one ``__recommendation__`` row
(ship / dont_ship / keep_running / invalid), both with their one-sentence ``reason``, see
:func:`recommendation_rows`). Segment rows (from ``goal_segment_aggregates``,
:mod:`strata.stats.segments`) carry ``dimension`` and ``segment`` and statistics of their own
(:data:`SEGMENT_STATISTICS`); the overall rows have both null.
Each run fully replaces the rows of its (experiment, analysis_date, window) keys with one
overwrite commit, so re-runs are idempotent. Every row records the run id and the Iceberg
snapshot ids of the input tables it read (``input_snapshots``, JSON ``{"table": snapshot_id}``),
so :func:`reproduce` can re-evaluate against exactly those snapshots.

Entry points for the CLI / DAG: :func:`run_evaluation` (``strata evaluate EXP --date D``) and
:func:`read_results` (``strata report EXP``).

Usage:
    >>> RESULTS_SCHEMA.names[:6]
    ['experiment_id', 'analysis_date', 'window', 'metric_id', 'metric_name', 'role']
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from strata import contracts
from strata.stats.engine import (
    CROSS_COLUMNS,
    DATE_COLUMN,
    KEY_COLUMNS,
    SRM_COHORTS,
    VALUE_COLUMNS,
    Evaluation,
    evaluate,
    verdicts,
)
from strata.stats.errors import AggregateError, DesignError, SnapshotExpiredError
from strata.stats.models import EvaluationConfig, ExperimentDesign, experiment_from_record
from strata.stats.recommend import recommend
from strata.stats.segments import (
    CANDIDATE,
    FLAGGED,
    SegmentEvaluation,
    evaluate_segments,
    settle_families,
)

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

RESULTS_TABLE = contracts.RESULTS
GOALS_TABLE = contracts.GOAL_AGGREGATES
CROSS_TABLE = contracts.GOAL_CROSS_AGGREGATES
SEGMENT_GOALS_TABLE = contracts.GOAL_SEGMENT_AGGREGATES
SEGMENT_CROSS_TABLE = contracts.GOAL_SEGMENT_CROSS_AGGREGATES
COHORT_GOALS_TABLE = contracts.GOAL_COHORT_AGGREGATES
COHORT_CROSS_TABLE = contracts.GOAL_COHORT_CROSS_AGGREGATES
EXPERIMENTS_TABLE = contracts.EXPERIMENTS
#: Column of the aggregate tables that selects the analysis date (cumulative window).
AS_OF_COLUMN = DATE_COLUMN
CUMULATIVE_WINDOW = "cumulative"
#: "2": the ``reason`` column (recommendation and guardrail rows) was added; "3": the
#: ``dimension`` and ``segment`` columns (segment rows).
SCHEMA_VERSION = "3"
SRM_METRIC_ID = "__srm__"
VERDICT_METRIC_ID = "__verdict__"
RECOMMENDATION_METRIC_ID = "__recommendation__"

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("analysis_date", pa.date32(), nullable=False),
        pa.field("window", pa.string(), nullable=False),
        pa.field("metric_id", pa.string(), nullable=False),
        pa.field("metric_name", pa.string()),
        pa.field("role", pa.string()),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("comparison", pa.string()),
        pa.field("statistic", pa.string(), nullable=False),
        pa.field("point", pa.float64()),
        pa.field("lower", pa.float64()),
        pa.field("upper", pa.float64()),
        pa.field("p_value", pa.float64()),
        pa.field("p_value_adjusted", pa.float64()),
        pa.field("decision", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("input_snapshots", pa.string(), nullable=False),
        pa.field("evaluated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("schema_version", pa.string(), nullable=False),
        # why: the one-sentence reason of recommendation and guardrail rows; null on the others
        pa.field("reason", pa.string()),
        # segment rows: the dimension and its segment (null on the overall rows); added in place
        # to a table written before segments (strata.stack.evolve_schema)
        pa.field("dimension", pa.string()),
        pa.field("segment", pa.string()),
    ]
)
#: Statistics of the segment rows (docs/statistics.md, "Segments"):
#: ``segment_count`` units per variant; ``segment_rel_diff`` the segment's relative effect, its
#: Fieller interval at the level of its adjusted decision, p-value and Holm-adjusted p-value across
#: the dimension's segments; ``segment_deviation`` its log-ratio difference from the other
#: segments' pooled effect, decision ``flagged`` for a flagged segment (``candidate``: would be
#: flagged if its family's test survived); ``heterogeneity`` (segment '') Cochran's Q of the
#: dimension, its p-value and BH-adjusted p-value across the experiment's heterogeneity tests
#: (across the night's, once :func:`settle_night` ran), decision ``heterogeneous`` /
#: ``homogeneous`` / ``not_testable``.
SEGMENT_STATISTICS = ("segment_count", "segment_rel_diff", "segment_deviation", "heterogeneity")

#: (statistic, point column, lower column, upper column, treatment rows only, with p-values)
_STATISTICS = (
    ("count", "count", None, None, False, False),
    ("mean", "mean", None, None, False, False),
    ("std", "std", None, None, False, False),
    ("abs_diff", "abs_diff", "abs_lower_adjusted", "abs_upper_adjusted", True, True),
    ("rel_diff", "rel_diff", "rel_lower_adjusted", "rel_upper_adjusted", True, True),
    ("abs_diff_unadjusted", "abs_diff", "abs_lower", "abs_upper", True, True),
    ("rel_diff_unadjusted", "rel_diff", "rel_lower", "rel_upper", True, True),
    ("mde", "mde", None, None, True, False),
    ("variance_reduction", "variance_reduction", None, None, False, False),
)
#: Statistics stored only for metrics evaluated with CUPED: 1 - Var_cuped / Var_raw per variant.
_CUPED_STATISTICS = ("variance_reduction",)
#: Intervals at level alpha that agree with ``p_value`` (no adjusted p-value, no decision); the
#: ``abs_diff`` / ``rel_diff`` rows carry the adjusted intervals that agree with the decision.
_UNADJUSTED_STATISTICS = ("abs_diff_unadjusted", "rel_diff_unadjusted")
#: The Bayesian view (strata.stats.bayes), treatment rows only, no p-values or decision:
#: statistic -> (point column, lower column, upper column). ``bayes_rel_diff`` (or
#: ``bayes_abs_diff`` with ``bayes_scale="absolute"``) is the posterior mean of the effect with
#: its credible interval; the others are points. Rows only: the table's schema is unchanged.
BAYES_STATISTICS = {
    "bayes_rel_diff": ("bayes_effect", "bayes_lower", "bayes_upper"),
    "prob_beat_control": ("prob_beat_control", None, None),
    "expected_loss_treatment": ("expected_loss_treatment", None, None),
    "expected_loss_control": ("expected_loss_control", None, None),
}


def results_frame(
    evaluation: Evaluation,
    run_id: str,
    input_snapshots: Mapping[str, int | None],
    window: str = CUMULATIVE_WINDOW,
    evaluated_at: datetime | None = None,
) -> pd.DataFrame:
    """Turn an :class:`Evaluation` into long results rows (metric statistics and SRM)."""
    if evaluation.analysis_date is None:
        raise DesignError("results need an analysis date (evaluate(..., analysis_date=...))")
    m = evaluation.metrics
    parts = []
    for stat, point, lower, upper, treatment_only, tested in _STATISTICS:  # vectorised each
        rows = m[~m["is_control"]] if treatment_only else m
        if stat in _CUPED_STATISTICS:
            rows = rows[rows["cuped"].astype(bool)]
        parts.append(
            pd.DataFrame(
                {
                    "experiment_id": rows["exp_id"],
                    "metric_id": rows["metric_id"].astype(str),
                    "metric_name": rows["metric_name"],
                    "role": rows["role"],
                    "variant": rows["variant"],
                    "comparison": np.where(
                        rows["is_control"], "", rows["variant"] + " vs " + rows["control"]
                    ),
                    "statistic": stat,
                    "point": rows[point].astype(float),
                    "lower": rows[lower].astype(float) if lower else np.nan,
                    "upper": rows[upper].astype(float) if upper else np.nan,
                    "p_value": rows["p_value"].astype(float) if tested else np.nan,
                    "p_value_adjusted": rows["p_value_adjusted"].astype(float)
                    if tested and stat not in _UNADJUSTED_STATISTICS
                    else np.nan,
                    "decision": rows["decision"]
                    if tested and stat not in _UNADJUSTED_STATISTICS
                    else None,
                }
            )
        )
    bayes = bayes_rows(m, evaluation.config.bayes_scale)
    if not bayes.empty:
        parts.append(bayes)
    v = verdicts(m)
    control = m.drop_duplicates("exp_id").set_index("exp_id")["control"]
    parts.append(
        pd.DataFrame(
            {
                "experiment_id": v["exp_id"],
                "metric_id": VERDICT_METRIC_ID,
                "metric_name": "verdict",
                "role": "verdict",
                "variant": v["variant"],
                "comparison": v["variant"] + " vs " + v["exp_id"].map(control),
                "statistic": "verdict",
                "point": np.nan,
                "lower": np.nan,
                "upper": np.nan,
                "p_value": np.nan,
                "p_value_adjusted": np.nan,
                "decision": v["verdict"],
            }
        )
    )
    parts.extend(recommendation_rows(evaluation))
    srm = evaluation.srm
    parts.append(
        pd.DataFrame(
            {
                "experiment_id": srm["exp_id"],
                "metric_id": SRM_METRIC_ID,
                "metric_name": np.where(
                    srm["method"].eq(SRM_COHORTS) if "method" in srm else False,
                    "sample ratio mismatch by ramp cohort (",
                    "sample ratio mismatch (",
                )
                + srm["unit_type"]
                + ")",
                "role": "check",
                "variant": "",
                "comparison": "",
                "statistic": "srm_chi2",
                "point": srm["chi2"].astype(float),
                "lower": np.nan,
                "upper": np.nan,
                "p_value": srm["p_value"].astype(float),
                "p_value_adjusted": np.nan,
                "decision": np.where(srm["passed"], "passed", "failed"),
            }
        )
    )
    out = pd.concat(parts, ignore_index=True)
    if "reason" not in out:
        out["reason"] = None
    out["reason"] = out["reason"].astype(object).where(out["reason"].notna(), None)
    out.insert(1, "analysis_date", evaluation.analysis_date)
    out.insert(2, "window", window)
    out["run_id"] = run_id
    out["input_snapshots"] = json.dumps(dict(sorted(input_snapshots.items())))
    out["evaluated_at"] = pd.Timestamp(evaluated_at or datetime.now(UTC))
    out["schema_version"] = SCHEMA_VERSION
    out["dimension"] = None
    out["segment"] = None
    return out[RESULTS_SCHEMA.names].sort_values(
        ["experiment_id", "metric_id", "variant", "statistic"], kind="stable", ignore_index=True
    )


def _deviation_decision(t: pd.DataFrame) -> np.ndarray:
    flagged = t["flagged"].astype(bool).to_numpy()
    cand = t["candidate"].astype(bool).to_numpy() if "candidate" in t else np.zeros_like(flagged)
    out = np.full(len(flagged), None, dtype=object)
    out[cand] = CANDIDATE
    out[flagged] = FLAGGED
    return out


def segment_results_frame(
    seg: SegmentEvaluation,
    run_id: str,
    input_snapshots: Mapping[str, int | None],
    window: str = CUMULATIVE_WINDOW,
    evaluated_at: datetime | None = None,
) -> pd.DataFrame:
    """Long results rows of a segment evaluation (:data:`SEGMENT_STATISTICS`)."""
    if seg.analysis_date is None:
        raise DesignError("segment results need an analysis date")
    s, h = seg.segments, seg.heterogeneity
    if s.empty:
        return pd.DataFrame(columns=RESULTS_SCHEMA.names)
    t = s[~s["is_control"].astype(bool)]
    comparison = t["variant"] + " vs " + t["control"]

    def rows(frame, comparison, statistic, point, lower, upper, p, p_adj, decision, segment):
        return pd.DataFrame(
            {
                "experiment_id": frame["exp_id"], "metric_id": frame["metric_id"].astype(str),
                "metric_name": frame["metric_name"], "role": frame["role"],
                "variant": frame["variant"], "comparison": comparison, "statistic": statistic,
                "point": point, "lower": lower, "upper": upper, "p_value": p,
                "p_value_adjusted": p_adj, "decision": decision,
                "dimension": frame["dimension"], "segment": segment,
            }
        )  # fmt: skip

    nan = np.nan
    het_decision = np.where(
        ~np.isfinite(h["p_value"].astype(float)), "not_testable",
        np.where(h["heterogeneous"].astype(bool), "heterogeneous", "homogeneous"),
    )  # fmt: skip
    parts = [
        rows(s, np.where(s["is_control"].astype(bool), "", s["variant"] + " vs " + s["control"]),
             "segment_count", s["count"].astype(float), nan, nan, nan, nan, None, s["segment"]),
        rows(t, comparison, "segment_rel_diff", t["rel_diff"].astype(float),
             t["rel_lower"].astype(float), t["rel_upper"].astype(float),
             t["p_value"].astype(float), t["p_value_adjusted"].astype(float), t["decision"],
             t["segment"]),
        rows(t, comparison, "segment_deviation", t["deviation"].astype(float), nan, nan,
             t["deviation_p"].astype(float), nan,
             _deviation_decision(t), t["segment"]),
        rows(h, h["variant"] + " vs " + h["control"], "heterogeneity", h["q_stat"].astype(float),
             nan, nan, h["p_value"].astype(float), h["p_value_adjusted"].astype(float),
             het_decision, ""),
    ]  # fmt: skip
    out = pd.concat(parts, ignore_index=True)
    out.insert(1, "analysis_date", seg.analysis_date)
    out.insert(2, "window", window)
    out["run_id"] = run_id
    out["input_snapshots"] = json.dumps(dict(sorted(input_snapshots.items())))
    out["evaluated_at"] = pd.Timestamp(evaluated_at or datetime.now(UTC))
    out["schema_version"] = SCHEMA_VERSION
    out["reason"] = None
    return out[RESULTS_SCHEMA.names].sort_values(
        ["experiment_id", "metric_id", "variant", "statistic", "dimension", "segment"],
        kind="stable", ignore_index=True,
    )  # fmt: skip


def recommendation_rows(evaluation: Evaluation) -> list[pd.DataFrame]:
    """The guardrail rows (``statistic='guardrail'``, per treatment × guardrail metric: the
    adjusted relative interval and ``decision`` ok / violated / inconclusive) and one
    ``__recommendation__`` row per experiment (``decision`` ship / dont_ship / keep_running /
    invalid, ``point`` the units per variant still needed when keeping it running), each with its
    ``reason`` (:mod:`strata.stats.recommend`)."""
    m, config = evaluation.metrics, evaluation.config
    if m.empty:
        return []
    rec = recommend(m, evaluation.srm, evaluation.days_run, config.power, config.srm_alpha)
    g, r = rec.guardrails, rec.recommendations
    guard = pd.DataFrame(
        {
            "experiment_id": g["exp_id"],
            "metric_id": g["metric_id"],
            "metric_name": g["metric_name"],
            "role": "guardrail",
            "variant": g["variant"],
            "comparison": g["variant"] + " vs " + g["control"],
            "statistic": "guardrail",
            "point": g["effect"].astype(float),
            "lower": g["lower"].astype(float),
            "upper": g["upper"].astype(float),
            "p_value": g["p_value"].astype(float),
            "p_value_adjusted": g["p_value_adjusted"].astype(float),
            "decision": g["outcome"],
            "reason": g["reason"],
        }
    )
    top = pd.DataFrame(
        {
            "experiment_id": r["exp_id"],
            "metric_id": RECOMMENDATION_METRIC_ID,
            "metric_name": "recommendation",
            "role": "recommendation",
            "variant": r["variant"],
            "comparison": np.where(r["variant"] != "", r["variant"] + " vs " + r["control"], ""),
            "statistic": "recommendation",
            "point": r["units_needed"].astype(float),
            "lower": np.nan,
            "upper": np.nan,
            "p_value": np.nan,
            "p_value_adjusted": np.nan,
            "decision": r["recommendation"],
            "reason": r["reason"],
        }
    )
    return [guard, top]


def bayes_rows(metrics: pd.DataFrame, scale: str = "relative") -> pd.DataFrame:
    """Long results rows of the Bayesian view (:data:`BAYES_STATISTICS`) of the treatment rows.

    ``scale`` names the effect statistic: ``bayes_rel_diff`` or ``bayes_abs_diff``. An evaluation
    without the Bayesian columns (an older engine's frame) gives no rows.
    """
    names = [c for spec in BAYES_STATISTICS.values() for c in spec if c]
    t = metrics[~metrics["is_control"].astype(bool)] if len(metrics) else metrics
    if t.empty or any(c not in t.columns for c in names):
        return pd.DataFrame(columns=RESULTS_SCHEMA.names)
    effect = "bayes_abs_diff" if scale == "absolute" else "bayes_rel_diff"
    comparison = t["variant"] + " vs " + t["control"]
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "experiment_id": t["exp_id"],
                    "metric_id": t["metric_id"].astype(str),
                    "metric_name": t["metric_name"],
                    "role": t["role"],
                    "variant": t["variant"],
                    "comparison": comparison,
                    "statistic": effect if stat == "bayes_rel_diff" else stat,
                    "point": t[point].astype(float),
                    "lower": t[lower].astype(float) if lower else np.nan,
                    "upper": t[upper].astype(float) if upper else np.nan,
                    "p_value": np.nan,
                    "p_value_adjusted": np.nan,
                    "decision": None,
                }
            )
            for stat, (point, lower, upper) in BAYES_STATISTICS.items()
        ],
        ignore_index=True,
    )


#: Evaluations of different experiments (Airflow's mapped tasks) commit to the one table at
#: once; a commit that loses the race is retried on the new snapshot (pyiceberg re-applies its
#: delete-and-append), so each replaces only its own rows. pyiceberg's default, 4 retries, runs
#: out with half a dozen concurrent writers (tests/strata/stats/test_results_concurrent.py).
COMMIT_RETRY_PROPERTIES = {
    "commit.retry.num-retries": "20",
    "commit.retry.min-wait-ms": "100",
    "commit.retry.max-wait-ms": "4000",
    "commit.retry.total-timeout-ms": "120000",
}


def _identifier(catalog: Catalog, name: str, namespace: str) -> str:
    return name if "." in name else f"{namespace}.{name}"


def write_results(
    catalog: Catalog, frame: pd.DataFrame, table: str = RESULTS_TABLE, namespace: str = "strata"
) -> int | None:
    """Replace the rows of every (experiment, analysis_date, window) in ``frame`` in one commit.

    Creates the namespace and table if needed; a table written by a previous version is evolved
    in place to the current schema first (:func:`strata.stack.evolve_schema`: missing columns
    added, nothing dropped). Returns the new snapshot id.
    """
    from pyiceberg.expressions import And, EqualTo, Or

    from strata.stack import evolve_schema

    ident = _identifier(catalog, table, namespace)
    catalog.create_namespace_if_not_exists(ident.rsplit(".", 1)[0])
    tbl = catalog.create_table_if_not_exists(
        ident, schema=RESULTS_SCHEMA, properties=COMMIT_RETRY_PROPERTIES
    )
    if any(tbl.properties.get(k) != v for k, v in COMMIT_RETRY_PROPERTIES.items()):
        with tbl.transaction() as tx:  # a table written before these properties existed
            tx.set_properties(COMMIT_RETRY_PROPERTIES)
    evolve_schema(tbl, RESULTS_SCHEMA)
    arrow = pa.Table.from_pandas(frame, schema=RESULTS_SCHEMA, preserve_index=False)
    keys = frame[["experiment_id", "analysis_date", "window"]].drop_duplicates()
    filters = [
        And(
            EqualTo("experiment_id", e),
            And(EqualTo("analysis_date", d.isoformat()), EqualTo("window", w)),
        )
        for e, d, w in keys.itertuples(index=False)
    ]
    overwrite_filter = filters[0]
    for f in filters[1:]:
        overwrite_filter = Or(overwrite_filter, f)
    tbl.overwrite(arrow, overwrite_filter=overwrite_filter)
    snap = tbl.current_snapshot()
    return snap.snapshot_id if snap else None


@dataclass(frozen=True)
class NightSettlement:
    """What :func:`settle_night` did for one analysis date: ``tests`` heterogeneity tests of
    ``experiments`` experiments in the family, ``heterogeneous`` of them survive, ``flagged``
    segments; ``changed`` rows rewritten (0: nothing to change, no commit)."""

    analysis_date: date
    experiments: int
    tests: int
    heterogeneous: int
    flagged: int
    changed: int


def settle_night(
    catalog: Catalog,
    analysis_date: date,
    namespace: str = "strata",
    alpha: float | None = None,
    table: str = RESULTS_TABLE,
    window: str = CUMULATIVE_WINDOW,
) -> NightSettlement:
    """Control the false discovery rate of the segment flags across the whole night: BH over the
    heterogeneity tests of *every* experiment evaluated at ``analysis_date``
    (:func:`strata.stats.segments.settle_families`), rewriting only those experiments'
    ``heterogeneity`` and ``segment_deviation`` rows of that date, in one overwrite commit, and
    only when something changed (running it twice gives the same rows, one commit at most).

    Run it after every evaluation of the date has been written (the DAG's ``write_reports``,
    the end of :func:`strata.stats.nightly.evaluate_night`), never beside a running one: its
    overwrite replaces the rows it read. Without a results table, or segment rows that day,
    it does nothing.
    """
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import And, EqualTo, In

    alpha = EvaluationConfig().alpha if alpha is None else alpha
    statistics = ["heterogeneity", "segment_deviation"]
    try:
        tbl = catalog.load_table(_identifier(catalog, table, namespace))
    except NoSuchTableError:
        return NightSettlement(analysis_date, 0, 0, 0, 0, 0)
    row_filter = And(
        EqualTo("analysis_date", analysis_date.isoformat()),
        And(EqualTo("window", window), In("statistic", statistics)),
    )
    arrow = tbl.scan(row_filter=row_filter).to_arrow()
    rows = arrow.to_pandas()
    if rows.empty or "dimension" not in rows:
        return NightSettlement(analysis_date, 0, 0, 0, 0, 0)
    settled = settle_families(rows, alpha)
    het = settled["statistic"] == "heterogeneity"
    cols = ["p_value_adjusted", "decision"]
    before, after = rows[cols], settled[cols]
    same = (before.isna() & after.isna()) | (before == after)
    changed = int((~same.all(axis=1)).sum())
    ids = sorted(set(settled["experiment_id"]))
    if changed:
        schema = tbl.schema().as_arrow()
        frame = settled[schema.names]
        tbl.overwrite(
            pa.Table.from_pandas(frame, schema=schema, preserve_index=False),
            overwrite_filter=And(row_filter, In("experiment_id", ids)),
        )
    return NightSettlement(
        analysis_date, len(ids), int(het.sum()),
        int((settled.loc[het, "decision"] == "heterogeneous").sum()),
        int(((settled["statistic"] == "segment_deviation")
             & (settled["decision"] == FLAGGED)).sum()),
        changed,
    )  # fmt: skip


def read_results(
    catalog: Catalog,
    experiment_id: str | None = None,
    table: str = RESULTS_TABLE,
    namespace: str = "strata",
) -> pd.DataFrame:
    """All stored results (of one experiment if given), as a DataFrame."""
    from pyiceberg.expressions import AlwaysTrue, EqualTo

    tbl = catalog.load_table(_identifier(catalog, table, namespace))
    row_filter = EqualTo("experiment_id", experiment_id) if experiment_id else AlwaysTrue()
    return tbl.scan(row_filter=row_filter).to_pandas()


@dataclass
class Inputs:
    """What one evaluation read: the frames and the snapshot id of each table."""

    goals: pd.DataFrame
    cross: pd.DataFrame | None
    experiments: list[ExperimentDesign]
    snapshots: dict[str, int | None]
    #: The segment aggregates of the date (None: no segment table, or no rows that day).
    segment_goals: pd.DataFrame | None = None
    segment_cross: pd.DataFrame | None = None
    #: The ramp-cohort aggregates of the date (None: no cohort table, or no ramped experiment).
    cohort_goals: pd.DataFrame | None = None
    cohort_cross: pd.DataFrame | None = None


def _scan(
    catalog, ident: str, row_filter, snapshot_id: int | None
) -> tuple[pd.DataFrame, int | None]:
    tbl = catalog.load_table(ident)
    if snapshot_id is None:
        snap = tbl.current_snapshot()
        snapshot_id = snap.snapshot_id if snap else None
    elif tbl.snapshot_by_id(snapshot_id) is None:
        # pyiceberg would scan an unknown snapshot as an empty table: refuse instead
        raise SnapshotExpiredError(
            f"{ident} no longer has snapshot {snapshot_id}: table maintenance expired it "
            "(snapshots older than STRATA_MAINTENANCE_SNAPSHOT_DAYS are dropped, except the last "
            "STRATA_MAINTENANCE_KEEP_SNAPSHOTS); a result is reproducible within that window only"
        )
    if snapshot_id is None:
        return tbl.schema().as_arrow().empty_table().to_pandas(), None
    return tbl.scan(row_filter=row_filter, snapshot_id=snapshot_id).to_pandas(), snapshot_id


def read_inputs(
    catalog: Catalog,
    experiment_ids: Sequence[str],
    analysis_date: date,
    namespace: str = "strata",
    goals_table: str = GOALS_TABLE,
    cross_table: str | None = CROSS_TABLE,
    experiments_table: str = EXPERIMENTS_TABLE,
    snapshots: Mapping[str, int | None] | None = None,
    segment_goals_table: str | None = SEGMENT_GOALS_TABLE,
    segment_cross_table: str | None = SEGMENT_CROSS_TABLE,
    cohort_goals_table: str | None = COHORT_GOALS_TABLE,
    cohort_cross_table: str | None = COHORT_CROSS_TABLE,
) -> Inputs:
    """Read the aggregates of ``analysis_date`` (and the designs) at pinned or current snapshots.

    The ``as_of_date`` column selects the cumulative window and is dropped; every other
    non-standard column of the aggregates is a dimension. A missing cross table is allowed (the
    engine then fails clearly if a metric needs it). The segment tables are optional: missing
    (a stack built before segments), or without rows for the date, there is no segment analysis.
    So are the ramp-cohort tables (``goal_cohort_aggregates``): without rows for these
    experiments and date, every experiment is evaluated pooled.
    """
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import And, EqualTo, In

    snapshots = dict(snapshots or {})
    ids = [str(i) for i in experiment_ids]
    got: dict[str, int | None] = {}
    g_ident = _identifier(catalog, goals_table, namespace)
    flt = And(In("exp_id", ids), EqualTo(AS_OF_COLUMN, analysis_date.isoformat()))
    goals, got[g_ident] = _scan(catalog, g_ident, flt, snapshots.get(g_ident))
    goals = goals.drop(columns=[AS_OF_COLUMN])
    cross = None
    if cross_table:
        c_ident = _identifier(catalog, cross_table, namespace)
        try:
            cross, got[c_ident] = _scan(catalog, c_ident, flt, snapshots.get(c_ident))
            cross = cross[list(CROSS_COLUMNS)]
        except NoSuchTableError:
            if c_ident in snapshots:
                raise
    e_ident = _identifier(catalog, experiments_table, namespace)
    exp_frame, got[e_ident] = _scan(
        catalog, e_ident, In("experiment_id", ids), snapshots.get(e_ident)
    )
    records = exp_frame.to_dict("records")
    missing = sorted(set(ids) - {str(r["experiment_id"]) for r in records})
    if missing:
        raise AggregateError(f"experiments not found in {e_ident}: {missing}")
    refuse_per_request(records)
    _require(goals, g_ident)
    seg_frames: list[pd.DataFrame | None] = []
    tables = (segment_goals_table, segment_cross_table, cohort_goals_table, cohort_cross_table)
    for name in tables:
        frame = None
        if name:
            ident = _identifier(catalog, name, namespace)
            try:
                frame, got[ident] = _scan(catalog, ident, flt, snapshots.get(ident))
                frame = frame.drop(columns=[AS_OF_COLUMN])
            except NoSuchTableError:
                if ident in snapshots:
                    raise
        seg_frames.append(frame if frame is not None and len(frame) else None)
    return Inputs(goals, cross, [experiment_from_record(r) for r in records], got, *seg_frames)


def refuse_per_request(records: Sequence[Mapping[str, Any]]) -> None:
    """A :class:`DesignError` naming the experiments randomised per request (seed 003's
    ``random``): they have no unit, so no per-unit metric, variance or SRM test exists for them.

    Usage:
        >>> refuse_per_request([{"experiment_id": "e1", "unit_type": "user_id"}])
        >>> refuse_per_request([{"experiment_id": "banner", "unit_type": "random"}])
        Traceback (most recent call last):
        ...
        strata.stats.errors.DesignError: banner: a random (per-request) experiment is not ...
    """
    for r in records:
        if r.get("unit_type") in contracts.PER_REQUEST_UNIT_TYPES:
            raise DesignError(
                f"{r['experiment_id']}: a {r['unit_type']} (per-request) experiment is not "
                "analysable per unit: each request draws its variant afresh, so no unit carries "
                "one variant (its requests per variant are counted instead: the endpoint's "
                "strata_endpoint_random_served_total, checked by random_split)"
            )


def _require(goals: pd.DataFrame, ident: str) -> None:
    missing = [c for c in (*KEY_COLUMNS, *VALUE_COLUMNS) if c not in goals.columns]
    if missing:
        raise AggregateError(f"{ident} lacks columns {missing}")


def run_evaluation(
    catalog: Catalog,
    experiment_ids: Sequence[str],
    analysis_date: date,
    namespace: str = "strata",
    config: EvaluationConfig | None = None,
    run_id: str | None = None,
    snapshots: Mapping[str, int | None] | None = None,
    write: bool = True,
    **tables: Any,
) -> tuple[Evaluation, pd.DataFrame]:
    """Read inputs, evaluate, and (by default) replace the results of these experiments and date.

    This is ``strata evaluate EXP --date D``. ``tables`` may rename ``goals_table``,
    ``cross_table``, ``experiments_table``; ``results_table`` names the output.
    """
    results_table = tables.pop("results_table", RESULTS_TABLE)
    inputs = read_inputs(
        catalog, experiment_ids, analysis_date, namespace, snapshots=snapshots, **tables
    )
    evaluation = evaluate(
        inputs.goals, inputs.experiments, inputs.cross, analysis_date=analysis_date, config=config,
        cohorts=inputs.cohort_goals, cohort_cross=inputs.cohort_cross,
    )  # fmt: skip
    run_id, now = run_id or uuid.uuid4().hex, datetime.now(UTC)
    frame = results_frame(evaluation, run_id, inputs.snapshots, evaluated_at=now)
    if inputs.segment_goals is not None:
        segments = evaluate_segments(
            inputs.segment_goals, inputs.experiments, inputs.segment_cross,
            analysis_date=analysis_date, config=config,
        )  # fmt: skip
        seg_rows = segment_results_frame(segments, run_id, inputs.snapshots, evaluated_at=now)
        if len(seg_rows):
            frame = pd.concat([frame, seg_rows], ignore_index=True)
    if write:
        write_results(catalog, frame, results_table, namespace)
    return evaluation, frame


def evaluable_experiments(
    catalog: Catalog, analysis_date: date | None = None, namespace: str = "strata"
) -> tuple[list[str], date | None]:
    """What a nightly run evaluates: every experiment with aggregates, at the newest date.

    ``analysis_date`` defaults to the newest ``as_of_date`` in ``goal_aggregates``. An experiment
    is evaluable when it has aggregates for that date (it has started and units were exposed).
    """
    from pyiceberg.expressions import EqualTo

    goals = catalog.load_table(_identifier(catalog, GOALS_TABLE, namespace))
    if analysis_date is None:
        dates = goals.scan(selected_fields=(AS_OF_COLUMN,)).to_arrow()[AS_OF_COLUMN]
        if len(dates) == 0:
            return [], None
        analysis_date = max(dates.to_pylist())
    rows = goals.scan(
        row_filter=EqualTo(AS_OF_COLUMN, analysis_date.isoformat()), selected_fields=("exp_id",)
    ).to_arrow()
    return sorted(set(rows["exp_id"].to_pylist())), analysis_date


def evaluable_by_date(
    catalog: Catalog, until: date | None = None, namespace: str = "strata"
) -> dict[date, list[str]]:
    """Every ``as_of_date`` with aggregates (up to ``until`` when given), oldest first, with the
    experiments evaluable at it; one scan of two columns.

    Evaluating each of them in order rebuilds the results' history, e.g. the cumulative effect
    curves after a backfill or a full refresh of the aggregates.
    """
    goals = catalog.load_table(_identifier(catalog, GOALS_TABLE, namespace))
    rows = goals.scan(selected_fields=(AS_OF_COLUMN, "exp_id")).to_arrow()
    by_date: dict[date, set[str]] = {}
    for day, exp_id in zip(rows[AS_OF_COLUMN].to_pylist(), rows["exp_id"].to_pylist(), strict=True):
        if until is None or day <= until:
            by_date.setdefault(day, set()).add(exp_id)
    return {day: sorted(by_date[day]) for day in sorted(by_date)}


def reproduce(
    catalog: Catalog,
    experiment_id: str,
    analysis_date: date,
    window: str = CUMULATIVE_WINDOW,
    namespace: str = "strata",
    config: EvaluationConfig | None = None,
    **tables: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Re-evaluate a stored result against the input snapshots it recorded.

    Returns ``(stored, recomputed)`` results rows, sorted alike, for comparison.
    """
    results_table = tables.pop("results_table", RESULTS_TABLE)
    stored = read_results(catalog, experiment_id, results_table, namespace)
    stored = stored[(stored["analysis_date"] == analysis_date) & (stored["window"] == window)]
    if stored.empty:
        raise AggregateError(
            f"no stored results for {experiment_id!r} on {analysis_date} ({window})"
        )
    snapshots = json.loads(stored["input_snapshots"].iloc[0])
    _, recomputed = run_evaluation(
        catalog, [experiment_id], analysis_date, namespace, config,
        run_id=stored["run_id"].iloc[0], snapshots=snapshots, write=False, **tables,
    )  # fmt: skip
    order = ["experiment_id", "metric_id", "variant", "statistic", "dimension", "segment"]
    for frame in (stored, recomputed):  # overall rows: null dimension and segment
        for col in ("dimension", "segment"):
            frame[col] = frame[col].where(frame[col].notna(), None) if col in frame else None
    stored = stored.sort_values(order, kind="stable", ignore_index=True, na_position="first")
    recomputed = recomputed.sort_values(
        order, kind="stable", ignore_index=True, na_position="first"
    )
    return stored, recomputed
