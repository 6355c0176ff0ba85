"""`make demo`: run the demo DAG on the embedded stack with `dag.test()`, then print a summary.

Airflow's task logs go to <STRATA_HOME>/logs/demo-dag.log; the terminal gets progress and results.
Sizes come from the environment: DEMO_USERS (default 100000), DEMO_DAYS (14), DEMO_SEED (7).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The demo's DAGs, in order; each runs with dag.test() in its own process (as a worker would).
DAG_IDS = ("run_demo", "build_goal_aggregates", "evaluate_experiments")


def dag_conf(dag_id: str, demo: dict[str, int]) -> dict | None:
    """The run conf of each demo DAG. run_demo regenerates the raw events, so the incremental
    models are rebuilt from all of them (not merged over the previous demo's rows), and every
    day of the window is evaluated, as nightly runs would have done (the effect-over-time plots).
    """
    import datetime as dt

    from strata.synthetic import DEFAULT_START_DATE

    last_day = DEFAULT_START_DATE + dt.timedelta(days=demo["days"] - 1)
    return {
        "run_demo": demo,
        "build_goal_aggregates": {"full_refresh": True, "as_of_date": last_day.isoformat()},
        "evaluate_experiments": {"history": True},
    }.get(dag_id)


def run_dag(dag_id: str, conf: dict | None) -> int:
    """Run the DAG in-process (called in a child so its logs can go to a file)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState, TaskInstanceState

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    run = bag.get_dag(dag_id).test(run_conf=conf)
    # A run whose last task ran "all done" succeeds although a task before it failed (one
    # experiment's evaluation, say): the demo fails on any failed task, named.
    failed = sorted(
        ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
        for ti in run.get_task_instances(
            state=[TaskInstanceState.FAILED, TaskInstanceState.UPSTREAM_FAILED]
        )
    )
    if failed:
        print(f"DAG {dag_id}: failed tasks {failed}", file=sys.stderr)
    return 0 if run.state == DagRunState.SUCCESS and not failed else 1


def summary() -> None:
    from strata.config import get_settings
    from strata.contracts import RAW_EVENTS, SYNTHETIC_TABLES
    from strata.stack import iceberg_catalog
    from strata_apps.health import raw_events_profile, redis_round_trip

    settings = get_settings()
    catalog = iceberg_catalog(settings)
    print(
        f"\nIceberg tables in {settings.catalog_name}.{settings.namespace} "
        f"(read back through pyiceberg, no JVM; catalog {settings.catalog_db_path}):"
    )
    for name in SYNTHETIC_TABLES:
        table = catalog.load_table(f"{settings.namespace}.{name}")
        snapshot = table.current_snapshot()
        rows = snapshot.summary["total-records"] if snapshot and snapshot.summary else "?"
        print(
            f"  {name:<12} {int(rows):>12,} rows   "
            f"snapshot {snapshot.snapshot_id if snapshot else '-'}"
        )
    events = catalog.load_table(f"{settings.namespace}.{RAW_EVENTS}").scan().to_arrow()
    print("\nRaw events: what the events pipeline must clean up")
    for key, value in raw_events_profile(events).items():
        print(f"  {key:<32} {value:>10,}")
    print_assignments(catalog, settings)
    print_publication(catalog, settings)
    print_aggregates(catalog, settings)
    print_results(catalog, settings)
    rt = redis_round_trip(settings)
    print(
        f"\nRedis {rt['redis_version']} at {settings.redis_url}: authenticated round trip "
        f"{rt['round_trip_ms']:.2f} ms"
    )


def print_assignments(catalog, settings) -> None:
    """Units per experiment and variant, read from the Iceberg assignments table (no JVM)."""
    table = catalog.load_table(f"{settings.namespace}.assignments")
    props = table.properties
    rows = (
        table.scan(selected_fields=("experiment_id", "variant_name", "variant_id", "unit_type"))
        .to_arrow()
        .group_by(["experiment_id", "variant_id", "variant_name", "unit_type"])
        .aggregate([("variant_id", "count")])
        .sort_by([("experiment_id", "ascending"), ("variant_id", "ascending")])
        .to_pylist()
    )
    print(
        f"\nAssignments (definitions {props.get('strata.definitions-version')}, "
        f"run {props.get('strata.run-id')}): units per experiment and variant"
    )
    print(f"  {'experiment':<18} {'variant':<12} {'vid':>5} {'unit':<10} {'units':>9}")
    for r in rows:
        print(
            f"  {r['experiment_id']:<18} {r['variant_name']:<12} {r['variant_id']:>5} "
            f"{r['unit_type']:<10} {r['variant_id_count']:>9,}"
        )


def print_publication(catalog, settings) -> None:
    """The newest Redis publication and the sample requests the endpoint served."""
    import json

    pubs = catalog.load_table(f"{settings.namespace}.publications").scan().to_pandas()
    last = pubs.sort_values("published_at").iloc[-1]
    print(
        f"\nRedis lookup table: version {last['version']} {last['state']}, {last['rows']:,} "
        f"assignment rows in {last['duration_s']:.1f} s (write {last['write_s']:.1f} s, "
        f"verify {last['verify_s']:.1f} s)"
    )
    samples = settings.home / "logs" / "demo-samples.json"
    if samples.exists():
        print("Sample device-register requests served by the endpoint (POST /v1/device/register):")
        for answer in json.loads(samples.read_text()):
            print(
                f"  device {answer['device_id']} user {answer['user_id']}: "
                f"{', '.join(answer['experiments']) or '(no experiment)'}"
            )


def print_aggregates(catalog, settings) -> None:
    """Exposed units per experiment and variant at the newest analysis date."""
    goals = catalog.load_table(f"{settings.namespace}.goal_aggregates").scan().to_pandas()
    rejects = catalog.load_table(f"{settings.namespace}.stg_events__rejects").scan().to_pandas()
    if goals.empty:
        print("\ngoal_aggregates is empty")
        return
    day = goals["as_of_date"].max()
    exposed = goals[(goals["as_of_date"] == day) & (goals["goal"] == "exposure")]
    print(
        f"\nGoal aggregates (dbt): {len(goals):,} rows; exposed units as of {day}; "
        f"{len(rejects):,} raw rows quarantined by reason "
        f"{rejects['reject_reason'].value_counts().to_dict()}"
    )
    for r in exposed.sort_values(["exp_id", "exp_variant_id"]).itertuples():
        print(f"  {r.exp_id:<18} vid {r.exp_variant_id:>5} {r.count_unique:>9,}")


def print_results(catalog, settings) -> None:
    """The evaluation's verdicts: relative effect, its interval at the decision's (adjusted) level,
    the adjusted p-value and the decision, per metric; then CUPED's variance reduction and the
    recommendation per experiment."""
    from strata.stats import read_results

    res = read_results(catalog, namespace=settings.namespace)
    rel = res[(res["statistic"] == "rel_diff")].sort_values(["experiment_id", "metric_id"])
    looks = rel.groupby("experiment_id")["analysis_date"].nunique().max()
    # each experiment's latest look (the table holds one per day: the effect-over-time curves)
    latest = rel.groupby("experiment_id")["analysis_date"].transform("max")
    rel = rel[rel["analysis_date"] == latest]
    print(
        f"\nEvaluation as of {res['analysis_date'].max()}, the latest of up to {looks} daily looks "
        f"(Iceberg results; HTML reports in {settings.home / 'reports' / 'index.html'}):"
    )
    print(
        f"  {'experiment':<18} {'metric':<16} {'variant':<12} {'effect':>8} "
        f"{'CI (adjusted)':>19} {'p adj':>7}  decision"
    )
    for r in rel.itertuples():
        interval = (
            f"[{r.lower:>+7.1%}, {r.upper:>+7.1%}]"
            if r.lower == r.lower and r.upper == r.upper  # NaN: the ratio is not estimable
            else f"{'not estimable':>18}"
        )
        print(
            f"  {r.experiment_id:<18} {r.metric_id:<16} {r.variant:<12} {r.point:>+8.1%} "
            f"{interval} {r.p_value_adjusted:>7.4f}  {r.decision}"
        )
    vr = res[res["statistic"] == "variance_reduction"]
    vr = vr[vr["analysis_date"] == vr.groupby("experiment_id")["analysis_date"].transform("max")]
    for r in vr.sort_values(["experiment_id", "metric_id", "variant"]).itertuples():
        print(
            f"  CUPED {r.experiment_id} {r.metric_id} variant {r.variant}: "
            f"variance reduced by {r.point:.1%}"
        )
    print_recommendations(res)
    print_capping(catalog, settings)
    from strata.synthetic import PLANTED_EFFECTS

    print(
        "  planted: "
        + "; ".join(f"{e.experiment_id} {e.goal} x{e.multiplier}" for e in PLANTED_EFFECTS)
        + "; price_display is A/A (no effect)"
    )
    print_segments(res)


def print_segments(res) -> None:
    """The segment analysis at each experiment's latest look: how many heterogeneity tests
    (dimension × metric × comparison) ran and survived BH, and every flagged segment."""
    from strata.synthetic import PLANTED_SEGMENT_EFFECT as planted

    if "dimension" not in res.columns:
        return
    seg = res[res["dimension"].notna()]
    seg = seg[
        seg["analysis_date"] == seg.groupby("experiment_id")["analysis_date"].transform("max")
    ]
    het = seg[seg["statistic"] == "heterogeneity"]
    if het.empty:
        print("\nSegments: no segment aggregates for the latest looks")
        return
    dims = sorted(set(seg["dimension"]))
    tested = het["p_value"].notna().sum()
    print(
        f"\nSegments ({', '.join(dims)}; one dimension at a time): {tested} heterogeneity tests "
        f"(treatment × segment, Cochran's Q), {int((het['decision'] == 'heterogeneous').sum())} "
        "survive BH across the night; flagged segments:"
    )
    key = ["experiment_id", "metric_id", "variant", "dimension", "segment"]
    flagged = seg[(seg["statistic"] == "segment_deviation") & (seg["decision"] == "flagged")]
    effects = seg[seg["statistic"] == "segment_rel_diff"].merge(flagged[key], on=key)
    het_q = het.set_index(["experiment_id", "metric_id", "variant", "dimension"])
    for r in effects.sort_values(key).itertuples():
        q = het_q.loc[(r.experiment_id, r.metric_id, r.variant, r.dimension)]
        label = f"{r.dimension}={r.segment}"
        print(
            f"  {r.experiment_id:<18} {r.metric_id:<16} {r.variant:<6} {label:<18} "
            f"{r.point:>+8.1%} [{r.lower:>+7.1%}, {r.upper:>+7.1%}] p adj {r.p_value_adjusted:.4f}"
            f"  (Q {q['point']:.1f}, BH p {q['p_value_adjusted']:.4f})"
        )
    if effects.empty:
        print("  (none)")
    dim, value = planted.segment or ("", "")
    print(
        f"  planted segment effect: {planted.experiment_id} {planted.goal} x{planted.multiplier} "
        f"in {dim}={value} only (variant {planted.variant}); no other segment effect planted"
    )


def print_recommendations(res) -> None:
    """One line per experiment, from its latest ``__recommendation__`` row: the decision (ship,
    dont_ship, keep_running, invalid) and its one-sentence reason."""
    from strata.stats.results import RECOMMENDATION_METRIC_ID

    top = res[res["metric_id"] == RECOMMENDATION_METRIC_ID]
    top = top[
        top["analysis_date"] == top.groupby("experiment_id")["analysis_date"].transform("max")
    ]
    for r in top.sort_values("experiment_id").itertuples():
        print(f"  recommend {r.experiment_id}: {r.decision} — {r.reason}")


def print_capping(catalog, settings) -> None:
    """Each capped metric's variance change from capping (winsorization), pooled over variants,
    from goal_aggregates at the experiment's newest analysis date."""
    import json

    from strata.metrics import Cap, capped_term, metric_forms
    from strata.stats.inputs import capped_variances

    goals = catalog.load_table(f"{settings.namespace}.goal_aggregates").scan().to_pandas()
    experiments = catalog.load_table(f"{settings.namespace}.experiments").scan().to_pandas()
    if "value_cap" not in goals.columns:
        return
    for exp in experiments.sort_values("experiment_id").itertuples():
        for m in json.loads(exp.metrics or "[]"):
            if not m.get("cap"):
                continue
            term = capped_term(metric_forms(m["nominator"], m["denominator"]))
            rows = goals[goals["exp_id"] == exp.experiment_id]
            if rows.empty:
                continue
            day = rows["as_of_date"].max()
            v = capped_variances(rows[rows["as_of_date"] == day].drop(columns="as_of_date"))
            platform = dict(term.dimensions).get("platform", "")
            v = v[(v["goal"] == term.goal) & (v["platform"] == platform)]
            if v.empty:
                continue
            cap = Cap.from_json(m["cap"])
            how = f"p{cap.percentile * 100:g}" if cap.percentile is not None else "fixed"
            print(
                f"  capping {exp.experiment_id}/{m['id']}: variance "
                f"{v['var_capped'].sum() / v['var'].sum() - 1:+.1%} "
                f"(cap {v['value_cap'].iloc[0]:,.2f}, {how}, as of {day})"
            )


def main() -> int:
    conf = {
        "users": int(os.environ.get("DEMO_USERS", 100_000)),
        "days": int(os.environ.get("DEMO_DAYS", 14)),
        "seed": int(os.environ.get("DEMO_SEED", 7)),
    }
    from strata.config import get_settings

    logs = get_settings().home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for dag_id in DAG_IDS:
        log = logs / f"demo-{dag_id}.log"
        print(f"Running DAG {dag_id} with dag.test() (Airflow log: {log}) ...", flush=True)
        started = time.monotonic()
        with log.open("w") as out:
            rc = subprocess.call(
                [sys.executable, __file__, "--run-dag", dag_id, repr(dag_conf(dag_id, conf))],
                # dag.test() cannot handle a DAG deadline (scripts/airflow.sh runs keep theirs)
                env={**os.environ, "STRATA_RESULTS_DEADLINE_HOURS": "0"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        elapsed = time.monotonic() - started
        if rc != 0:
            print(
                f"DAG {dag_id} FAILED after {elapsed:.0f} s. Last lines of {log}:", file=sys.stderr
            )
            print("".join(log.read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
            return rc
        print(f"DAG {dag_id}: success in {elapsed:.0f} s", flush=True)
    summary()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--run-dag":
        import ast

        sys.exit(run_dag(sys.argv[2], ast.literal_eval(sys.argv[3])))
    sys.exit(main())
