"""Stack health checks used by the demo DAG and `make demo`: each proves one hand-off works."""

from __future__ import annotations

import time
import uuid

from strata.config import Settings, get_settings
from strata.errors import StackError
from strata.stack import iceberg_catalog, redis_client


def redis_round_trip(settings: Settings | None = None) -> dict[str, float | str]:
    """Write, read back and delete one key with AUTH; returns the server version and latency."""
    import redis

    client = redis_client(settings or get_settings(), socket_timeout=5)
    key, value = f"strata:health:{uuid.uuid4().hex}", uuid.uuid4().hex
    try:
        started = time.perf_counter()
        client.set(key, value, ex=60)
        echoed = client.get(key)
        client.delete(key)
        elapsed_ms = (time.perf_counter() - started) * 1000
        version = client.info("server")["redis_version"]
    except redis.AuthenticationError as exc:
        raise StackError(f"Redis at {client.connection_pool.connection_kwargs.get('host')} "
                         f"refused our credentials: {exc}") from exc
    except redis.ConnectionError as exc:
        raise StackError(f"Redis is not reachable ({exc}); start it with scripts/redis.sh start") from exc
    finally:
        client.close()
    if echoed != value.encode():
        raise StackError(f"Redis round trip returned {echoed!r}, expected {value!r}")
    return {"redis_version": version, "round_trip_ms": round(elapsed_ms, 3)}


def iceberg_row_counts(tables: list[str], settings: Settings | None = None) -> dict[str, int]:
    """Row counts read through pyiceberg (no JVM), from each table's current snapshot."""
    settings = settings or get_settings()
    catalog = iceberg_catalog(settings)
    counts = {}
    for name in tables:
        table = catalog.load_table(f"{settings.namespace}.{name}")
        counts[name] = table.scan().to_arrow().num_rows
    return counts
