"""Strata's Airflow tasks: one body per stage step, shared by the production and demo DAGs.

DAG files only wire these together. Every body imports its heavy libraries (pyspark, pyiceberg,
dbt, GX, scipy) when it runs, returns its counts (the task's XCom, shown in the UI) and logs one
summary line. Tasks that start a Spark session run in the ``spark`` pool (:data:`SPARK_POOL`),
so concurrent runs never start more Spark sessions than the machine was sized for.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, cast

from airflow.sdk import get_current_context, task

from orchestration.assets import GOAL_AGGREGATES, RAW_EVENTS, RESULTS
from orchestration.defaults import SPARK_POOL
from orchestration.links import GATE_REPORT_KEY, gate_task, reported_task
from orchestration.runconf import (
    RunConfError,
    check_conf_keys,
    latest_extra,
    parse_date,
    scheduled_as_of,
)
from strata import contracts

log = logging.getLogger("strata")


def _check_conf() -> dict[str, Any]:
    """The run's conf, after refusing keys the DAG does not declare; returns the params."""
    context = get_current_context()
    dag_run = context["dag_run"]
    check_conf_keys(getattr(dag_run, "conf", None), context["dag"].params.keys())
    return dict(context["params"])


# --- demo: synthetic data ---------------------------------------------------------------------


@task
def check_redis() -> dict:
    """An authenticated round trip to the lookup server before anything is written."""
    from strata_apps.health import redis_round_trip

    result = redis_round_trip()
    log.info("redis %s: round trip %.2f ms", result["redis_version"], result["round_trip_ms"])
    return result


@task(pool=SPARK_POOL)
def generate_data() -> dict:
    """Synthetic orgs, users, devices and raw events (Spark) into Iceberg."""
    from spark_jobs.generate_synthetic import main

    params = _check_conf()
    counts = main(
        [
            "--users", str(params["users"]),
            "--days", str(params["days"]),
            "--seed", str(params["seed"]),
            "--start-date", str(params["start_date"]),
        ]
    )  # fmt: skip
    log.info("generated: %s", ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return counts


@task
def verify_tables(spark_counts: dict) -> dict:
    """Spark and pyiceberg (no JVM) must read the same row counts."""
    from strata.errors import DataError
    from strata_apps.health import iceberg_row_counts

    py_counts = iceberg_row_counts(list(spark_counts))
    if py_counts != spark_counts:
        raise DataError(f"Spark and pyiceberg disagree: spark={spark_counts} pyiceberg={py_counts}")
    return py_counts


# --- assignment ----------------------------------------------------------------------------


@task
def validate_definitions(path: str | None = None) -> dict:
    """Validate the definitions (one ``file: path: message`` line per problem on failure)."""
    from strata_apps.assignment_tasks import validate

    params = _check_conf()
    if path is None:
        path = params.get("definitions_path")
    if path is None:
        from strata.definitions import bundled_path

        path = str(bundled_path())
    summary = validate(path)
    log.info(
        "definitions %s: %d experiments (%d running) in %d layers",
        summary["version"],
        summary["experiments"],
        summary["running"],
        summary["layers"],
    )
    return summary


@task(pool=SPARK_POOL)
def assign_units(summary: dict, as_of: str | None = None) -> dict:
    """Targeting and layered assignment in Spark; one Iceberg commit of assignments+experiments.

    Only experiments inside their window on the day ``as_of`` get units (the demo: the synthetic
    data's first day); default the run's logical date, else today UTC.
    """
    from strata_apps.assignment_tasks import assign

    day = parse_date(as_of, "as_of")
    if day is None:
        logical = get_current_context().get("logical_date")
        day = logical.date() if logical is not None else contracts.utc_today()
    result = assign(summary["path"], day.isoformat())
    units: dict[str, int] = {}
    for exp, _variant, _vid, n in result["counts"]:
        units[exp] = units.get(exp, 0) + n
    log.info("assigned: %s", ", ".join(f"{e} {n:,}" for e, n in sorted(units.items())))
    return {
        "definitions_version": result["definitions_version"],
        "run_id": result["run_id"],
        "units_per_experiment": units,
        "rows": sum(units.values()),
        "warnings": result["warnings"],
        "as_of": result["as_of"],
        "outside_window": result["outside_window"],
    }


@task
def publish_lookups(assigned: dict, as_of: str | None = None) -> dict:
    """Publish the assignments into Redis as a new version, verify, flip (or keep the live one).

    ``as_of`` (the demo: the synthetic data's last day, since its experiments ended before the
    real today) is the day whose running experiments are served; default today.
    """
    from lookup_loader.loader import publish

    day = parse_date(as_of, "as_of")
    result = publish(as_of=day)
    log.info(
        "publication %s %s: %s rows, units %s, excluded %s",
        result.version,
        result.state,
        f"{result.rows:,}",
        result.units,
        result.excluded_rows,
    )
    return {
        "version": result.version,
        "state": result.state,
        "rows": result.rows,
        "units": result.units,
        "experiments": result.experiments,
        "excluded_rows": result.excluded_rows,
        "duration_s": round(result.duration_s, 2),
    }


@task(outlets=[RAW_EVENTS])
def serve_sample_requests(published: dict) -> dict:
    """Sample device-register requests through the reference endpoint (their LOG events land),
    then announce the demo's new raw events to the events DAG (the ``raw_events`` asset).
    """
    import json

    from strata.config import get_settings
    from strata_apps.demo import serve_samples

    params = _check_conf()
    answers = serve_samples(n=5)
    out = get_settings().home / "logs" / "demo-samples.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(answers, indent=1))
    start = cast(dt.date, parse_date(params["start_date"], "start_date"))  # a param with a default
    last_day = start + dt.timedelta(days=int(params["days"]) - 1)
    # The demo replaced every raw event: the events DAG rebuilds its incremental models as of
    # the data's last day, and the evaluation then re-evaluates every day (both read this).
    get_current_context()["outlet_events"][RAW_EVENTS].extra = {
        "as_of_date": last_day.isoformat(),
        "full_refresh": True,
    }
    log.info("served %d sample requests; raw events announced as of %s", len(answers), last_day)
    return {"samples": answers, "as_of_date": last_day.isoformat()}


# --- events: exposures, gates, dbt ------------------------------------------------------------


@task(multiple_outputs=True)
def plan_events_run() -> dict:
    """Resolve the run's as-of date and refresh mode; fail at once if that date has no events.

    The date comes from the ``as_of_date`` param, else the triggering ``raw_events`` asset event,
    else the day a scheduled (or backfilled) run stands for; a manual run without a date takes
    the newest day of events.
    """
    from strata.config import get_settings
    from strata.stack import iceberg_catalog

    params = _check_conf()
    context = get_current_context()
    extra = latest_extra(context.get("triggering_asset_events"), RAW_EVENTS.uri)
    settings = get_settings()
    catalog = iceberg_catalog(settings)
    days = _event_days(catalog, settings.namespace)
    if not days:
        raise RunConfError(f"no raw events in {settings.namespace}.{contracts.RAW_EVENTS}")
    as_of = (
        parse_date(params.get("as_of_date"), "as_of_date")
        or parse_date(extra.get("as_of_date"), "raw_events asset event as_of_date")
        or (scheduled_as_of(context) if _run_type(context) in ("scheduled", "backfill") else None)
    )
    if as_of is None:
        as_of = max(days)
    if as_of not in days:
        raise RunConfError(
            f"as_of_date {as_of}: no raw events that day (events cover {min(days)} .. {max(days)})"
        )
    full_refresh = bool(params.get("full_refresh")) or bool(extra.get("full_refresh"))
    log.info("events run: as of %s, full refresh %s", as_of, full_refresh)
    return {"as_of_date": as_of.isoformat(), "full_refresh": full_refresh}


def _run_type(context) -> str:
    run_type = getattr(context["dag_run"], "run_type", "")
    return str(getattr(run_type, "value", run_type))


def _event_days(catalog, namespace: str) -> set[dt.date]:
    """The days with raw events: from the partitions when the table is partitioned by day of
    ``event_at`` (as the generator writes it; no data file is read), else from the column."""
    import pyarrow.compute as pc
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = catalog.load_table(f"{namespace}.{contracts.RAW_EVENTS}")
    except NoSuchTableError:
        raise RunConfError(
            f"no raw events yet: {namespace}.{contracts.RAW_EVENTS} does not exist"
        ) from None
    schema = table.schema()
    by_day = [
        f.name
        for f in table.spec().fields
        if str(f.transform) == "day" and schema.find_field(f.source_id).name == "event_at"
    ]
    if by_day:
        epoch = dt.date(1970, 1, 1)
        parts = table.inspect.partitions().column("partition").to_pylist()
        values = (row.get(by_day[0]) for row in parts)
        return {
            v if isinstance(v, dt.date) else epoch + dt.timedelta(days=int(v))
            for v in values
            if v is not None
        }
    stamps = table.scan(selected_fields=("event_at",)).to_arrow()["event_at"]
    return set(pc.unique(pc.cast(pc.drop_null(stamps), "date32")).to_pylist())


@task(pool=SPARK_POOL)
def ingest_exposure_logs() -> dict:
    """The endpoint's LOG events (JSON lines) merged into Iceberg; bad lines quarantined."""
    from dataclasses import asdict

    from spark_jobs.ingest_exposure_logs import main

    result = asdict(main([]))
    log.info("exposure logs: %s", result)
    return result


@gate_task(pool=SPARK_POOL)
def check_suite(suite: str) -> dict:
    """Great Expectations gate: fails (and stops everything downstream) when the suite fails.

    The report path is recorded before the verdict, so the task's "Data quality report" link
    opens it also when the gate fails.
    """
    from expectations.gate import check
    from strata.config import get_settings
    from strata.errors import DataError

    result = check(suite, raise_on_failure=False)
    root = get_settings().home / "expectations" / "reports"
    report = str(result.report_path.relative_to(root))
    get_current_context()["ti"].xcom_push(key=GATE_REPORT_KEY, value=report)
    log.info(result.summary())
    if not result.success:
        failed = "; ".join(
            f"{f['expectation']} ({f['unexpected_count']} rows)" for f in result.failed
        )
        raise DataError(f"expectation suite {suite} failed: {failed}; report {result.report_path}")
    return {"suite": suite, "expectations": result.evaluated, "report": report}


@task(outlets=[GOAL_AGGREGATES])
def summarize_events(plan: dict) -> dict:
    """Rows per dbt model and quarantined events by reason; emits the ``goal_aggregates`` event.

    The asset event carries the as-of date (and whether the models were rebuilt), which the
    evaluation reads: asset-triggered runs have no logical date of their own.
    """
    from strata.config import get_settings
    from strata.stack import iceberg_catalog

    settings = get_settings()
    catalog = iceberg_catalog(settings)
    rows = _model_row_counts(catalog, settings.namespace)
    rejects = _rejects_by_reason(catalog, settings.namespace)
    log.info(
        "events as of %s: %s; quarantined %s",
        plan["as_of_date"],
        ", ".join(f"{m} {n:,}" for m, n in rows.items()),
        ", ".join(f"{r} {n:,}" for r, n in rejects.items()) or "none",
    )
    get_current_context()["outlet_events"][GOAL_AGGREGATES].extra = {
        "as_of_date": plan["as_of_date"],
        "full_refresh": bool(plan["full_refresh"]),
    }
    return {"as_of_date": plan["as_of_date"], "rows_per_model": rows, "quarantined": rejects}


#: The dbt models whose row counts an events run reports (tables; views have no snapshot).
DBT_TABLES = contracts.DBT_TABLES


def _model_row_counts(catalog, namespace: str) -> dict[str, int]:
    """Rows of each dbt table, from its current snapshot's summary (no data file is read)."""
    counts = {}
    for name in DBT_TABLES:
        snapshot = catalog.load_table(f"{namespace}.{name}").current_snapshot()
        summary = snapshot.summary if snapshot else None
        counts[name] = int(summary["total-records"]) if summary else 0
    return counts


def _rejects_by_reason(catalog, namespace: str) -> dict[str, int]:
    """Quarantined raw events per reason (the rejects table holds one row per bad event)."""
    column = (
        catalog.load_table(f"{namespace}.stg_events__rejects")
        .scan(selected_fields=("reject_reason",))
        .to_arrow()["reject_reason"]
    )
    counts = column.value_counts().to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: str(c["values"]))}


# --- nightly evaluation ------------------------------------------------------------------------


@task
def plan_evaluation() -> list[dict]:
    """Which experiments, which date, how much history; fail with one line before any work.

    The date comes from the ``analysis_date`` param, else the triggering ``goal_aggregates``
    asset event's as-of date, else the newest date with aggregates. ``experiment_ids`` selects
    (default: every experiment with aggregates at that date); an unknown experiment, or one
    without aggregates that day, fails the run here.
    """
    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats.nightly import NothingToEvaluate, plan_night

    params = _check_conf()
    context = get_current_context()
    extra = latest_extra(context.get("triggering_asset_events"), GOAL_AGGREGATES.uri)
    settings = get_settings()
    day = parse_date(params.get("analysis_date"), "analysis_date") or parse_date(
        extra.get("as_of_date"), "goal_aggregates asset event as_of_date"
    )
    history = bool(params.get("history")) or bool(extra.get("full_refresh"))
    try:
        plan = plan_night(
            iceberg_catalog(settings),
            day,
            params.get("experiment_ids") or (),
            history,
            settings.namespace,
        )
    except NothingToEvaluate as exc:
        raise RunConfError(str(exc)) from None
    log.info(
        "evaluating %d experiments as of %s (history %s); last evaluation of %s",
        len(plan.experiment_ids),
        plan.analysis_date,
        history,
        ", ".join(f"{e} as of {d}" for e, d in plan.finals) or "none",
    )
    # One set of arguments per experiment: the mapped evaluation's task instances.
    return plan.task_kwargs()


@reported_task(map_index_template="{{ task.op_kwargs['experiment_id'] }}")
def evaluate_experiment(experiment_id: str, analysis_date: str, history: bool = False) -> dict:
    """One experiment's verdict at ``analysis_date`` (every earlier date too with ``history``).

    Replaces this experiment's rows in the Iceberg ``results`` table; concurrent evaluations of
    other experiments commit beside it (pyiceberg retries a conflicting commit). Its segment
    flags are per experiment until ``write_reports`` settles them across the night.
    """
    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats.nightly import evaluate_night

    settings = get_settings()
    day = dt.date.fromisoformat(analysis_date)
    night = evaluate_night(
        iceberg_catalog(settings), [experiment_id], day, history, settings.namespace, settle=False
    )
    verdict = {str(r.variant): r.verdict for r in night.verdicts().itertuples()}
    recs = night.recommendations()
    rec = (recs["recommendation"].iloc[0], recs["reason"].iloc[0]) if len(recs) else (None, None)
    log.info("%s as of %s: %d result rows over %d dates; verdict per variant %s; recommend %s: %s",
             experiment_id, day, night.rows, night.dates, verdict, *rec)  # fmt: skip
    for line in night.ramp_srm_lines():
        log.info("%s", line)
    return {"experiment_id": experiment_id, "analysis_date": analysis_date, "rows": night.rows,
            "dates": night.dates, "verdicts": verdict, "recommendation": rec[0],
            "evaluated_dates": [d.isoformat() for d in night.evaluated_dates]}  # fmt: skip


@reported_task(trigger_rule="all_done_min_one_success", outlets=[RESULTS])
def write_reports(evaluated: list[dict]) -> dict:
    """The HTML reports of every experiment with results; emits the ``results`` asset event.

    Runs when at least one experiment was evaluated, also when another one failed (its own task
    is red; the others' reports are still written). First settles the segment flags of every
    evaluated date across the night (``settle_night``: BH over all experiments' heterogeneity
    tests of that date), once every evaluation has committed.
    """
    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats import build_reports
    from strata.stats.results import settle_night

    done = [e for e in evaluated if e]
    settings = get_settings()
    catalog = iceberg_catalog(settings)
    days = sorted({d for e in done for d in e.get("evaluated_dates") or [e["analysis_date"]]})
    for day in days:
        s = settle_night(catalog, dt.date.fromisoformat(day), settings.namespace)
        log.info("segments of %s settled across the night: %d heterogeneity tests of %d "
                 "experiments, %d heterogeneous, %d flagged segments (%d rows rewritten)",
                 day, s.tests, s.experiments, s.heterogeneous, s.flagged, s.changed)  # fmt: skip
    out = settings.home / "reports"
    pages = build_reports(catalog, out, None, settings.namespace)
    get_current_context()["outlet_events"][RESULTS].extra = {
        "analysis_date": done[0]["analysis_date"] if done else None,
        "experiments": sorted(e["experiment_id"] for e in done),
    }
    log.info("%d report pages in %s (%d experiments evaluated)", len(pages), out, len(done))
    return {"pages": len(pages), "folder": str(out), "evaluated": len(done)}


@task(trigger_rule="all_done_min_one_success")
def check_evaluations(planned: list[dict], evaluated: list[dict]) -> dict:
    """The run's last task: red when any planned experiment was not evaluated.

    ``write_reports`` runs also when some evaluations failed, so without this task a run whose
    experiment failed would end green in the grid. Each failed evaluation has sent its own
    alert; this one's (not retried) is the night's summary, naming every experiment without
    results.
    """
    from airflow.sdk.exceptions import AirflowFailException

    done = {e["experiment_id"] for e in evaluated if e}
    missing = sorted({p["experiment_id"] for p in planned} - done)
    if missing:
        raise AirflowFailException(
            f"{len(missing)} of {len(planned)} experiments not evaluated (see their "
            f"evaluate_experiment tasks): {', '.join(missing)}"
        )
    log.info("all %d planned experiments evaluated", len(planned))
    return {"planned": len(planned), "evaluated": len(done)}


# --- lookup table health -------------------------------------------------------------------------


@task
def recover_lookup_table() -> dict:
    """Serve the last verified publication again if Redis lost it (restart without its data, a
    replaced node): republished from its recorded Iceberg snapshots, no assignment re-run.
    A no-op (one Redis round trip) while a live version is served or before any publication.
    """
    from pyiceberg.exceptions import NoSuchTableError

    from lookup_loader.loader import recover
    from strata.config import get_settings
    from strata.stack import iceberg_catalog

    settings = get_settings()
    try:
        published = iceberg_catalog(settings).load_table(
            f"{settings.namespace}.{contracts.PUBLICATIONS}"
        )
        nothing = published.current_snapshot() is None
    except NoSuchTableError:
        nothing = True
    if nothing:
        log.info("lookup table: nothing published yet, nothing to recover")
        return {"state": "nothing published yet"}
    result = recover(settings)
    log.info("lookup table: %s (version %s)", result["state"], result.get("version"))
    return result


# --- table maintenance ---------------------------------------------------------------------------


@task(pool=SPARK_POOL)
def maintain_tables() -> dict:
    """Compact small files, expire old snapshots and remove orphan files on every Strata table
    (one Spark session for all; a table that fails does not stop the others, the task fails at
    the end naming each). Retention: the ``STRATA_MAINTENANCE_*`` settings."""
    from strata.config import get_settings
    from strata.maintenance import maintain
    from strata.stack import spark_session

    settings = get_settings()
    spark = spark_session(settings, app_name="strata-maintain-tables")
    results = maintain(spark, settings=settings)
    done = [r for r in results if r.state == "maintained"]
    log.info(
        "maintained %d tables (%d missing): %d snapshots and %d data files -> %d and %d, "
        "%d files deleted",
        len(done),
        len(results) - len(done),
        sum(r.snapshots_before for r in done),
        sum(r.data_files_before for r in done),
        sum(r.snapshots_after for r in done),
        sum(r.data_files_after for r in done),
        sum(r.expired_files + r.orphan_files for r in done),
    )
    return {r.table: r.as_dict() for r in results}
