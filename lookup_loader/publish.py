"""One publication: encode, write, verify and flip under the publisher lock, recorded in the
Iceberg ``publications`` table; and recovery, the last verified publication published again.

See ``lookup_loader.loader`` for the whole sequence and its guarantees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import redis as redis_lib

from lookup_loader.encode import Encoded, encode
from lookup_loader.resp import DEFAULT_WRITERS, write_version
from lookup_loader.source import (
    ASSIGNMENTS_TABLE,
    EXPERIMENTS_TABLE,
    PUBLICATIONS_TABLE,
    Source,
    read_source,
)
from lookup_loader.versions import (
    DEFAULT_SAMPLE,
    PublicationError,
    _client,
    _Lock,
    apply_tombstones,
    cleanup,
    drop_tombstones,
    flip,
    unlink_version,
    verify,
)
from strata import keyspace
from strata.config import Settings, get_settings
from strata.errors import DataError, StrataError
from strata.keyspace import (
    DEFAULT_PREFIX,
    UNIT_CODES,
    VERSION_RE,
    KeySpace,
    buckets_field,
    experiment_field,
    units_field,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import redis

log = logging.getLogger(__name__)

#: States of a ``publications`` row whose version went live (the rest: "failed", "unchanged").
WENT_LIVE = ("live", "recovered", "rollback")


class RollbackRefused(PublicationError):
    """A rollback refused before anything changed: an unknown version, or one no longer held in
    Redis whose recorded Iceberg snapshots are gone."""


def _keep(settings: Settings, keep: int | None) -> int:
    return settings.lookup_keep_versions if keep is None else keep


@dataclass(frozen=True)
class PublicationResult:
    """What one ``publish`` call did (also the row appended to the ``publications`` table)."""

    version: str
    state: str  # "live" (flipped now), "unchanged" (already live) or "failed" (recorded only)
    previous_version: str | None
    assignments_snapshot_id: int
    experiments_snapshot_id: int
    rows: int
    units: dict[str, int]
    experiments: int
    excluded_rows: dict[str, int]
    buckets: int
    bytes_sent: int
    tombstones_applied: int
    write_s: float
    verify_s: float
    duration_s: float
    published_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    error: str | None = None  # set on failed publications (state "failed")
    read_s: float = 0.0  # pyiceberg read of both tables (not in the Iceberg record)
    encode_s: float = 0.0  # building catalog and RESP stream (not in the Iceberg record)

    @property
    def units_per_s(self) -> float:
        return sum(self.units.values()) / self.write_s if self.write_s else 0.0


_PUBLICATION_FIELDS = (
    ("version", "string"),
    ("state", "string"),
    ("previous_version", "string"),
    ("assignments_table", "string"),
    ("assignments_snapshot_id", "int64"),
    ("experiments_snapshot_id", "int64"),
    ("rows", "int64"),
    ("device_units", "int64"),
    ("user_units", "int64"),
    ("url_units", "int64"),
    ("experiments", "int64"),
    ("excluded_rows", "int64"),
    ("buckets", "int64"),
    ("bytes_sent", "int64"),
    ("tombstones_applied", "int64"),
    ("write_s", "float64"),
    ("verify_s", "float64"),
    ("duration_s", "float64"),
    ("redis_prefix", "string"),
    ("error", "string"),
    ("experiments_table", "string"),  # added for recovery; null in older rows
)


def record_publication(
    settings: Settings,
    result: PublicationResult,
    *,
    table_name: str = PUBLICATIONS_TABLE,
    assignments_table: str = ASSIGNMENTS_TABLE,
    experiments_table: str = EXPERIMENTS_TABLE,
    as_of: dt.date | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> None:
    """Append one row to the Iceberg ``publications`` table (created on first use; columns
    added since are added to an older table). ``as_of`` is the day the version was built for
    (part of its id; :func:`recover` rebuilds the same version from it)."""
    import pyarrow as pa

    from strata.stack import iceberg_catalog

    schema = pa.schema(
        [pa.field(n, getattr(pa, t)()) for n, t in _PUBLICATION_FIELDS]
        + [pa.field("published_at", pa.timestamp("us", tz="UTC")), pa.field("as_of", pa.date32())]
    )
    row = asdict(result) | {
        "assignments_table": assignments_table,
        "experiments_table": experiments_table,
        "as_of": as_of,
        "device_units": result.units.get("device_id", 0),
        "user_units": result.units.get("user_id", 0),
        "url_units": result.units.get("url", 0),
        "excluded_rows": sum(result.excluded_rows.values()),
        "redis_prefix": prefix,
    }
    data = pa.Table.from_pylist([{f.name: row[f.name] for f in schema}], schema=schema)
    catalog = iceberg_catalog(settings)
    table = catalog.create_table_if_not_exists(f"{settings.namespace}.{table_name}", schema=schema)
    if {f.name for f in table.schema().fields} != set(schema.names):
        with table.update_schema() as update:  # a table created before these columns existed
            update.union_by_name(schema)
        table = catalog.load_table(f"{settings.namespace}.{table_name}")
    table.append(data)


# --------------------------------------------------------------------------------------------
# The publication
# --------------------------------------------------------------------------------------------


def publish(
    settings: Settings | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    assignments_table: str = ASSIGNMENTS_TABLE,
    experiments_table: str = EXPERIMENTS_TABLE,
    publications_table: str | None = PUBLICATIONS_TABLE,
    as_of: dt.date | None = None,
    writers: int = DEFAULT_WRITERS,
    sample: int = DEFAULT_SAMPLE,
    max_units_per_s: float | None = None,
    keep: int | None = None,
) -> PublicationResult:
    """Publish the current ``assignments`` snapshot as a new live version (see module doc).

    ``max_units_per_s`` throttles writing to spare a busy production Redis. ``publications_table``
    None skips the Iceberg record (benchmarks). ``keep``: retired versions kept in Redis
    afterwards (default: the ``lookup_keep_versions`` setting).
    """
    settings = settings or get_settings()
    started = time.perf_counter()
    as_of = as_of or dt.datetime.now(dt.UTC).date()
    source = read_source(settings, assignments_table, experiments_table)
    return _publish_source(
        settings, source, as_of, started, prefix=prefix, experiments_table=experiments_table,
        publications_table=publications_table, writers=writers, sample=sample,
        max_units_per_s=max_units_per_s, keep=_keep(settings, keep),
    )  # fmt: skip


def _publish_source(
    settings: Settings,
    source: Source,
    as_of: dt.date,
    started: float,
    *,
    prefix: str,
    experiments_table: str,
    publications_table: str | None,
    writers: int,
    sample: int,
    max_units_per_s: float | None,
    keep: int,
    state: str = "live",
) -> PublicationResult:
    """Encode, write, verify and flip one source read at fixed snapshots; record the outcome
    (``state`` is what a successful flip is recorded as: "live", "recovered" or "rollback")."""
    assignments_table = source.assignments_table
    read_s = time.perf_counter() - started
    enc = encode(source, prefix, as_of)
    encode_s = time.perf_counter() - started - read_s
    client = _client(settings)
    lock = _Lock(client, prefix)
    record = {"table_name": publications_table, "assignments_table": assignments_table,
              "experiments_table": experiments_table, "as_of": as_of}  # fmt: skip
    locked = False
    try:
        lock.acquire()
        locked = True
        target = PublishTarget(settings, client, lock, prefix, writers, sample, max_units_per_s)
        result = _publish_locked(target, enc, source, started)
    except (redis_lib.RedisError, StrataError) as exc:
        error = (
            exc
            if isinstance(exc, StrataError)
            else PublicationError(
                f"publication of version {enc.version} failed ({exc}); "
                "the live version is untouched"
            )
        )
        if locked:  # remove what this publication wrote, so that it wedges no retry
            _remove_failed(client, enc.version, prefix, error)
        if publications_table:  # failures are recorded too, with their error
            failed = _result(enc, source, "failed", None, 0, 0, 0.0, 0.0, started)
            failed = dataclasses.replace(failed, error=str(error))
            try:
                record_publication(settings, failed, prefix=prefix, **record)
            except Exception as record_exc:  # keep the original error; say the record is missing
                error.add_note(f"recording the failure in {publications_table} failed too: "
                               f"{record_exc}")  # fmt: skip
        raise error from exc
    else:
        try:  # older versions; the flip is done, so a failure here only leaves them for later
            cleanup(prefix=prefix, keep=keep, client=client, locked=True)
        except (redis_lib.RedisError, StrataError) as exc:
            log.warning("cleanup after publishing %s failed (retried next time): %s",
                        enc.version, exc)  # fmt: skip
    finally:
        with contextlib.suppress(redis_lib.RedisError):  # else the lock expires on its own
            lock.release()
    result = dataclasses.replace(result, read_s=round(read_s, 4), encode_s=round(encode_s, 4))
    if result.state == "live" and state != "live":
        result = dataclasses.replace(result, state=state)
    if publications_table:
        record_publication(settings, result, prefix=prefix, **record)
    return result


def _remove_failed(client: redis.Redis, version: str, prefix: str, error: Exception) -> None:
    """Unlink the keys of a publication that failed (never the live version). ``UNLINK`` is
    allowed when Redis refuses writes for memory, so an OOM failure frees what it took."""
    ks = KeySpace(prefix)
    try:
        if (client.get(ks.live) or b"").decode() == version:
            return  # the failure came after the flip: the version serves, keep it
        unfinished = (None, keyspace.WRITING.encode(), keyspace.VERIFIED.encode())
        if client.hget(ks.meta(version), keyspace.STATE) not in unfinished:
            return  # failed before touching it: an older version of the same id (kept)
        unlink_version(client, version, prefix)
    except (redis_lib.RedisError, StrataError) as exc:
        error.add_note(
            f"removing the failed version {version} failed too ({exc}); "
            "`python -m lookup_loader cleanup` removes it once no publication holds the lock"
        )
    else:
        error.add_note(f"the failed version {version} was removed")


@dataclass(frozen=True)
class PublishTarget:
    """Where and how a locked publication writes: the server, its lock and prefix, the pace."""

    settings: Settings
    client: redis.Redis
    lock: _Lock
    prefix: str
    writers: int
    sample: int
    max_units_per_s: float | None


def _publish_locked(
    target: PublishTarget, enc: Encoded, source: Source, started: float
) -> PublicationResult:
    client, lock, prefix = target.client, target.lock, target.prefix
    ks = KeySpace(prefix)
    live = (client.get(ks.live) or b"").decode() or None
    if live == enc.version and client.exists(ks.meta(live)):  # else its keys are gone: rewrite
        return _result(enc, source, "unchanged", live, 0, 0, 0.0, 0.0, started)
    now = int(time.time() * 1000)
    meta = {
        keyspace.STATE: keyspace.WRITING,
        keyspace.CREATED_AT: now,
        keyspace.UPDATED_AT: now,
        keyspace.ASSIGNMENTS_SNAPSHOT_ID: source.assignments_snapshot_id,
        keyspace.EXPERIMENTS_SNAPSHOT_ID: source.experiments_snapshot_id,
        keyspace.ROWS: enc.rows,
        **{buckets_field(UNIT_CODES[t]): n for t, n in enc.buckets.items()},
        **{units_field(UNIT_CODES[t]): n for t, n in enc.units.items()},
        **{experiment_field(e): i for e, i in enc.experiment_index.items()},
    }
    pipe = client.pipeline(transaction=True)
    pipe.delete(ks.meta(enc.version), ks.catalog(enc.version))
    pipe.hset(ks.meta(enc.version), mapping=meta)
    if enc.catalog:
        pipe.hset(ks.catalog(enc.version), mapping=enc.catalog)
    pipe.zadd(ks.versions, {enc.version: now})
    pipe.execute()
    t0 = time.perf_counter()
    sent = write_version(
        target.settings,
        enc,
        writers=target.writers,
        max_units_per_s=target.max_units_per_s,
        heartbeat=lambda: (
            lock.refresh(),
            client.hset(ks.meta(enc.version), keyspace.UPDATED_AT, int(time.time() * 1000)),
        ),
    )
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    verify(client, enc, source, prefix=prefix, sample=target.sample)
    verify_s = time.perf_counter() - t0
    client.hset(ks.meta(enc.version), keyspace.STATE, keyspace.VERIFIED)
    since, applied, unknown = apply_tombstones(client, enc.version, prefix)
    previous, late = flip(client, enc.version, since, prefix)
    if unknown:
        drop_tombstones(client, enc.version, unknown, prefix)
    return _result(enc, source, "live", previous, sent, applied + late, write_s, verify_s, started)


def _result(
    enc: Encoded,
    source: Source,
    state: str,
    previous: str | None,
    sent: int,
    applied: int,
    write_s: float,
    verify_s: float,
    started: float,
) -> PublicationResult:
    return PublicationResult(
        version=enc.version,
        state=state,
        previous_version=previous,
        assignments_snapshot_id=source.assignments_snapshot_id,
        experiments_snapshot_id=source.experiments_snapshot_id,
        rows=enc.rows,
        units=dict(enc.units),
        experiments=len(enc.catalog),
        excluded_rows=dict(enc.excluded_rows),
        buckets=sum(enc.buckets.values()),
        bytes_sent=sent,
        tombstones_applied=applied,
        write_s=round(write_s, 4),
        verify_s=round(verify_s, 4),
        duration_s=round(time.perf_counter() - started, 4),
    )


# --------------------------------------------------------------------------------------------
# Recovery and rollback: a version that went live, rebuilt from its recorded Iceberg snapshots
# --------------------------------------------------------------------------------------------


def _went_live(settings: Settings, prefix: str, table_name: str) -> pa.Table | None:
    """Rows of ``publications`` for ``prefix`` whose version went live, newest first (None: no
    such table)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from strata.stack import iceberg_catalog

    ident = f"{settings.namespace}.{table_name}"
    catalog = iceberg_catalog(settings)
    if not catalog.table_exists(ident):
        return None
    rows = catalog.load_table(ident).scan().to_arrow()
    went_live = pc.is_in(rows["state"], pa.array(WENT_LIVE))
    mask = pc.and_(pc.equal(rows["redis_prefix"], prefix), went_live)
    return rows.filter(mask).sort_by([("published_at", "descending")])


def last_publication(
    settings: Settings,
    *,
    prefix: str = DEFAULT_PREFIX,
    table_name: str = PUBLICATIONS_TABLE,
) -> dict[str, Any]:
    """The newest row of ``publications`` for ``prefix`` that went live (state "live",
    "recovered" or "rollback"): what :func:`recover` republishes."""
    ident = f"{settings.namespace}.{table_name}"
    done = _went_live(settings, prefix, table_name)
    if done is None:
        raise PublicationError(f"nothing to recover: the Iceberg table {ident} does not exist")
    if done.num_rows == 0:
        raise PublicationError(
            f"nothing to recover: {ident} records no publication of prefix {prefix!r} that went "
            "live; run `python -m lookup_loader publish`"
        )
    row: dict[str, Any] = done.slice(0, 1).to_pylist()[0]
    return row


def publication_of(
    settings: Settings,
    version: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    table_name: str = PUBLICATIONS_TABLE,
) -> dict[str, Any] | None:
    """The newest row of ``publications`` recording that ``version`` of ``prefix`` went live, or
    None (never recorded, or no such table)."""
    import pyarrow.compute as pc

    done = _went_live(settings, prefix, table_name)
    if done is None:
        return None
    rows = done.filter(pc.equal(done["version"], version))
    return rows.slice(0, 1).to_pylist()[0] if rows.num_rows else None


def _recorded_source(settings: Settings, row: dict[str, Any]) -> tuple[Source, dt.date, str]:
    """(source, as_of, experiments table) of a ``publications`` row: both tables read at the
    snapshot ids it recorded, for its day (so the same version id and content). Raises
    ``DataError`` when a table or a snapshot is gone (expired)."""
    experiments_table = row.get("experiments_table") or EXPERIMENTS_TABLE
    source = read_source(
        settings,
        row["assignments_table"],
        experiments_table,
        snapshot_ids=(row["assignments_snapshot_id"], row["experiments_snapshot_id"]),
    )
    return source, row.get("as_of") or row["published_at"].date(), experiments_table


def republish(
    settings: Settings,
    row: dict[str, Any],
    *,
    prefix: str = DEFAULT_PREFIX,
    publications_table: str = PUBLICATIONS_TABLE,
    state: str = "recovered",
    writers: int = DEFAULT_WRITERS,
    sample: int = DEFAULT_SAMPLE,
    keep: int | None = None,
) -> PublicationResult:
    """Publish again the version a ``publications`` row records, from its Iceberg snapshots
    (assignment is not re-run): written beside the live version, verified against that source,
    flipped like :func:`publish`, recorded with ``state`` ("recovered", "rollback")."""
    started = time.perf_counter()
    source, as_of, experiments_table = _recorded_source(settings, row)
    return _publish_source(
        settings, source, as_of, started, prefix=prefix, experiments_table=experiments_table,
        publications_table=publications_table, writers=writers, sample=sample,
        max_units_per_s=None, keep=_keep(settings, keep), state=state,
    )  # fmt: skip


def _counts(result: PublicationResult) -> dict[str, Any]:
    return {
        "rows": result.rows,
        **{t: result.units.get(t, 0) for t in UNIT_CODES},
        "experiments": result.experiments,
        "tombstones_applied": result.tombstones_applied,
        "duration_s": result.duration_s,
    }


def recover(
    settings: Settings | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    publications_table: str = PUBLICATIONS_TABLE,
    writers: int = DEFAULT_WRITERS,
    sample: int = DEFAULT_SAMPLE,
    keep: int | None = None,
) -> dict[str, Any]:
    """Serve again the last verified publication after Redis lost it (a restart without its
    data, a replaced node), without re-running assignment.

    Does nothing while a live version is served (``state: "unchanged"``). Otherwise reads the
    newest publication of ``prefix`` that went live from the Iceberg ``publications`` table,
    reads ``assignments`` and ``experiments`` at the snapshot ids it recorded, and publishes
    them exactly like :func:`publish` (same day, so the same version id and content; written
    beside, verified against the source, flipped, recorded with state "recovered"). Fast-path
    removals are re-applied if the tombstones survived (they live in Redis only).

    Returns counts, e.g. ``{"state": "recovered", "version": "3f2a...", "rows": 5400,
    "device_id": 3000, "user_id": 1200, "url": 40, "experiments": 4, "tombstones_applied": 0,
    "duration_s": 1.2}``. Raises ``PublicationError`` (nothing recorded, snapshot expired, a
    publication in progress) or ``StackError`` (Redis unreachable).
    """
    settings = settings or get_settings()
    client = _client(settings)
    ks = KeySpace(prefix)
    live = (client.get(ks.live) or b"").decode() or None
    counts = {"rows": 0, **dict.fromkeys(UNIT_CODES, 0), "experiments": 0,
              "tombstones_applied": 0}  # fmt: skip
    if live and client.exists(ks.meta(live)):
        return {"state": "unchanged", "version": live, **counts, "duration_s": 0.0}
    last = last_publication(settings, prefix=prefix, table_name=publications_table)
    result = republish(
        settings, last, prefix=prefix, publications_table=publications_table,
        state="recovered", writers=writers, sample=sample, keep=keep,
    )  # fmt: skip
    return {"state": result.state, "version": result.version, **_counts(result)}


def held_versions(client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> dict[str, dict[str, str]]:
    """Retired versions still stored in Redis (a rollback to one is one flip): version -> its
    metadata."""
    ks = KeySpace(prefix)
    out = {}
    for raw in client.zrevrange(ks.versions, 0, -1):
        meta = {k.decode(): v.decode() for k, v in client.hgetall(ks.meta(raw.decode())).items()}
        if meta.get(keyspace.STATE) == keyspace.RETIRED:
            out[raw.decode()] = meta
    return out


def _previous(
    settings: Settings,
    live: str | None,
    held: dict[str, dict[str, str]],
    prefix: str,
    publications_table: str | None,
) -> str:
    """The version live before the current one: the held version retired last, else the newest
    other version ``publications`` records as gone live."""
    if not live:
        raise RollbackRefused(
            f"no live version of prefix {prefix!r} to roll back from; name a VERSION, or "
            "`recover` serves the last publication again"
        )
    if held:
        return max(held, key=lambda v: (int(held[v].get(keyspace.RETIRED_AT) or 0), v))
    done = _went_live(settings, prefix, publications_table) if publications_table else None
    for version in done["version"].to_pylist() if done is not None else []:
        if version != live:
            return str(version)
    raise RollbackRefused(
        f"no previous version of prefix {prefix!r}: none is held in Redis and "
        f"{publications_table} records no other publication that went live"
    )


def _flip_held(
    settings: Settings, client: redis.Redis, version: str, prefix: str, keep: int
) -> tuple[str | None, int]:
    """Make a held (retired) version live again through the publication's own flip: its
    tombstones re-applied before, the late ones by the one flip script. Returns (previous live
    version, removals applied). On a failure before the flip the version is retired again."""
    ks = KeySpace(prefix)
    lock = _Lock(client, prefix)
    lock.acquire()
    try:
        if client.hget(ks.meta(version), keyspace.STATE) != keyspace.RETIRED.encode():
            raise RollbackRefused(f"version {version} is no longer held in Redis; retry")
        now = int(time.time() * 1000)
        client.hset(ks.meta(version), mapping={keyspace.STATE: keyspace.VERIFIED,
                                               keyspace.UPDATED_AT: now})  # fmt: skip
        try:
            since, applied, unknown = apply_tombstones(client, version, prefix)
            previous, late = flip(client, version, since, prefix)
        except BaseException:
            with contextlib.suppress(redis_lib.RedisError):
                if (client.get(ks.live) or b"").decode() != version:
                    client.hset(ks.meta(version), keyspace.STATE, keyspace.RETIRED)
            raise
        if unknown:
            drop_tombstones(client, version, unknown, prefix)
        try:
            cleanup(settings, prefix=prefix, keep=keep, client=client, locked=True)
        except (redis_lib.RedisError, StrataError) as exc:
            log.warning("cleanup after rolling back to %s failed (retried next time): %s",
                        version, exc)  # fmt: skip
    finally:
        with contextlib.suppress(redis_lib.RedisError):
            lock.release()
    return previous, applied + late


def _held_result(
    version: str,
    meta: dict[str, str],
    previous: str | None,
    applied: int,
    recorded: dict[str, Any] | None,
    started: float,
) -> PublicationResult:
    """The ``publications`` row of a rollback to a held version, from its Redis metadata."""
    return PublicationResult(
        version=version,
        state="rollback",
        previous_version=previous,
        assignments_snapshot_id=int(meta[keyspace.ASSIGNMENTS_SNAPSHOT_ID]),
        experiments_snapshot_id=int(meta[keyspace.EXPERIMENTS_SNAPSHOT_ID]),
        rows=int(meta.get(keyspace.ROWS, 0)),
        units={t: int(meta.get(units_field(c), 0)) for t, c in UNIT_CODES.items()},
        experiments=sum(k.startswith(experiment_field("")) for k in meta),
        excluded_rows={"recorded": int((recorded or {}).get("excluded_rows") or 0)},
        buckets=sum(int(meta.get(buckets_field(c), 0)) for c in UNIT_CODES.values()),
        bytes_sent=0,
        tombstones_applied=applied,
        write_s=0.0,
        verify_s=0.0,
        duration_s=round(time.perf_counter() - started, 4),
    )


def rollback(
    settings: Settings | None = None,
    version: str | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    publications_table: str | None = PUBLICATIONS_TABLE,
    writers: int = DEFAULT_WRITERS,
    sample: int = DEFAULT_SAMPLE,
    keep: int | None = None,
) -> dict[str, Any]:
    """Make an earlier version live again (default: the one live before the current one).

    A version still held in Redis (the ``lookup_keep_versions`` newest retired ones) becomes
    live in one pointer flip — the publication's own flip script, after re-applying the
    fast-path tombstones — with nothing written but its state. An older one is republished from
    the Iceberg snapshots its ``publications`` row recorded (:func:`republish`), for its day, so
    the same version id and content. Every rollback is recorded in ``publications`` with state
    "rollback" and the version it replaced as ``previous_version``; a republished one also
    records its write and verify times.

    Returns ``{"state": "rollback", "version", "previous_version", "how": "held" |
    "republished", "rows", "device_id", "user_id", "url", "experiments",
    "tombstones_applied", "duration_s"}``; ``state`` "unchanged" when ``version`` is live.
    Raises :class:`RollbackRefused`, with nothing changed, for an unknown version or one not
    held whose snapshots are gone; ``PublicationError`` when a publication holds the lock.
    """
    settings = settings or get_settings()
    keep = _keep(settings, keep)
    started = time.perf_counter()
    client = _client(settings)
    ks = KeySpace(prefix)
    live = (client.get(ks.live) or b"").decode() or None
    held = held_versions(client, prefix)
    if version is None:
        version = _previous(settings, live, held, prefix, publications_table)
    elif not VERSION_RE.match(version):
        raise RollbackRefused(f"unknown version {version!r}: a version id is lowercase hex")
    if version == live:
        zero = {"rows": 0, **dict.fromkeys(UNIT_CODES, 0), "experiments": 0,
                "tombstones_applied": 0, "duration_s": 0.0}  # fmt: skip
        return {"state": "unchanged", "version": live, "previous_version": live, "how": "live",
                **zero}  # fmt: skip
    recorded = (
        publication_of(settings, version, prefix=prefix, table_name=publications_table)
        if publications_table
        else None
    )
    if version in held:
        previous, applied = _flip_held(settings, client, version, prefix, keep)
        result = _held_result(version, held[version], previous, applied, recorded, started)
        if publications_table:
            record_publication(
                settings,
                result,
                table_name=publications_table,
                assignments_table=(recorded or {}).get("assignments_table") or ASSIGNMENTS_TABLE,
                experiments_table=(recorded or {}).get("experiments_table") or EXPERIMENTS_TABLE,
                as_of=(recorded or {}).get("as_of"),
                prefix=prefix,
            )
        how = "held"
    else:
        if recorded is None:
            raise RollbackRefused(
                f"unknown version {version}: not held in Redis under {prefix!r} and "
                f"{publications_table or 'no publications table'} records no publication of it "
                "that went live"
            )
        try:
            source, as_of, experiments_table = _recorded_source(settings, recorded)
        except DataError as exc:
            raise RollbackRefused(
                f"version {version} is no longer held in Redis and cannot be republished: {exc}"
            ) from exc
        result = _publish_source(
            settings, source, as_of, started, prefix=prefix, experiments_table=experiments_table,
            publications_table=publications_table, writers=writers, sample=sample,
            max_units_per_s=None, keep=keep, state="rollback",
        )  # fmt: skip
        how = "republished"
    return {
        "state": result.state,
        "version": result.version,
        "previous_version": result.previous_version,
        "how": how,
        **_counts(result),
    }
