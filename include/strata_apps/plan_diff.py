"""``strata plan --diff``: before publishing, how many units the current definitions would move,
per experiment, compared with what is live.

The *planned* side is the assignment job's own transform
(:func:`spark_jobs.assign_experiments.transform`) run in Spark on the current input snapshots,
nothing written. The *live* side is the ``assignments`` snapshot the live Redis version was
published from (the ``publications`` row of the live version names it), read by Iceberg time
travel. Both are compared on (unit type, unit id, experiment): per experiment, units whose
variant is the same, units whose variant changes, units added and units removed.

The comparison is of assignment rows: the loader's own exclusions at publication (an experiment
past its end date, a stopped one) and fast-path removals are not applied to either side; an
experiment the new definitions stop shows all its units removed.

Usage::

    strata plan include/definitions --diff
    diff = plan_diff(load("include/definitions"))     # -> PlanDiff
    print(format_diff(diff))
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lookup_loader.publish import publication_of
from lookup_loader.source import ASSIGNMENTS_TABLE, PUBLICATIONS_TABLE
from strata.contracts import DEVICES, ORGS, USERS
from strata.errors import DataError
from strata.keyspace import DEFAULT_PREFIX, KeySpace

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from strata.config import Settings
    from strata.definitions import Definitions

#: Columns both sides are compared on; the variant is what may change.
KEY = ("unit_type", "unit_id", "experiment_id")
COUNTS = ("live", "planned", "unchanged", "changed", "added", "removed")


@dataclass(frozen=True)
class PlanDiff:
    """The comparison: what is live, and one row of counts per experiment (see ``COUNTS``)."""

    live_version: str | None
    assignments_table: str | None
    assignments_snapshot_id: int | None
    definitions_version: str
    rows: list[dict[str, Any]] = field(default_factory=list)


def diff_frames(live: DataFrame, planned: DataFrame) -> list[dict[str, Any]]:
    """Per experiment: units live and planned, unchanged (same variant), changed (another
    variant), added (planned only) and removed (live only); sorted by experiment id.

    Both frames have ``unit_type``, ``unit_id``, ``experiment_id`` and ``variant_id``.
    """
    from pyspark.sql import functions as F

    old = live.select(*KEY, F.col("variant_id").alias("old_vid"))
    new = planned.select(*KEY, F.col("variant_id").alias("new_vid"))
    joined = old.join(new, list(KEY), "full_outer")
    o, n = F.col("old_vid"), F.col("new_vid")

    def count(cond: Any) -> Any:
        return F.sum(F.when(cond, 1).otherwise(0)).cast("long")

    rows = (
        joined.groupBy("experiment_id")
        .agg(
            count(o.isNotNull()).alias("live"),
            count(n.isNotNull()).alias("planned"),
            count(o.isNotNull() & n.isNotNull() & (o == n)).alias("unchanged"),
            count(o.isNotNull() & n.isNotNull() & (o != n)).alias("changed"),
            count(o.isNull()).alias("added"),
            count(n.isNull()).alias("removed"),
        )
        .orderBy("experiment_id")
        .collect()
    )
    return [r.asDict() for r in rows]


def planned_assignments(
    spark: SparkSession, settings: Settings, defs: Definitions, as_of: dt.date | None = None
) -> DataFrame:
    """The rows the assignment job would write on the day ``as_of`` (default today UTC) for
    ``defs``, the current input snapshots and the current ``assignments`` snapshot (sticky
    experiments), computed by the job's own transform, not written.

    The rows paused, stopped and shipped experiments keep (the job carries them over for their
    analysis; they are not served) are left out, so such an experiment shows as ``removed``: the
    diff is about what would be served. A shipped one's serving rows show as ``shipped:<id>``."""
    from spark_jobs.assign_experiments import (
        input_snapshots,
        previous_snapshot,
        run_identity,
        transform,
        unit_contexts,
    )

    snapshots = input_snapshots(spark, settings)
    read = {
        name: spark.read.option("snapshot-id", sid).table(settings.table(name))
        for name, (sid, _) in snapshots.items()
    }
    units = unit_contexts(read[USERS], read[ORGS], read[DEVICES])
    run_id, assigned_at = run_identity(defs.version, snapshots)
    # sticky experiments keep the units of the current snapshot, as the job would
    return transform(units, defs, run_id, assigned_at, as_of, previous_snapshot(spark, settings))


def live_publication(
    settings: Settings,
    *,
    prefix: str = DEFAULT_PREFIX,
    publications_table: str = PUBLICATIONS_TABLE,
) -> dict[str, Any] | None:
    """The ``publications`` row of the version Redis serves now (None: nothing is live)."""
    from strata.stack import redis_client

    raw = redis_client(settings, role="reader").get(KeySpace(prefix).live)
    if not raw:
        return None
    live = raw.decode() if isinstance(raw, bytes) else str(raw)
    row = publication_of(settings, live, prefix=prefix, table_name=publications_table)
    if row is None:
        raise DataError(
            f"the live version {live} of prefix {prefix!r} is not recorded in "
            f"{settings.namespace}.{publications_table}; cannot tell which assignments it serves"
        )
    return row


def plan_diff(
    defs: Definitions,
    settings: Settings | None = None,
    *,
    spark: SparkSession | None = None,
    prefix: str = DEFAULT_PREFIX,
    publications_table: str = PUBLICATIONS_TABLE,
    as_of: dt.date | None = None,
) -> PlanDiff:
    """Compare the assignments ``defs`` would give on ``as_of`` (default today UTC) with those
    of the live version."""
    from strata.config import get_settings
    from strata.stack import spark_session

    settings = settings or get_settings()
    row = live_publication(settings, prefix=prefix, publications_table=publications_table)
    spark = spark or spark_session(settings, "strata-plan-diff")
    planned = planned_assignments(spark, settings, defs, as_of)
    cols = [*KEY, "variant_id"]
    if row is None:  # nothing live: every planned unit is added
        live = planned.limit(0)
    else:
        table = row.get("assignments_table") or ASSIGNMENTS_TABLE
        live = spark.read.option("snapshot-id", row["assignments_snapshot_id"]).table(
            settings.table(table)
        )
    return PlanDiff(
        live_version=row["version"] if row else None,
        assignments_table=(row.get("assignments_table") or ASSIGNMENTS_TABLE) if row else None,
        assignments_snapshot_id=row["assignments_snapshot_id"] if row else None,
        definitions_version=defs.version,
        rows=diff_frames(live.select(*cols), planned.select(*cols)),
    )


def format_diff(diff: PlanDiff) -> str:
    """The comparison as a text table, one row per experiment and a total."""
    from tabulate import tabulate

    if diff.live_version is None:
        head = "Compared with what is live: nothing is live (every planned unit is added)."
    else:
        head = (
            f"Compared with what is live: version {diff.live_version}, "
            f"{diff.assignments_table} snapshot {diff.assignments_snapshot_id}; "
            f"definitions version {diff.definitions_version}."
        )
    total = {c: sum(r[c] for r in diff.rows) for c in COUNTS}
    table = [[r["experiment_id"], *(f"{r[c]:,}" for c in COUNTS)] for r in diff.rows]
    table.append(["(all)", *(f"{total[c]:,}" for c in COUNTS)])
    headers = ["experiment", "live units", "planned units", "same variant", "changed variant"]
    headers += ["added", "removed"]
    lines = [head, tabulate(table, headers=headers, colalign=("left",) + ("right",) * 6)]
    moved = total["changed"] + total["added"] + total["removed"]
    lines.append(f"{moved:,} unit assignments would change; nothing was written.")
    return "\n".join(lines)
