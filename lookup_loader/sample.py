"""Sample ``assignments`` / ``experiments`` tables in the assignment job's contract.

For the loader's tests and benchmark (the assignment job writes the real ones). Units are placed
with the real slot function, so the sample has realistic variant splits; four experiments cover
the three unit types, a shared service (params merge) and a stopped experiment (not served).

Usage:
    >>> assignments, experiments = sample_tables(devices=100, users=40, urls=5)
    >>> assignments.num_rows, experiments.num_rows
    (245, 4)
    >>> sorted(set(assignments["unit_type"].to_pylist()))
    ['device_id', 'url', 'user_id']
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from strata.bucketing import SLOTS, slot
from strata.config import Settings

if TYPE_CHECKING:
    import pyarrow as pa

#: (id, name, layer, priority, unit type, service, status, key, variants as (name, params)).
SAMPLE_EXPERIMENTS: list[dict[str, Any]] = [
    {
        "experiment_id": "checkout_button",
        "name": "Checkout button colour",
        "layer_id": "checkout",
        "layer_priority": 200,
        "unit_type": "device_id",
        "service": "checkout",
        "status": "running",
        "deployment_key": "dk-checkout-2026",
        "variants": [
            ("control", {"button": {"color": "grey"}, "layout": {"cols": 1}}),
            ("green", {"button": {"color": "green"}, "layout": {"cols": 2}}),
        ],
    },
    {
        "experiment_id": "feed_ranking",
        "name": "Feed ranking model",
        "layer_id": "feed",
        "layer_priority": 100,
        "unit_type": "user_id",
        "service": "checkout",
        "status": "running",
        "deployment_key": "dk-feed-2026",
        "variants": [
            ("control", {"ranker": "v1", "layout": {"cols": 3, "dense": False}}),
            ("v2", {"ranker": "v2", "layout": {"cols": 3, "dense": True}}),
            ("v3", {"ranker": "v3", "layout": {"cols": 4, "dense": True}}),
        ],
    },
    {
        "experiment_id": "landing_copy",
        "name": "Landing page copy",
        "layer_id": "landing",
        "layer_priority": 50,
        "unit_type": "url",
        "service": None,
        "status": "running",
        "deployment_key": "folder-landing-17",
        "variants": [("control", {"headline": "Hello"}), ("bold", {"headline": "HELLO!"})],
    },
    {
        "experiment_id": "old_banner",
        "name": "Old banner (stopped)",
        "layer_id": "banner",
        "layer_priority": 10,
        "unit_type": "device_id",
        "service": "home",
        "status": "stopped",
        "deployment_key": "dk-banner",
        "variants": [("control", {}), ("banner", {"banner": True})],
    },
]
START, END = dt.date(2026, 1, 1), dt.date(2099, 12, 31)


def assignments_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("unit_type", pa.string()),
            ("unit_id", pa.string()),
            ("experiment_id", pa.string()),
            ("variant_id", pa.int32()),
            ("variant_name", pa.string()),
            ("is_control", pa.bool_()),
            ("layer_id", pa.string()),
            ("domain_id", pa.string()),
            ("layer_priority", pa.int32()),
            ("service", pa.string()),
            ("slot", pa.int32()),
            ("params", pa.string()),
            ("definitions_version", pa.string()),
            ("run_id", pa.string()),
            ("assigned_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def experiments_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("experiment_id", pa.string()),
            ("name", pa.string()),
            ("owner", pa.string()),
            ("description", pa.string()),
            ("layer_id", pa.string()),
            ("domain_id", pa.string()),
            ("unit_type", pa.string()),
            ("status", pa.string()),
            ("start_date", pa.date32()),
            ("end_date", pa.date32()),
            ("deployment_key", pa.string()),
            ("platforms", pa.list_(pa.string())),
            ("variants", pa.string()),
            ("metrics", pa.string()),
            ("definitions_version", pa.string()),
        ]
    )


def experiments_table(experiments: list[dict[str, Any]]) -> pa.Table:
    """An ``experiments`` table from dicts shaped like ``SAMPLE_EXPERIMENTS``."""
    import pyarrow as pa

    rows = [
        {
            "experiment_id": e["experiment_id"],
            "name": e["name"],
            "owner": "lookup-tests",
            "description": e["name"],
            "layer_id": e["layer_id"],
            "domain_id": e.get("domain_id", "main"),
            "unit_type": e["unit_type"],
            "status": e["status"],
            "start_date": e.get("start_date", START),
            "end_date": e.get("end_date", END),
            "deployment_key": e["deployment_key"],
            "platforms": ["ios", "android", "web"],
            "variants": json.dumps([{"name": n, "params": p} for n, p in e["variants"]]),
            "metrics": "[]",
            "definitions_version": "sample-1",
        }
        for e in experiments
    ]
    return pa.Table.from_pylist(rows, schema=experiments_schema())


def assignment_rows(
    experiment: dict[str, Any], unit_ids: list[str], run_id: str = "sample"
) -> list[dict[str, Any]]:
    """Rows assigning every unit to a variant by its slot (equal ranges per variant)."""
    variants = experiment["variants"]
    width = SLOTS // len(variants)
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    rows = []
    for unit_id in unit_ids:
        s = slot(experiment["experiment_id"], unit_id)
        vid = min(s // width, len(variants) - 1)
        name, params = variants[vid]
        rows.append(
            {
                "unit_type": experiment["unit_type"],
                "unit_id": unit_id,
                "experiment_id": experiment["experiment_id"],
                "variant_id": vid,
                "variant_name": name,
                "is_control": vid == 0,
                "layer_id": experiment["layer_id"],
                "domain_id": experiment.get("domain_id", "main"),
                "layer_priority": experiment["layer_priority"],
                "service": experiment["service"],
                "slot": s,
                "params": json.dumps(params, sort_keys=True, separators=(",", ":")),
                "definitions_version": "sample-1",
                "run_id": run_id,
                "assigned_at": now,
            }
        )
    return rows


def sample_tables(
    devices: int, users: int, urls: int, experiments: list[dict[str, Any]] | None = None
) -> tuple[pa.Table, pa.Table]:
    """(assignments, experiments): every device in each device experiment, and so on."""
    import pyarrow as pa

    experiments = experiments or SAMPLE_EXPERIMENTS
    ids = {
        "device_id": [f"d{i:08d}" for i in range(devices)],
        "user_id": [f"u{i:08d}" for i in range(users)],
        "url": [f"https://app.example.com/p/{i}" for i in range(urls)],
    }
    rows = []
    for e in experiments:
        rows.extend(assignment_rows(e, ids[e["unit_type"]]))
    return pa.Table.from_pylist(rows, schema=assignments_schema()), experiments_table(experiments)


def write_tables(
    settings: Settings,
    assignments: pa.Table,
    experiments: pa.Table,
    *,
    assignments_table: str = "assignments",
    experiments_table_name: str = "experiments",
) -> tuple[int, int]:
    """Write (overwrite) both Iceberg tables through pyiceberg; returns the new snapshot ids."""
    from strata.stack import iceberg_catalog

    catalog = iceberg_catalog(settings)
    catalog.create_namespace_if_not_exists(settings.namespace)
    snapshots = []
    for name, data in ((assignments_table, assignments), (experiments_table_name, experiments)):
        table = catalog.create_table_if_not_exists(
            f"{settings.namespace}.{name}", schema=data.schema
        )
        if table.current_snapshot() is None:
            table.append(data)
        else:
            table.overwrite(data)
        snapshots.append(table.current_snapshot().snapshot_id)
    return snapshots[0], snapshots[1]
