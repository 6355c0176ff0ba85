"""The Iceberg results table through pyiceberg (no JVM): idempotent replacement per (experiment,
date, window), isolation of other experiments, and exact reproduction from recorded snapshots."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from strata.stats import evaluate, required_cross_terms
from strata.stats.aggregate import aggregate_arrays
from strata.stats.results import (
    RESULTS_SCHEMA,
    read_results,
    reproduce,
    results_frame,
    run_evaluation,
)

NAMESPACE = "stats_results_test"
DAY = date(2026, 3, 10)
METRICS = [
    {"id": "ctr", "name": "CTR", "role": "primary",
     "nominator": "count(user.unit.click)", "denominator": "count(user.unit.view)"},
    {"id": "views", "name": "views per user", "role": "guardrail",
     "nominator": "count(user.unit.view)", "denominator": "count(user.global.exposure)"},
]  # fmt: skip


def experiment_record(exp_id: str) -> dict:
    variants = [
        {"vid": 1001, "name": "Control", "is_control": True, "weight": 1, "start": 0,
         "end": 5000, "params": {}},
        {"vid": 1002, "name": "Treatment", "is_control": False, "weight": 1, "start": 5000,
         "end": 10000, "params": {}},
    ]  # fmt: skip
    return {
        "experiment_id": exp_id,
        "variants": json.dumps(variants),
        "metrics": json.dumps(METRICS),
        "start_date": date(2026, 3, 1),
        "end_date": date(2026, 3, 14),
    }


def aggregates(seed: int, exp_ids: list[str]):
    rng = np.random.default_rng(seed)
    shape = (len(exp_ids), 2, 300)
    views = 1.0 + rng.poisson(3.0, shape)
    clicks = rng.binomial(views.astype(int), 0.1 * np.array([1.0, 1.2])[None, :, None]) * 1.0
    exps = [experiment_record(e) for e in exp_ids]
    pairs = required_cross_terms(exps)[["term_x", "term_y"]].drop_duplicates()
    goals, cross = aggregate_arrays(
        exp_ids, [[1001, 1002]] * len(exp_ids), "user",
        {"view": (views, views), "click": (clicks, clicks)},
        list(pairs.itertuples(index=False, name=None)),
    )  # fmt: skip
    goals.insert(0, "as_of_date", DAY)
    goals["platform"] = ""
    cross.insert(0, "as_of_date", DAY)
    return goals, cross


@pytest.fixture(scope="module")
def catalog(settings):
    from strata.stack import iceberg_catalog

    cat = iceberg_catalog(settings)
    cat.create_namespace_if_not_exists(NAMESPACE)
    return cat


def put(catalog, name: str, frame: pd.DataFrame) -> int:
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    table = catalog.create_table_if_not_exists(f"{NAMESPACE}.{name}", schema=arrow.schema)
    table.overwrite(arrow)
    return table.current_snapshot().snapshot_id


def test_results_are_replaced_reproducible_and_isolated(catalog):
    exp_ids = ["exp_a", "exp_b"]
    put(catalog, "experiments", pd.DataFrame([experiment_record(e) for e in exp_ids]))
    goals, cross = aggregates(1, exp_ids)
    put(catalog, "goal_aggregates", goals)
    put(catalog, "goal_cross_aggregates", cross)

    ev, first = run_evaluation(catalog, exp_ids, DAY, namespace=NAMESPACE, run_id="run-1")
    stored = read_results(catalog, namespace=NAMESPACE)
    assert len(stored) == len(first) > 0
    assert set(stored["run_id"]) == {"run-1"}
    snaps = json.loads(stored["input_snapshots"].iloc[0])
    assert set(snaps) == {f"{NAMESPACE}.{t}" for t in
                          ("goal_aggregates", "goal_cross_aggregates", "experiments")}  # fmt: skip
    # the stored numbers are the engine's numbers
    ctr = stored.query(
        "experiment_id == 'exp_a' and metric_id == 'ctr' and statistic == 'abs_diff'"
    )
    direct = ev.metrics.query("exp_id == 'exp_a' and metric_id == 'ctr' and variant == '1002'")
    assert ctr["point"].iloc[0] == direct["abs_diff"].iloc[0]
    assert ctr["p_value"].iloc[0] == direct["p_value"].iloc[0]

    # a re-run of one experiment replaces exactly its rows, not the other experiment's
    run_evaluation(catalog, ["exp_a"], DAY, namespace=NAMESPACE, run_id="run-2")
    stored = read_results(catalog, namespace=NAMESPACE)
    assert len(stored) == len(first)
    assert set(stored.loc[stored["experiment_id"] == "exp_a", "run_id"]) == {"run-2"}
    assert set(stored.loc[stored["experiment_id"] == "exp_b", "run_id"]) == {"run-1"}

    # the aggregates are rebuilt with different numbers (a late-data re-run of dbt)
    new_goals, new_cross = aggregates(2, exp_ids)
    put(catalog, "goal_aggregates", new_goals)
    put(catalog, "goal_cross_aggregates", new_cross)
    before, again = reproduce(catalog, "exp_a", DAY, namespace=NAMESPACE)
    cols = ["metric_id", "variant", "statistic", "point", "lower", "upper", "p_value",
            "p_value_adjusted", "decision", "input_snapshots"]  # fmt: skip
    pd.testing.assert_frame_equal(before[cols], again[cols])  # exact, from the pinned snapshots
    _, fresh = run_evaluation(catalog, ["exp_a"], DAY, namespace=NAMESPACE, write=False)
    moved = fresh.set_index(["metric_id", "variant", "statistic"])["point"]
    kept = before.set_index(["metric_id", "variant", "statistic"])["point"]
    assert not np.allclose(moved.loc[kept.index].to_numpy(), kept.to_numpy(), equal_nan=True)


def test_results_frame_matches_schema_and_keeps_srm(catalog):
    goals, cross = aggregates(3, ["exp_c"])
    ev = evaluate(
        goals.drop(columns="as_of_date"), [experiment_record("exp_c")],
        cross=cross.drop(columns="as_of_date"), analysis_date=DAY,
    )  # fmt: skip
    frame = results_frame(ev, "r", {"t": 1})
    pa.Table.from_pandas(frame, schema=RESULTS_SCHEMA, preserve_index=False)  # validates types
    srm = frame[frame["statistic"] == "srm_chi2"]
    assert srm["decision"].tolist() == ["passed"]
    # control rows carry means, not comparisons; treatment rows carry both
    assert set(frame.loc[frame["variant"] == "1001", "statistic"]) == {"count", "mean", "std"}
    treat = frame[(frame["variant"] == "1002") & (frame["statistic"] == "rel_diff")]
    assert (treat["comparison"] == "1002 vs 1001").all()
    assert (treat["lower"] < treat["point"]).all()
    assert (treat["point"] < treat["upper"]).all()


def test_evaluable_by_date_lists_every_evaluable_day_oldest_first(catalog):
    from datetime import timedelta

    from strata.stats import evaluable_by_date, evaluable_experiments

    namespace = f"{NAMESPACE}_dates"
    catalog.create_namespace_if_not_exists(namespace)
    goals, _ = aggregates(4, ["exp_d"])
    days = [DAY + timedelta(days=d) for d in (2, 0, 1)]
    frame = pd.concat([goals.assign(as_of_date=d) for d in days], ignore_index=True)
    table = catalog.create_table_if_not_exists(
        f"{namespace}.goal_aggregates", schema=pa.Table.from_pandas(frame).schema
    )
    table.overwrite(pa.Table.from_pandas(frame, preserve_index=False))

    plan = evaluable_by_date(catalog, namespace=namespace)
    assert list(plan) == sorted(days)
    assert set(map(tuple, plan.values())) == {("exp_d",)}
    assert list(evaluable_by_date(catalog, DAY + timedelta(days=1), namespace)) == sorted(days)[:2]
    assert evaluable_experiments(catalog, None, namespace) == (["exp_d"], max(days))


def test_reproduce_refuses_an_expired_input_snapshot(catalog):
    """Table maintenance expires old snapshots: reproducing a result whose inputs are gone is
    a clear error naming the table and snapshot, never an evaluation of an empty table."""
    from strata.stats.errors import SnapshotExpiredError

    names = {
        "goals_table": "expiry_goals",
        "cross_table": "expiry_cross",
        "experiments_table": "expiry_experiments",
        "results_table": "expiry_results",
    }
    goals, cross = aggregates(5, ["exp_e"])
    old = put(catalog, names["goals_table"], goals)
    put(catalog, names["cross_table"], cross)
    put(catalog, names["experiments_table"], pd.DataFrame([experiment_record("exp_e")]))
    run_evaluation(catalog, ["exp_e"], DAY, namespace=NAMESPACE, **names)
    stored, again = reproduce(catalog, "exp_e", DAY, namespace=NAMESPACE, **names)
    assert len(stored) == len(again) > 0  # within the retention window

    new_goals, _ = aggregates(6, ["exp_e"])
    put(catalog, names["goals_table"], new_goals)  # a later run of dbt
    table = catalog.load_table(f"{NAMESPACE}.{names['goals_table']}")
    table.maintenance.expire_snapshots().by_id(old).commit()  # what maintenance does, later
    with pytest.raises(SnapshotExpiredError, match=rf"expiry_goals no longer has snapshot {old}"):
        reproduce(catalog, "exp_e", DAY, namespace=NAMESPACE, **names)


SEG_NAMESPACE = "stats_results_segments_test"


def segment_aggregates(seed: int, exp_id: str, lifts: dict[str, float]):
    """Per-country aggregates of one experiment; clicks lifted by ``lifts[country]``."""
    rng = np.random.default_rng(seed)
    exps = [experiment_record(exp_id)]
    pairs = list(required_cross_terms(exps)[["term_x", "term_y"]].itertuples(index=False))
    goals, cross = [], []
    for country, lift in lifts.items():
        views = 1.0 + rng.poisson(3.0, (1, 2, 2000))
        clicks = rng.binomial(views.astype(int), 0.1 * np.array([1.0, lift])[None, :, None]) * 1.0
        g, c = aggregate_arrays(
            [exp_id], [[1001, 1002]], "user",
            {"view": (views, views), "click": (clicks, clicks)}, [tuple(p) for p in pairs],
        )  # fmt: skip
        goals.append(g.assign(dimension="country", segment=country))
        cross.append(c.assign(dimension="country", segment=country))
    return (pd.concat(goals, ignore_index=True).assign(as_of_date=DAY),
            pd.concat(cross, ignore_index=True).assign(as_of_date=DAY))  # fmt: skip


def test_segment_rows_are_written_beside_the_overall_rows_and_reproduced(catalog):
    from strata.stats.results import SEGMENT_STATISTICS

    catalog.create_namespace_if_not_exists(SEG_NAMESPACE)

    def put_seg(name, frame):
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        table = catalog.create_table_if_not_exists(f"{SEG_NAMESPACE}.{name}", schema=arrow.schema)
        table.overwrite(arrow)

    put_seg("experiments", pd.DataFrame([experiment_record("exp_s")]))
    goals, cross = aggregates(4, ["exp_s"])
    put_seg("goal_aggregates", goals)
    put_seg("goal_cross_aggregates", cross)
    seg_goals, seg_cross = segment_aggregates(5, "exp_s", {"US": 1.0, "GB": 1.0, "DE": 1.5})
    put_seg("goal_segment_aggregates", seg_goals)
    put_seg("goal_segment_cross_aggregates", seg_cross)

    _, frame = run_evaluation(catalog, ["exp_s"], DAY, namespace=SEG_NAMESPACE, run_id="seg")
    overall = frame[frame["dimension"].isna()]
    assert not set(SEGMENT_STATISTICS) & set(overall["statistic"])
    seg = frame[frame["dimension"].notna()]
    assert set(seg["statistic"]) == set(SEGMENT_STATISTICS)
    het = seg[seg["statistic"] == "heterogeneity"].set_index("metric_id")
    assert het.loc["ctr", "decision"] == "heterogeneous"
    assert het.loc["ctr", "segment"] == ""
    flagged = seg[seg["decision"] == "flagged"]
    assert flagged[["metric_id", "segment", "variant"]].values.tolist() == [["ctr", "DE", "1002"]]
    counts = seg[seg["statistic"] == "segment_count"]
    assert set(counts["segment"]) == {"US", "GB", "DE"}
    assert (counts["point"] == 2000).all()
    stored = read_results(catalog, namespace=SEG_NAMESPACE)
    assert len(stored) == len(frame)
    snaps = json.loads(stored["input_snapshots"].iloc[0])
    assert f"{SEG_NAMESPACE}.goal_segment_aggregates" in snaps

    before, again = reproduce(catalog, "exp_s", DAY, namespace=SEG_NAMESPACE)
    cols = ["metric_id", "variant", "statistic", "dimension", "segment", "point", "p_value",
            "p_value_adjusted", "decision"]  # fmt: skip
    pd.testing.assert_frame_equal(before[cols], again[cols])


NIGHT_NAMESPACE = "stats_results_night_test"


def test_settle_night_adjusts_across_the_nights_experiments_in_one_commit(catalog):
    """Two experiments of one night in a real Iceberg table: exp_s (DE planted, evaluated) and
    exp_t (its rows with heterogeneity p-values 0.04 and 0.045: heterogeneous on its own, BH over
    its 2 tests). Across the night's 4 tests exp_t's do not survive: its flag becomes a
    candidate. Only that date's segment-test rows are rewritten, in one commit; again: no commit."""
    from pyiceberg.expressions import EqualTo

    from strata.stats.results import settle_night, write_results
    from strata.stats.segments import settle_families

    catalog.create_namespace_if_not_exists(NIGHT_NAMESPACE)

    def put_night(name, frame):
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        ident = f"{NIGHT_NAMESPACE}.{name}"
        catalog.create_table_if_not_exists(ident, schema=arrow.schema).overwrite(arrow)

    put_night("experiments", pd.DataFrame([experiment_record("exp_s")]))
    goals, cross = aggregates(4, ["exp_s"])
    put_night("goal_aggregates", goals)
    put_night("goal_cross_aggregates", cross)
    seg_goals, seg_cross = segment_aggregates(5, "exp_s", {"US": 1.0, "GB": 1.0, "DE": 1.5})
    put_night("goal_segment_aggregates", seg_goals)
    put_night("goal_segment_cross_aggregates", seg_cross)
    _, frame = run_evaluation(catalog, ["exp_s"], DAY, namespace=NIGHT_NAMESPACE, run_id="s")

    het = frame["statistic"] == "heterogeneity"
    assert frame.loc[het, "p_value"].min() < 1e-6  # the planted DE: survives any family here
    t = frame.assign(experiment_id="exp_t", run_id="t")
    t.loc[het & (t["metric_id"] == "ctr"), "p_value"] = 0.04
    t.loc[het & (t["metric_id"] == "views"), "p_value"] = 0.045
    t = settle_families(t, 0.05)  # per experiment: what its own evaluation would have written
    assert (t.loc[het, "decision"] == "heterogeneous").all()
    assert (t["decision"] == "flagged").sum() == 1
    earlier = t.assign(analysis_date=date(2026, 3, 9))  # another night: untouched
    write_results(catalog, pd.concat([t, earlier], ignore_index=True), namespace=NIGHT_NAMESPACE)
    table = catalog.load_table(f"{NIGHT_NAMESPACE}.results")
    before = read_results(catalog, namespace=NIGHT_NAMESPACE)
    snapshots = len(table.snapshots())

    settled = settle_night(catalog, DAY, NIGHT_NAMESPACE)
    table = catalog.load_table(f"{NIGHT_NAMESPACE}.results")
    assert len(table.snapshots()) == snapshots + 2  # one overwrite: its delete and its append
    after = read_results(catalog, namespace=NIGHT_NAMESPACE)
    assert (settled.experiments, settled.tests) == (2, 4)
    assert settled.changed > 0
    key = ["experiment_id", "analysis_date", "metric_id", "variant", "statistic", "dimension",
           "segment"]  # fmt: skip
    b = before.sort_values(key, ignore_index=True, na_position="first")
    a = after.sort_values(key, ignore_index=True, na_position="first")
    assert len(a) == len(b)
    tests = ["heterogeneity", "segment_deviation"]
    night = (b["analysis_date"] == DAY) & b["statistic"].isin(tests)
    pd.testing.assert_frame_equal(a[~night], b[~night])  # every other row as it was
    expected = settle_families(b[night], 0.05)
    pd.testing.assert_frame_equal(a[night], expected)
    tt = a[(a["experiment_id"] == "exp_t") & (a["analysis_date"] == DAY)]
    assert set(tt.loc[tt["statistic"] == "heterogeneity", "decision"]) == {"homogeneous"}
    assert (tt["decision"] == "candidate").sum() == 1
    assert (tt["decision"] == "flagged").sum() == 0
    ss = a[(a["experiment_id"] == "exp_s") & (a["decision"] == "flagged")]
    assert ss[["metric_id", "segment"]].values.tolist() == [["ctr", "DE"]]
    old = table.scan(row_filter=EqualTo("analysis_date", "2026-03-09")).to_pandas()
    assert (old["decision"] == "flagged").sum() == 1

    again = settle_night(catalog, DAY, NIGHT_NAMESPACE)
    assert again.changed == 0
    assert len(catalog.load_table(f"{NIGHT_NAMESPACE}.results").snapshots()) == snapshots + 2
    pd.testing.assert_frame_equal(
        read_results(catalog, namespace=NIGHT_NAMESPACE).sort_values(
            key, ignore_index=True, na_position="first"
        ),
        a,
    )
