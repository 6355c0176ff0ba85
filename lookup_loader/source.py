"""The source of a publication: two Iceberg tables read at fixed snapshots, and the version id.

The ``assignments`` and ``experiments`` tables are read through pyiceberg (Arrow, no JVM) at their
current snapshots, or at recorded ones (recovery). The version id is a digest of those snapshots
and the day, so a re-run of a publication writes the same version again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from strata import contracts
from strata.config import Settings
from strata.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

#: Bumped when the stored layout changes; part of every version id.
FORMAT_VERSION = 1
ASSIGNMENTS_TABLE = contracts.ASSIGNMENTS
EXPERIMENTS_TABLE = contracts.EXPERIMENTS
PUBLICATIONS_TABLE = contracts.PUBLICATIONS
_ASSIGNMENT_COLUMNS = ("unit_type", "unit_id", "experiment_id", "variant_id", "variant_name")
_ASSIGNMENT_COLUMNS += (
    "is_control",
    "layer_id",
    "domain_id",
    "layer_priority",
    "service",
    "params",
)
_EXPERIMENT_COLUMNS = ("experiment_id", "name", "status", "start_date", "end_date")
_EXPERIMENT_COLUMNS += ("deployment_key",)


@dataclass
class Source:
    assignments: pa.Table
    experiments: pa.Table
    assignments_snapshot_id: int
    experiments_snapshot_id: int
    assignments_table: str


def read_source(
    settings: Settings,
    assignments_table: str = ASSIGNMENTS_TABLE,
    experiments_table: str = EXPERIMENTS_TABLE,
    *,
    snapshot_ids: tuple[int, int] | None = None,
) -> Source:
    """Both tables read through pyiceberg (Arrow, no JVM) at their current snapshots, or at
    ``snapshot_ids`` = (assignments, experiments) when given (recovery)."""
    from strata.stack import iceberg_catalog

    catalog = iceberg_catalog(settings)
    tables = {}
    for i, (name, columns) in enumerate(
        ((assignments_table, _ASSIGNMENT_COLUMNS), (experiments_table, _EXPERIMENT_COLUMNS))
    ):
        ident = f"{settings.namespace}.{name}"
        if not catalog.table_exists(ident):
            raise DataError(f"Iceberg table {ident} does not exist; run the assignment job first")
        table = catalog.load_table(ident)
        if snapshot_ids is None:
            snapshot = table.current_snapshot()
            if snapshot is None:
                raise DataError(f"Iceberg table {ident} has no snapshot (never written)")
        else:
            snapshot = table.snapshot_by_id(snapshot_ids[i])
            if snapshot is None:
                raise DataError(
                    f"Iceberg table {ident} no longer has snapshot {snapshot_ids[i]} "
                    "(expired?); publish the current assignments instead"
                )
        present = {f.name for f in table.schema().fields}
        missing = [c for c in columns if c not in present]
        if missing:
            raise DataError(f"Iceberg table {ident} lacks columns {missing}")
        data = table.scan(selected_fields=columns, snapshot_id=snapshot.snapshot_id).to_arrow()
        tables[name] = (data, snapshot.snapshot_id)
    return Source(
        assignments=tables[assignments_table][0],
        experiments=tables[experiments_table][0],
        assignments_snapshot_id=tables[assignments_table][1],
        experiments_snapshot_id=tables[experiments_table][1],
        assignments_table=assignments_table,
    )


def version_id(source: Source, as_of: dt.date) -> str:
    """Deterministic: the same snapshots (and day) give the same version, so re-runs complete it."""
    text = (
        f"{FORMAT_VERSION}:{source.assignments_table}:{source.assignments_snapshot_id}:"
        f"{source.experiments_snapshot_id}:{as_of.isoformat()}"
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]
