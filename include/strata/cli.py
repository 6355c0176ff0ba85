"""The ``strata`` command line. Each subcommand is a thin shell over a library or job function."""

from __future__ import annotations

import argparse
import sys


def _generate(argv: list[str]) -> int:
    from spark_jobs.generate_synthetic import main as generate

    generate(argv)
    return 0


COMMANDS = {
    "generate": (_generate, "generate synthetic users, orgs, devices and raw events into Iceberg"),
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
