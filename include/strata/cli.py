"""The ``strata`` command line. Each subcommand is a thin shell over a library or job function."""

from __future__ import annotations

import argparse
import sys


def _generate(argv: list[str]) -> int:
    from spark_jobs.generate_synthetic import main as generate

    generate(argv)
    return 0


def _validate(argv: list[str]) -> int:
    from strata.definitions import DefinitionError, load

    parser = argparse.ArgumentParser(
        prog="strata validate",
        description="Validate experiment definitions; one line per problem (file: path: message).",
    )
    parser.add_argument("path", help="definitions file or folder (YAML)")
    args = parser.parse_args(argv)
    try:
        defs = load(args.path)
    except DefinitionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    running = sum(e.assigned for e in defs.experiments)
    print(
        f"OK {args.path}: {len(defs.domains)} domains, {len(defs.layers)} layers, "
        f"{len(defs.experiments)} experiments ({running} running), version {defs.version}"
    )
    return 0


def _plan(argv: list[str]) -> int:
    from strata.definitions import DefinitionError, format_plan, load

    parser = argparse.ArgumentParser(
        prog="strata plan",
        description="Dry run: traffic per domain/layer/experiment/variant and free space per layer.",
    )
    parser.add_argument("path", help="definitions file or folder (YAML)")
    args = parser.parse_args(argv)
    try:
        defs = load(args.path)
    except DefinitionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(format_plan(defs))
    return 0


def _assign(argv: list[str]) -> int:
    from spark_jobs.assign_experiments import main as assign

    assign(argv)
    return 0


COMMANDS = {
    "validate": (_validate, "validate experiment definitions (exit 1 and one line per problem)"),
    "plan": (_plan, "dry-run traffic table of definitions: shares and free space per layer"),
    "generate": (_generate, "generate synthetic users, orgs, devices and raw events into Iceberg"),
    "assign": (_assign, "assign users and devices to experiments in Spark -> Iceberg assignments"),
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
