"""Stack health checks used by the demo DAG and `make demo`: each proves one hand-off works;
``lookup_status`` tells whether the lookup table is served (what triggers a recovery)."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from strata.config import Settings, get_settings
from strata.errors import StackError
from strata.stack import iceberg_catalog, redis_client

if TYPE_CHECKING:
    import pyarrow as pa


def redis_round_trip(settings: Settings | None = None) -> dict[str, float | str]:
    """Write, read back and delete one key as the loader's (writer) user; returns the server
    version (from ``HELLO``: the writer may not run ``INFO``) and the latency."""
    import redis

    client = redis_client(settings or get_settings(), role="writer", socket_timeout=5)
    key, value = f"strata:health:{uuid.uuid4().hex}", uuid.uuid4().hex
    try:
        started = time.perf_counter()
        client.set(key, value, ex=60)
        echoed = client.get(key)
        client.delete(key)
        elapsed_ms = (time.perf_counter() - started) * 1000
        hello = client.execute_command("HELLO")
        fields = (
            dict(zip(hello[::2], hello[1::2], strict=True)) if isinstance(hello, list) else hello
        )
        version = fields[b"version"].decode()
    except redis.AuthenticationError as exc:
        raise StackError(
            f"Redis at {client.connection_pool.connection_kwargs.get('host')} "
            f"refused our credentials: {exc}"
        ) from exc
    except redis.ConnectionError as exc:
        raise StackError(
            f"Redis is not reachable ({exc}); start it with scripts/redis.sh start"
        ) from exc
    finally:
        client.close()
    if echoed != value.encode():
        raise StackError(f"Redis round trip returned {echoed!r}, expected {value!r}")
    return {"redis_version": version, "round_trip_ms": round(elapsed_ms, 3)}


def lookup_status(settings: Settings | None = None, prefix: str | None = None) -> dict[str, Any]:
    """Whether the lookup table is served, as the read-only user sees it: ``{"status": "ok",
    "reason": None, "live_version": ...}``, or ``"unavailable"`` with the reason
    (``no_live_version`` after a Redis that lost its data: run ``lookup_loader.loader.recover``;
    ``unreachable``, ``loading``, ... otherwise) and ``retry_after`` seconds. Never raises for
    Redis trouble: a health check reports it."""
    from strata.lookup import DEFAULT_PREFIX, LookupClient, LookupUnavailable

    reader = LookupClient(settings or get_settings(), prefix=prefix or DEFAULT_PREFIX)
    try:
        version = reader.serving_version()
    except LookupUnavailable as exc:
        return {"status": "unavailable", "reason": exc.reason, "live_version": None,
                "retry_after": exc.retry_after, "detail": str(exc)}  # fmt: skip
    finally:
        reader.close()
    return {"status": "ok", "reason": None, "live_version": version}


def iceberg_row_counts(tables: list[str], settings: Settings | None = None) -> dict[str, int]:
    """Row counts read through pyiceberg (no JVM), from each table's current snapshot."""
    settings = settings or get_settings()
    catalog = iceberg_catalog(settings)
    counts = {}
    for name in tables:
        table = catalog.load_table(f"{settings.namespace}.{name}")
        counts[name] = table.scan().to_arrow().num_rows
    return counts


def raw_events_profile(events: pa.Table) -> dict[str, int]:
    """What a raw events table holds, as counts: the mess a pipeline must handle, made visible.

    ``events`` has the raw events columns (e.g. pyiceberg ``table.scan().to_arrow()``).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from strata.synthetic import EVENT_NAMES

    def count(mask: pa.ChunkedArray) -> int:
        return int(pc.sum(pc.fill_null(mask, False).cast("int64")).as_py() or 0)

    has_id = pc.is_valid(events["event_id"])
    lag_us = pc.subtract(events["arrived_at"], events["event_at"]).cast("int64")
    hour_us = 3600 * 1_000_000
    return {
        "rows": events.num_rows,
        "duplicate_deliveries": count(has_id)
        - len(pc.unique(pc.filter(events["event_id"], has_id))),
        "arrived_over_1h_late": count(pc.greater(lag_us, hour_us)),
        "stamped_over_1d_after_arrival": count(pc.less(lag_us, -24 * hour_us)),
        "missing_event_id": count(pc.invert(has_id)),
        "unknown_event_name": count(
            pc.invert(pc.is_in(events["event_name"], value_set=pa.array(EVENT_NAMES)))
        ),
        "negative_value": count(pc.less(events["value"], 0)),
    }
