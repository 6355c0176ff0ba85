"""The ``strata`` command line. Each subcommand is a thin shell over a library or job function."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strata.definitions import Definitions


def _generate(argv: list[str]) -> int:
    from spark_jobs.generate_synthetic import main as generate

    generate(argv)
    return 0


def _print_problems(problems: list[str], path: str) -> None:
    """One line per definitions problem on stderr, then their count."""
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(problems)} problem(s) in {path}", file=sys.stderr)


def _load_definitions(path: str) -> Definitions | None:
    """The definitions at ``path``, or None after printing one line per problem to stderr."""
    from strata.definitions import DefinitionError, load

    try:
        return load(path)
    except DefinitionError as exc:
        _print_problems(exc.problems, path)
        return None


def _states_checked(defs: Definitions, path: str, offline: bool) -> bool:
    """Check the declared statuses against the ones the ``experiments`` table records, when the
    catalog is reachable (a local catalog that does not exist yet records nothing). Prints one
    line per illegal change and returns False, or a note and True."""
    from strata.config import get_settings
    from strata.contracts import EXPERIMENTS
    from strata.lifecycle import recorded_states, transition_problems

    if offline:
        print("states: not checked (--offline)")
        return True
    settings = get_settings()
    if settings.catalog_type == "jdbc" and not settings.catalog_db_path.exists():
        print(f"states: no catalog at {settings.catalog_db_path} yet (nothing recorded)")
        return True
    try:
        from strata.stack import iceberg_catalog

        recorded = recorded_states(iceberg_catalog(settings), settings.namespace)
    except Exception as exc:  # any catalog failure: report it, the definitions stay valid
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"states: not checked, catalog unreachable ({first})", file=sys.stderr)
        return True
    table = f"{settings.namespace}.{EXPERIMENTS}"
    problems = transition_problems(defs, recorded, table)
    if problems:
        _print_problems(problems, path)
        return False
    known = len(recorded or {})
    print(f"states: legal against {table} ({known} experiment(s) recorded)")
    return True


def _validate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="strata validate",
        description="Validate experiment definitions; one line per problem (file: path: message). "
        "When the catalog is reachable, each status change is checked against the state the "
        "experiments table records (draft -> running -> paused -> stopped -> shipped).",
    )
    parser.add_argument("path", help="definitions file or folder (YAML)")
    parser.add_argument(
        "--offline", action="store_true", help="do not check statuses against the catalog"
    )
    args = parser.parse_args(argv)
    defs = _load_definitions(args.path)
    if defs is None:
        return 1
    if not _states_checked(defs, args.path, args.offline):
        return 1
    running = sum(e.assigned for e in defs.experiments)
    print(
        f"OK {args.path}: {len(defs.domains)} domains, {len(defs.layers)} layers, "
        f"{len(defs.experiments)} experiments ({running} running), version {defs.version}"
    )
    return 0


def _plan(argv: list[str]) -> int:
    from strata.definitions import format_plan

    parser = argparse.ArgumentParser(
        prog="strata plan",
        description="Dry run: traffic per domain/layer/experiment/variant, free space per layer; "
        "with --diff also how many units change variant per experiment against what is live.",
    )
    parser.add_argument("path", help="definitions file or folder (YAML)")
    parser.add_argument(
        "--diff",
        action="store_true",
        help="assign in Spark without writing and compare, per experiment, with the assignments "
        "of the live lookup version (units unchanged / changed variant / added / removed)",
    )
    parser.add_argument("--prefix", default=None, help="Redis key prefix of the lookup table")
    parser.add_argument("--publications", default=None, help="publications table")
    parser.add_argument(
        "--as-of",
        type=dt.date.fromisoformat,
        default=None,
        help="with --diff: the day to assign on, YYYY-MM-DD (default today, UTC): only "
        "experiments inside their window that day get units",
    )
    parser.add_argument(
        "--offline", action="store_true", help="do not check statuses against the catalog"
    )
    args = parser.parse_args(argv)
    defs = _load_definitions(args.path)
    if defs is None:
        return 1
    print(format_plan(defs))
    print()
    if not _states_checked(defs, args.path, args.offline):
        return 1
    if args.diff:
        return _plan_diff(defs, args.prefix, args.publications, args.as_of)
    return 0


def _plan_diff(
    defs: Definitions, prefix: str | None, publications: str | None, as_of: dt.date | None
) -> int:
    import redis
    from pyspark.errors import AnalysisException

    from lookup_loader.source import PUBLICATIONS_TABLE
    from strata.errors import StrataError
    from strata.keyspace import DEFAULT_PREFIX
    from strata_apps.plan_diff import format_diff, plan_diff

    try:
        diff = plan_diff(
            defs,
            prefix=prefix or DEFAULT_PREFIX,
            publications_table=publications or PUBLICATIONS_TABLE,
            as_of=as_of,
        )
    except (StrataError, redis.RedisError, AnalysisException, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"strata plan --diff: {first}", file=sys.stderr)
        return 1
    print()
    print(format_diff(diff))
    return 0


def _assign(argv: list[str]) -> int:
    from spark_jobs.assign_experiments import main as assign
    from strata.definitions import DefinitionError

    try:
        assign(argv)  # loads the definitions before it starts Spark
    except DefinitionError as exc:
        shown = argparse.ArgumentParser(add_help=False)
        shown.add_argument("--definitions", default="the bundled definitions")
        _print_problems(exc.problems, shown.parse_known_args(argv)[0].definitions)
        return 1
    return 0


def _publish(argv: list[str]) -> int:
    from lookup_loader.__main__ import main as loader_main

    return loader_main(["publish", *argv])


def _recover(argv: list[str]) -> int:
    from lookup_loader.__main__ import main as loader_main

    return loader_main(["recover", *argv])


def _rollback(argv: list[str]) -> int:
    from lookup_loader.__main__ import main as loader_main

    return loader_main(["rollback", *argv])


def _lookup(argv: list[str]) -> int:
    import json

    from strata.lookup import LookupClient

    parser = argparse.ArgumentParser(
        prog="strata lookup", description="Seed-004 actions for a device (and user / url)."
    )
    parser.add_argument("device_id")
    parser.add_argument("--user-id")
    parser.add_argument("--url")
    args = parser.parse_args(argv)
    answer = LookupClient().answer(args.device_id, args.user_id, args.url)
    print(json.dumps({"version": answer.version, "actions": answer.actions}, indent=2))
    return 0


def _serve(argv: list[str]) -> int:
    import os

    from strata.errors import StackError
    from strata_apps.endpoint_server import Limits, serve

    parser = argparse.ArgumentParser(
        prog="strata serve",
        description="Reference device-register endpoint (seed 004): nginx on the port, bounding "
        "slow and numerous clients, in front of uvicorn on a unix socket. Limits default to "
        "STRATA_ENDPOINT_* (see docs/lookup.md).",
    )
    defaults = Limits()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("STRATA_ENDPOINT_PORT", "8090"))
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=defaults.header_timeout_s,
        help="seconds to send the request headers (default %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.body_timeout_s,
        help="seconds between two reads of the body (default %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="connections held at once (default %(default)s)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=defaults.max_requests,
        help="requests in flight; past it 503 + Retry-After (default %(default)s)",
    )
    args = parser.parse_args(argv)
    limits = Limits(
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        keepalive_timeout_s=defaults.keepalive_timeout_s,
        max_connections=args.max_connections,
        max_requests=args.max_requests,
        app_timeout_s=defaults.app_timeout_s,
    )
    try:
        return serve(args.host, args.port, limits)
    except StackError as exc:
        print(f"strata serve: {exc}", file=sys.stderr)
        return 1


def _evaluate(argv: list[str]) -> int:
    import datetime as dt

    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats.nightly import NothingToEvaluate, evaluate_night, plan_night

    parser = argparse.ArgumentParser(
        prog="strata evaluate",
        description="Evaluate experiments from goal_aggregates into the Iceberg results table "
        "(what the nightly evaluate_experiments DAG runs).",
    )
    parser.add_argument("experiments", nargs="*", help="experiment ids (default: all evaluable)")
    parser.add_argument(
        "--date", type=dt.date.fromisoformat, help="analysis date (default: newest)"
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="every earlier date with aggregates too (after a backfill or a full refresh)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    catalog = iceberg_catalog(settings)
    try:
        plan = plan_night(catalog, args.date, args.experiments, args.history, settings.namespace)
    except NothingToEvaluate as exc:
        print(f"nothing to evaluate: {exc}", file=sys.stderr)
        return 1
    nights = []
    if plan.experiment_ids:
        night = evaluate_night(
            catalog, plan.experiment_ids, plan.analysis_date, plan.history, settings.namespace
        )
        print(
            f"evaluated {len(night.experiment_ids)} experiments as of {night.analysis_date}: "
            f"{night.rows:,} result rows" + (f" over {night.dates} dates" if plan.history else "")
        )
        nights.append(night)
    for experiment_id, final in plan.finals:  # stopped / shipped: the last evaluation
        night = evaluate_night(catalog, [experiment_id], final, plan.history, settings.namespace)
        print(
            f"evaluated {experiment_id} a last time as of {final} (its analysis has ended): "
            f"{night.rows:,} result rows"
        )
        nights.append(night)
    for night in nights:
        for s in night.settlements[-1:]:
            print(
                f"segments as of {s.analysis_date}: {s.tests} heterogeneity tests of "
                f"{s.experiments} experiments, BH across the night: {s.heterogeneous} "
                f"heterogeneous, {s.flagged} flagged segments"
            )
        print(night.verdicts().to_string(index=False))
        print("\n".join(night.recommendation_lines()))
        for line in night.ramp_srm_lines():
            print(line)
    return 0


def _report(argv: list[str]) -> int:
    from pathlib import Path

    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats import build_reports

    settings = get_settings()
    parser = argparse.ArgumentParser(
        prog="strata report", description="Static HTML reports from the results table."
    )
    parser.add_argument("experiments", nargs="*", help="experiment ids (default: all)")
    parser.add_argument("--out", type=Path, default=settings.home / "reports")
    args = parser.parse_args(argv)
    pages = build_reports(
        iceberg_catalog(settings), args.out, args.experiments or None, settings.namespace
    )
    print(f"wrote {len(pages)} pages; open {args.out / 'index.html'}")
    return 0


def _maintain(argv: list[str]) -> int:
    from strata import contracts
    from strata.config import get_settings

    settings = get_settings()
    parser = argparse.ArgumentParser(
        prog="strata maintain",
        description="Iceberg table maintenance (what the daily maintain_tables DAG runs): compact "
        "small files, expire snapshots older than STRATA_MAINTENANCE_SNAPSHOT_DAYS "
        f"({settings.maintenance_snapshot_days:g}) keeping the last "
        f"STRATA_MAINTENANCE_KEEP_SNAPSHOTS ({settings.maintenance_keep_snapshots}), remove "
        "files no snapshot references older than STRATA_MAINTENANCE_ORPHAN_HOURS "
        f"({settings.maintenance_orphan_hours:g}). Rows never change; reproducing a result or "
        "recovering a publication works within the retention window only.",
    )
    parser.add_argument(
        "tables",
        nargs="*",
        metavar="TABLE",
        help=f"tables (default: all): {', '.join(contracts.TABLES)}",
    )
    args = parser.parse_args(argv)
    unknown = [t for t in args.tables if t not in contracts.TABLES]
    if unknown:
        print(f"strata maintain: not Strata tables: {', '.join(unknown)}", file=sys.stderr)
        return 2

    from strata.errors import StackError
    from strata.maintenance import maintain
    from strata.stack import spark_session

    spark = spark_session(settings, app_name="strata-maintain")
    try:
        results = maintain(spark, args.tables or None, settings, raise_on_failure=False)
    except StackError as exc:
        print(f"strata maintain: {exc}", file=sys.stderr)
        return 1
    for result in results:
        print(result.summary())
    failed = [r.table for r in results if r.state == "failed"]
    if failed:
        print(f"strata maintain: failed on {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


COMMANDS = {
    "validate": (_validate, "validate experiment definitions (exit 1 and one line per problem)"),
    "plan": (_plan, "dry-run traffic table of definitions: shares and free space per layer"),
    "generate": (_generate, "generate synthetic users, orgs, devices and raw events into Iceberg"),
    "assign": (_assign, "assign users and devices to experiments in Spark -> Iceberg assignments"),
    "publish": (_publish, "publish the assignments into Redis as a new version, atomic flip"),
    "recover": (_recover, "Redis lost its live version? republish the last verified one"),
    "rollback": (_rollback, "make an earlier lookup version live again (default: the previous)"),
    "lookup": (_lookup, "answer a device-register lookup from the live Redis version"),
    "serve": (_serve, "run the reference device-register endpoint (seed 004) behind nginx"),
    "evaluate": (_evaluate, "evaluate experiments into the Iceberg results table"),
    "report": (_report, "write static HTML reports (forest plot, trend, SRM) from results"),
    "maintain": (_maintain, "compact, expire old snapshots and remove orphans on every table"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="strata", description="Strata experimentation platform.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args, rest = parser.parse_known_args(argv[:1])
    handler, _ = COMMANDS[args.command]
    return handler(argv[1:] + rest)


if __name__ == "__main__":
    raise SystemExit(main())
