"""Benchmark: one incremental night on a warehouse with history, beside the same night alone.

Users run Strata every night for months; a night's cost must grow with the new day's work, not
with the history piled up before it. The generator (spark_jobs/generate_synthetic.py) makes the
same users' events day by day (a day's rows depend on the seed, the device and the day only), so
N + 1 days generated once split into a history (arrived before day N + 1) and the night's new
rows (arrived on day N + 1 or later: its own events and the late ones of the days before).

Two warehouses, each in its own process (own STRATA_HOME, Spark session, redis-server):

* history: days 1..N loaded and built (assignment, a full dbt build as of day N: untimed), then
  the night that adds day N + 1;
* reference: the same definitions and the same night's rows on a warehouse without history
  (the night before built over no events, untimed, so both processes are equally warm).

The night, timed stage by stage in both: assignment refresh (the Spark job, as of day N + 1),
publication into Redis, the dbt models (`dbt run`, incremental where the model is, with the
run's `as_of_date`), evaluation of every running experiment at day N + 1, and table maintenance
(`strata.maintenance.maintain`). The experiments are the bundled definitions
(include/definitions) with their windows moved to start on day 8 (a 7-day pre-period) and run
past day N + 1.

    .venv/bin/python bench/bench_night.py                       # 10k users, 30 days of history
    .venv/bin/python bench/bench_night.py --users 20000 --days 30 --compare-days 60
Targets: the night on N = 30 days costs <= 1.5x the same night alone; with --compare-days 60,
the night on 60 days is within 20% of the night on 30 days.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resources import BUILD_BYTES_PER_EVENT, Peaks

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("assign", "publish", "dbt", "evaluate", "maintain")
#: Peak disk per user and day of history for the disk check: ~0.76 events a user a day at a
#: full build's peak per event (320 B at 2.4M events here, fixed costs included). The phases run
#: one after another, each warehouse deleted after its run.
BYTES_PER_USER_DAY = 0.76 * BUILD_BYTES_PER_EVENT
PRE_PERIOD_DAYS = 7


def _definitions(folder: Path, start: dt.date, end: dt.date) -> Path:
    """The bundled definitions with every window moved to [start, end]."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted((ROOT / "include" / "definitions").glob("*.yaml")):
        text = src.read_text()
        text = re.sub(r"(?m)^(\s*start_date:\s*)\S+", rf"\g<1>{start.isoformat()}", text)
        text = re.sub(r"(?m)^(\s*end_date:\s*)\S+", rf"\g<1>{end.isoformat()}", text)
        (folder / src.name).write_text(text)
    return folder


def _dbt(settings, profiles: Path, day: dt.date) -> tuple[float, list[tuple[str, float]]]:
    """`dbt run` of every model as of ``day`` (incremental models merge); seconds, per model."""
    from dbt.cli.main import dbtRunner

    from strata.contracts import dbt_vars

    started = time.perf_counter()
    result = dbtRunner().invoke(
        [
            "run",
            "--project-dir",
            str(ROOT / "dbt_project"),
            "--profiles-dir",
            str(profiles),
            "--target-path",
            str(profiles / "target"),
            "--log-path",
            str(profiles / "logs"),
            "--vars",
            json.dumps(dbt_vars() | {"as_of_date": day.isoformat()}),
            "--quiet",
        ]
    )
    if not result.success:
        raise SystemExit(f"dbt run failed: {result.exception or result.result}")
    models = sorted(
        ((r.node.name, r.execution_time) for r in result.result.results), key=lambda m: -m[1]
    )
    return time.perf_counter() - started, models


def _phase(args: argparse.Namespace) -> int:
    """One warehouse in this process: load, (build the history), time the night; JSON out."""
    from strata.config import get_settings
    from strata.stack import spark_session, write_dbt_profile

    settings = get_settings()
    spark = spark_session(settings, f"bench-night-{args.phase}")
    port = os.environ.get("STRATA_REDIS_PORT", "6390")  # as scripts/redis.sh started it
    redis_pid = int((Path(settings.home) / "redis" / f"redis-{port}.pid").read_text())
    peaks = Peaks(settings.home, extra_pids=(redis_pid,))
    start = dt.date.fromisoformat(args.start_date)
    night = start + dt.timedelta(days=args.days)
    night_at = f"TIMESTAMP '{night.isoformat()} 00:00:00'"
    raw = settings.table("raw_events")
    out: dict = {"phase": args.phase, "history_days": args.days, "night": night.isoformat()}
    with peaks:
        try:
            from spark_jobs.generate_synthetic import write_tables
            from spark_jobs.ingest_exposure_logs import ensure_tables
            from strata.synthetic import GeneratorConfig

            days = args.days + 1 if args.phase == "history" else 1
            t0 = time.perf_counter()
            with peaks.stage("generate"):
                write_tables(
                    spark,
                    GeneratorConfig(users=args.users, days=days, start_date=start),
                    settings.table,
                )
                ensure_tables(spark, settings.table)
            stash = Path(args.night_rows)
            if args.phase == "history":
                # the night's rows aside (the reference loads them), the history stays
                spark.table(raw).where(f"arrived_at >= {night_at}").write.mode("overwrite").parquet(
                    str(stash)
                )
                spark.sql(f"DELETE FROM {raw} WHERE arrived_at >= {night_at}")
            else:
                spark.sql(f"DELETE FROM {raw}")
            out["history_events"] = spark.table(raw).count()
            out["generate_s"] = round(time.perf_counter() - t0, 1)
            profiles = write_dbt_profile(settings)
            # the night before (untimed), in both warehouses: the history's build, or on the
            # reference's empty warehouse the same stages over no events, so both processes come to
            # the night equally warm (JIT, caches) and with the same tables, and the night is the
            # same incremental run in both: only the history differs
            from strata_apps.assignment_tasks import assign

            t0 = time.perf_counter()
            with peaks.stage("history build"):
                assign(args.definitions, (night - dt.timedelta(days=1)).isoformat())
                _dbt(settings, profiles, night - dt.timedelta(days=1))
            out["history_build_s"] = round(time.perf_counter() - t0, 1)
            built = out["history_build_s"]
            print(f"[{args.phase}] the night before built in {built} s", flush=True)
            # the night's rows land (not timed: the landing is the events pipeline's)
            spark.read.parquet(str(stash)).writeTo(raw).append()
            out["night_events"] = spark.table(raw).count() - out["history_events"]
            out["raw_events_total"] = out["history_events"] + out["night_events"]
            out["stages"] = _night(spark, settings, profiles, args.definitions, night, peaks)
            out["peaks"] = peaks.stages
        finally:
            spark.stop()
    Path(args.out).write_text(json.dumps(out))
    return 0


def _night(spark, settings, profiles: Path, definitions: str, night: dt.date, peaks: Peaks) -> dict:
    from lookup_loader.loader import publish
    from strata.maintenance import maintain
    from strata.stack import iceberg_catalog
    from strata.stats.nightly import evaluate_night, plan_night
    from strata_apps.assignment_tasks import assign

    stages: dict = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        with peaks.stage(name):
            value = fn()
        stages[name] = {"s": round(time.perf_counter() - t0, 2)} | peaks.stages[name]
        print(f"    {name}: {stages[name]['s']} s, {peaks.line(name)}", flush=True)
        return value

    assigned = timed("assign", lambda: assign(definitions, night.isoformat()))
    stages["assign"]["rows"] = sum(n for *_, n in assigned["counts"])
    published = timed("publish", lambda: publish(settings, as_of=night))
    stages["publish"]["units"] = published.units
    _, models = timed("dbt", lambda: _dbt(settings, profiles, night))
    stages["dbt"]["models"] = [(m, round(s, 2)) for m, s in models]

    def evaluate():
        catalog = iceberg_catalog(settings)
        plan = plan_night(catalog, night, (), False, settings.namespace)
        result = evaluate_night(
            catalog, plan.experiment_ids, night, False, settings.namespace, settle=True
        )
        return len(plan.experiment_ids), result.rows

    experiments, rows = timed("evaluate", evaluate)
    stages["evaluate"].update(experiments=experiments, rows=rows)
    results = timed("maintain", lambda: maintain(spark, settings=settings))
    stages["maintain"]["tables"] = sum(r.state == "maintained" for r in results)
    return stages


def _run_phase(args, phase: str, days: int, work: Path, definitions: Path) -> dict:
    home = work / f"{phase}-{days}"
    out = work / f"{phase}-{days}.json"
    env = os.environ | {
        "STRATA_HOME": str(home),
        "STRATA_SPARK_MASTER": "local[2]",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    redis = [str(ROOT / "scripts" / "redis.sh")]
    subprocess.run([*redis, "start"], env=env, check=True, capture_output=True)
    try:
        print(f"[{phase}] {days} days of history" if phase == "history" else f"[{phase}]",
              flush=True)  # fmt: skip
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--phase",
                phase,
                "--users",
                str(args.users),
                "--days",
                str(days),
                "--start-date",
                args.start_date,
                "--definitions",
                str(definitions),
                "--night-rows",
                str(work / f"night-{days}.parquet"),
                "--out",
                str(out),
            ],
            env=env,
            check=True,
        )
    finally:
        subprocess.run([*redis, "stop"], env=env, check=False, capture_output=True)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    return json.loads(out.read_text())


def _total(run: dict, stages: tuple[str, ...] = STAGES) -> float:
    return sum(run["stages"][s]["s"] for s in stages)


def _print_night(run: dict) -> None:
    total = _total(run)
    for s in STAGES:
        stage = run["stages"][s]
        print(
            f"    {s:<9} {stage['s']:>8.1f} s  {stage['s'] / total:>5.0%}  peak memory "
            f"{stage.get('rss_gb', float('nan')):>5.1f} GB, disk +{stage.get('disk_gb', 0):.1f} GB"
        )
    print(
        f"    {'night':<9} {total:>8.1f} s         peak memory "
        f"{max(run['stages'][s].get('rss_gb', 0) for s in STAGES):>5.1f} GB"
    )
    for name in ("generate", "history build"):
        if name in run.get("peaks", {}):
            p = run["peaks"][name]
            seconds = run["generate_s" if name == "generate" else "history_build_s"]
            print(f"    (untimed {name}: {seconds:.1f} s, peak memory {p['rss_gb']:.1f} GB, "
                  f"disk +{p['disk_gb']:.1f} GB)")  # fmt: skip
    models = run["stages"]["dbt"]["models"]
    print("    dbt models: " + ", ".join(f"{m} {s:.1f}s" for m, s in models[:8]))


def _compare(base: dict, ref: dict, label: str, target: float) -> bool:
    ratio = _total(base) / _total(ref)
    met = ratio <= target
    print(f"\n{label}: {_total(base):.1f} s vs {_total(ref):.1f} s = {ratio:.2f}x "
          f"(target <= {target:.2f}x: {'met' if met else 'NOT met'})")  # fmt: skip
    # maintenance's cost follows the files and snapshots piled up since the last run, not the day
    busy = tuple(s for s in STAGES if s != "maintain")
    print(f"    without maintenance: {_total(base, busy):.1f} s vs {_total(ref, busy):.1f} s = "
          f"{_total(base, busy) / _total(ref, busy):.2f}x")  # fmt: skip
    print(f"    {'stage':<9} {'ours s':>8} {'ref s':>8} {'ratio':>6}")
    for s in STAGES:
        a, b = base["stages"][s]["s"], ref["stages"][s]["s"]
        print(f"    {s:<9} {a:>8.1f} {b:>8.1f} {a / b if b else float('nan'):>5.2f}x")
    grown = {}
    ref_models = dict(ref["stages"]["dbt"]["models"])
    for m, s in base["stages"]["dbt"]["models"]:
        grown[m] = s - ref_models.get(m, 0.0)
    top = sorted(grown.items(), key=lambda kv: -kv[1])[:6]
    print("    dbt models' growth over the reference: "
          + ", ".join(f"{m} {d:+.1f}s" for m, d in top))  # fmt: skip
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30, help="days of history before the night")
    parser.add_argument(
        "--compare-days", type=int, default=0, help="also a night on this many days (e.g. 60)"
    )
    parser.add_argument("--start-date", default="2026-09-01")
    parser.add_argument("--keep", action="store_true", help="keep the warehouses afterwards")
    parser.add_argument(
        "--no-reference", action="store_true",
        help="only the night on the history (no night-alone reference): the big sizes",
    )  # fmt: skip
    parser.add_argument("--json", help="write every run's figures to this file")
    # internal: one warehouse's run in a process of its own
    parser.add_argument("--phase", choices=("history", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--definitions", help=argparse.SUPPRESS)
    parser.add_argument("--night-rows", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.phase:
        return _phase(args)

    work = Path(tempfile.mkdtemp(prefix="strata-bench-night-"))
    longest = max(args.days, args.compare_days)
    need = args.users * (longest + 1) * BYTES_PER_USER_DAY
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(
            f"bench_night: {need / 1e9:.1f} GB needed for {args.users:,} users x {longest + 1} "
            f"days, {free / 1e9:.1f} GB free under {work}"
        )
    start = dt.date.fromisoformat(args.start_date)
    runs: dict[str, dict] = {}
    try:
        for days in sorted({args.days, args.compare_days} - {0}):
            night = start + dt.timedelta(days=days)
            definitions = _definitions(
                work / f"definitions-{days}",
                start + dt.timedelta(days=PRE_PERIOD_DAYS),
                night + dt.timedelta(days=60),
            )
            runs[f"history-{days}"] = _run_phase(args, "history", days, work, definitions)
            if days == args.days and not args.no_reference:
                runs["reference"] = _run_phase(args, "reference", days, work, definitions)
        print(f"\nincremental night, {args.users:,} users, local[2]; load {os.getloadavg()[0]:.1f}")
        for name, run in runs.items():
            print(
                f"\n{name}: {run['raw_events_total']:,} raw events, "
                f"night's {run['night_events']:,} (history {run['history_events']:,})"
            )
            _print_night(run)
        ok = args.no_reference or _compare(
            runs[f"history-{args.days}"], runs["reference"],
            f"night on {args.days} days vs the night alone", 1.5,
        )  # fmt: skip
        if args.compare_days:
            ok &= _compare(
                runs[f"history-{args.compare_days}"], runs[f"history-{args.days}"],
                f"night on {args.compare_days} days vs on {args.days} days", 1.2,
            )  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
        del ok  # a missed target is printed; the run fails only on errors
        return 0
    finally:
        if args.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
