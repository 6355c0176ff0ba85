"""``python -m lookup_loader``: publish assignments to Redis, invalidate one unit, inspect versions.

    python -m lookup_loader publish [--prefix P] [--assignments T] [--experiments T] ...
    python -m lookup_loader invalidate device_id d-42 checkout_button
    python -m lookup_loader restore device_id d-42 checkout_button
    python -m lookup_loader status
    python -m lookup_loader cleanup [--keep N]
    python -m lookup_loader recover [--publications T]
    python -m lookup_loader rollback [VERSION] [--publications T] [--keep N]

Every command prints one JSON object; errors name what and where and exit with status 1; a
refused rollback (unknown version, not held and its snapshots expired: nothing changed) exits
with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from lookup_loader import loader
from strata.config import get_settings
from strata.errors import StrataError
from strata.keyspace import DEFAULT_PREFIX, UNIT_CODES, KeySpace, experiment_field


def _status(prefix: str) -> dict:
    client = loader._client(get_settings())
    ks = KeySpace(prefix)
    live = client.get(ks.live)
    versions = {}
    for raw in client.zrevrange(ks.versions, 0, -1):
        meta = client.hgetall(ks.meta(raw.decode()))
        versions[raw.decode()] = {
            k.decode(): v.decode()
            for k, v in meta.items()
            if not k.decode().startswith(experiment_field(""))
        }
    return {
        "live": live.decode() if live else None,
        "versions": versions,
        "tombstones": client.hlen(ks.tombstones),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lookup_loader", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="Redis key prefix")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="publish the latest assignments as a new live version")
    pub.add_argument("--assignments", default=loader.ASSIGNMENTS_TABLE)
    pub.add_argument("--experiments", default=loader.EXPERIMENTS_TABLE)
    pub.add_argument("--publications", default=loader.PUBLICATIONS_TABLE)
    pub.add_argument("--writers", type=int, default=loader.DEFAULT_WRITERS)
    pub.add_argument("--sample", type=int, default=loader.DEFAULT_SAMPLE)
    pub.add_argument("--max-units-per-s", type=float, default=None, help="throttle writing")
    for name, help_text in (
        ("invalidate", "remove one unit from one experiment now (fast path)"),
        ("restore", "lift a fast-path removal from the next publication on"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("unit_type", choices=sorted(UNIT_CODES))
        p.add_argument("unit_id")
        p.add_argument("experiment_id")
    sub.add_parser("status", help="the live version, every stored version, tombstone count")
    clean = sub.add_parser("cleanup", help="unlink retired, failed and stale versions")
    clean.add_argument(
        "--keep", type=int, default=None, help="retired versions kept (STRATA_LOOKUP_KEEP_VERSIONS)"
    )
    rec = sub.add_parser(
        "recover",
        help="no live version (Redis lost its data): republish the last verified publication "
        "from its recorded Iceberg snapshots",
    )
    rec.add_argument("--publications", default=loader.PUBLICATIONS_TABLE)
    back = sub.add_parser(
        "rollback",
        help="make an earlier version live again (default: the previous one): one flip if Redis "
        "still holds it, else republished from its recorded Iceberg snapshots",
    )
    back.add_argument("version", nargs="?", help="version id (default: the previous live one)")
    back.add_argument("--publications", default=loader.PUBLICATIONS_TABLE)
    back.add_argument(
        "--keep", type=int, default=None, help="retired versions kept (STRATA_LOOKUP_KEEP_VERSIONS)"
    )
    back.add_argument("--prefix", default=argparse.SUPPRESS, help="Redis key prefix")
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        if args.command == "publish":
            result = loader.publish(
                settings,
                prefix=args.prefix,
                assignments_table=args.assignments,
                experiments_table=args.experiments,
                publications_table=args.publications,
                writers=args.writers,
                sample=args.sample,
                max_units_per_s=args.max_units_per_s,
            )
            out = asdict(result) | {"units_per_s": round(result.units_per_s)}
        elif args.command in ("invalidate", "restore"):
            fn = loader.invalidate if args.command == "invalidate" else loader.restore
            done = fn(
                settings, args.unit_type, args.unit_id, args.experiment_id, prefix=args.prefix
            )
            out = {"command": args.command, "changed": done}
        elif args.command == "status":
            out = _status(args.prefix)
        elif args.command == "recover":
            out = loader.recover(settings, prefix=args.prefix, publications_table=args.publications)
        elif args.command == "rollback":
            out = loader.rollback(
                settings,
                args.version,
                prefix=args.prefix,
                publications_table=args.publications,
                keep=args.keep,
            )
        else:
            out = {"unlinked": loader.cleanup(settings, prefix=args.prefix, keep=args.keep)}
    except StrataError as exc:
        print(f"lookup_loader {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, loader.RollbackRefused) else 1
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
