"""The versions in Redis around a publication: verification against the source, the flip with
its fast-path removals, the fast path itself, the publisher lock and cleanup.

Every server-side step is one of the scripts of ``strata.lookup_scripts``, built from the key
scheme of ``strata.keyspace``.
"""

from __future__ import annotations

import os
import random
import socket
import time
from typing import TYPE_CHECKING

import redis as redis_lib

from lookup_loader.encode import Encoded, _normalized_unit_ids
from lookup_loader.source import Source
from strata import keyspace
from strata.config import Settings, get_settings
from strata.errors import DataError, StackError, StrataError
from strata.keyspace import (
    DEFAULT_PREFIX,
    UNIT_CODES,
    KeySpace,
    buckets_field,
    check_unit_id,
    decode_tokens,
    normalize_url,
    tombstone_field,
    unit_hash,
)
from strata.lookup_scripts import (
    APPLY_TOMBSTONES_LUA,
    COUNT_LUA,
    DROP_TOMBSTONES_LUA,
    FLIP_LUA,
    INVALIDATE_LUA,
)
from strata.procs import pid_alive

if TYPE_CHECKING:
    import redis

#: Units compared field by field against the Iceberg source before the flip.
DEFAULT_SAMPLE = 1000
#: Previous versions kept after a flip (for rollback) unless ``keep`` is given: the default of
#: the ``lookup_keep_versions`` setting (``STRATA_LOOKUP_KEEP_VERSIONS``); older ones are unlinked.
KEEP_PREVIOUS = 1
#: A version still "writing" after this long belongs to a dead publisher and may be unlinked.
STALE_WRITING_S = 3600
#: The publisher lock expires this long after its last refresh (a killed loader frees it).
LOCK_TTL_S = 30


class PublicationError(StrataError):
    """A publication could not be written, verified or flipped; the live version is untouched."""


#: Buckets counted per COUNT_LUA call (about a millisecond of server time each).
COUNT_BUCKETS_PER_CALL = 2000
#: Tombstones per script call of the pre-flip pass (about a millisecond of server time each).
TOMBSTONES_PER_CALL = 1000


def apply_tombstones(
    client: redis.Redis, version: str, prefix: str = DEFAULT_PREFIX
) -> tuple[int, int, list[bytes]]:
    """Apply every fast-path removal to a verified version, before its flip and outside it.

    Walks the tombstones with ``HSCAN`` and applies ``TOMBSTONES_PER_CALL`` per script call, so
    no single step blocks Redis for long however many there are. Returns (the tombstone
    sequence number the pass started from, removals applied, fields whose experiment the version
    does not hold). Removals recorded during the pass have a higher sequence number; the flip
    applies those itself.
    """
    ks = KeySpace(prefix)
    since = int(client.get(ks.tombstone_seq) or 0)
    apply = client.register_script(APPLY_TOMBSTONES_LUA)
    applied, unknown, cursor = 0, [], 0
    while True:  # HSCAN's COUNT is a hint: a batch holds about that many (all of a small hash)
        cursor, batch = client.hscan(ks.tombstones, cursor, count=TOMBSTONES_PER_CALL)
        if batch:
            done, missing = apply(args=[prefix, version, *(x for p in batch.items() for x in p)])
            applied += int(done)
            unknown.extend(missing)
        if cursor == 0:
            return since, applied, unknown


def flip(
    client: redis.Redis, version: str, since: int, prefix: str = DEFAULT_PREFIX
) -> tuple[str | None, int]:
    """The atomic step: make a verified version live. Its work is bounded by the removals
    recorded after tombstone sequence number ``since`` (see :func:`apply_tombstones`), not by
    the number of tombstones. Returns (previous live version, late removals applied)."""
    prev, applied = client.register_script(FLIP_LUA)(
        args=[prefix, version, int(time.time() * 1000), since]
    )
    return prev.decode() or None, int(applied)


def drop_tombstones(
    client: redis.Redis, version: str, fields: list[bytes], prefix: str = DEFAULT_PREFIX
) -> int:
    """After the flip: drop the tombstones of experiments the live version does not publish."""
    drop = client.register_script(DROP_TOMBSTONES_LUA)
    return sum(
        int(drop(args=[prefix, version, *fields[i : i + TOMBSTONES_PER_CALL]]))
        for i in range(0, len(fields), TOMBSTONES_PER_CALL)
    )


def _client(settings: Settings) -> redis.Redis:
    from strata.stack import redis_client

    client = redis_client(settings, role="writer", socket_timeout=60)
    try:
        client.ping()
    except redis_lib.AuthenticationError as exc:
        raise StackError(f"Redis at {settings.redis_url} refused our credentials: {exc}") from exc
    except redis_lib.ConnectionError as exc:
        raise StackError(f"Redis at {settings.redis_url} is not reachable: {exc}") from exc
    return client


def invalidate(
    settings: Settings | None,
    unit_type: str,
    unit_id: str,
    experiment_id: str,
    *,
    prefix: str = DEFAULT_PREFIX,
) -> bool:
    """Fast path (seed 004 open question 1): take one unit out of one experiment *now*.

    Removes the unit's assignment from the live version in one atomic script and records a
    tombstone that every later publication re-applies at its flip, for as long as the experiment
    is published (tombstones of experiments no longer published are dropped). Returns whether the
    live version held that assignment. ``restore`` lifts a tombstone from the next publication on.
    """
    settings = settings or get_settings()
    if unit_type not in UNIT_CODES:
        raise DataError(f"unit_type {unit_type!r} is not one of {sorted(UNIT_CODES)}")
    unit_id = check_unit_id(normalize_url(unit_id) if unit_type == "url" else unit_id, unit_type)
    check_unit_id(experiment_id, "experiment id")
    client = _client(settings)
    now = int(time.time() * 1000)
    removed = client.eval(
        INVALIDATE_LUA,
        0,
        prefix,
        UNIT_CODES[unit_type],
        experiment_id,
        unit_id,
        unit_hash(unit_id),
        now,
    )
    return bool(removed)


def restore(
    settings: Settings | None,
    unit_type: str,
    unit_id: str,
    experiment_id: str,
    *,
    prefix: str = DEFAULT_PREFIX,
) -> bool:
    """Lift a fast-path removal: the unit comes back with the next publication."""
    settings = settings or get_settings()
    if unit_type == "url":
        unit_id = normalize_url(unit_id)
    client = _client(settings)
    field_ = tombstone_field(unit_type, unit_id, experiment_id)
    ks = KeySpace(prefix)
    pipe = client.pipeline(transaction=True)
    pipe.hdel(ks.tombstones, field_)
    pipe.zrem(ks.tombstone_log, field_)
    return bool(pipe.execute()[0])


def verify(
    client: redis.Redis,
    enc: Encoded,
    source: Source,
    *,
    prefix: str = DEFAULT_PREFIX,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
) -> None:
    """Counts per unit type from the server, and sampled units compared field by field.

    The expected side of the sample comes from the raw source rows (not from the encoded values),
    so an encoding bug shows up as a mismatch.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    ks = KeySpace(prefix)
    ver = enc.version
    count = client.register_script(COUNT_LUA)
    pipe = client.pipeline(transaction=False)
    spans = []
    for t, nb in enc.buckets.items():
        for lo in range(0, nb, COUNT_BUCKETS_PER_CALL):
            count(args=[ks.bucket_prefix(ver, t), lo, min(nb, lo + COUNT_BUCKETS_PER_CALL)],
                  client=pipe)  # fmt: skip
            spans.append(t)
    held = dict.fromkeys(enc.buckets, 0)
    for t, n in zip(spans, pipe.execute(), strict=True):
        held[t] += int(n)
    for t in enc.buckets:
        got = held[t]
        if got != enc.units[t]:
            raise PublicationError(
                f"version {ver}: Redis holds {got} {t} units, the source has {enc.units[t]}"
            )
    stored_catalog = {int(k): v.decode() for k, v in client.hgetall(ks.catalog(ver)).items()}
    if stored_catalog != enc.catalog:
        raise PublicationError(f"version {ver}: catalog in Redis differs from the source")
    n = enc.grouped.num_rows
    if n == 0:
        return
    picks = sorted(random.Random(seed).sample(range(n), min(sample, n)))
    units = enc.grouped.take(pa.array(picks)).select(["unit_type", "unit_id"]).to_pylist()
    rows = source.assignments
    wanted = pa.array([u["unit_id"] for u in units])
    lookup_ids = _normalized_unit_ids(rows)
    mask = pc.is_in(lookup_ids, wanted)
    subset = rows.filter(mask).select(["unit_type", "experiment_id", "variant_id"]).to_pylist()
    ids = lookup_ids.filter(mask).to_pylist()
    index = enc.experiment_index
    expected: dict[tuple[str, str], set[tuple[str, int]]] = {}
    for uid, r in zip(ids, subset, strict=True):
        if r["experiment_id"] in index:  # excluded (not served) experiments are not expected
            expected.setdefault((r["unit_type"], uid), set()).add(
                (r["experiment_id"], r["variant_id"])
            )
    names = {i: e for e, i in index.items()}
    pipe = client.pipeline(transaction=False)
    for u in units:
        h = unit_hash(u["unit_id"])
        pipe.hget(ks.bucket(ver, u["unit_type"], h, enc.buckets[u["unit_type"]]), u["unit_id"])
    for u, raw in zip(units, pipe.execute(), strict=True):
        got = {(names[e], v) for e, v in decode_tokens(raw or b"")}
        want = expected.get((u["unit_type"], u["unit_id"]), set())
        if got != want:
            raise PublicationError(
                f"version {ver}: {u['unit_type']} {u['unit_id']!r} holds {sorted(got)}, "
                f"the source says {sorted(want)}"
            )


class _Lock:
    """One publisher at a time per prefix; a killed publisher's lock is taken over at once."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.key = client, KeySpace(prefix).lock
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"

    def acquire(self) -> None:
        if self.client.set(self.key, self.token, nx=True, ex=LOCK_TTL_S):
            return
        holder = (self.client.get(self.key) or b"").decode()
        host, _, rest = holder.partition(":")
        pid = int(rest.partition(":")[0] or 0)
        if host == socket.gethostname() and pid and not pid_alive(pid):
            self.client.set(self.key, self.token, ex=LOCK_TTL_S)
            return
        raise PublicationError(f"another publication holds {self.key} ({holder}); retry later")

    def refresh(self) -> None:
        self.client.expire(self.key, LOCK_TTL_S)

    def release(self) -> None:
        if (self.client.get(self.key) or b"").decode() == self.token:
            self.client.delete(self.key)


def unlink_version(client: redis.Redis, version: str, prefix: str = DEFAULT_PREFIX) -> int:
    """Unlink every key of one version (bucket names are computed, no SCAN). Never the live one."""
    ks = KeySpace(prefix)
    if (client.get(ks.live) or b"").decode() == version:
        raise PublicationError(f"refusing to unlink the live version {version}")
    meta = {k.decode(): v.decode() for k, v in client.hgetall(ks.meta(version)).items()}
    keys = [ks.catalog(version), ks.meta(version)]
    for t in UNIT_CODES:
        nb = int(meta.get(buckets_field(UNIT_CODES[t]), 0))
        keys.extend(f"{ks.bucket_prefix(version, t)}{b}" for b in range(nb))
    unlinked = 0
    for i in range(0, len(keys), 1000):
        unlinked += client.unlink(*keys[i : i + 1000])
    client.zrem(ks.versions, version)
    return unlinked


def cleanup(
    settings: Settings | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    keep: int | None = None,
    client: redis.Redis | None = None,
    locked: bool = False,
) -> list[str]:
    """Unlink retired versions beyond the ``keep`` newest (default: the ``lookup_keep_versions``
    setting), and unfinished ones (left by a failed or killed publication).

    An unfinished version is removed at once when no publication can be working on it: the
    caller holds the publisher lock (``locked``), or cleanup takes the lock itself (free, or
    left by a dead process on this host). While another publication holds the lock, only
    versions untouched for ``STALE_WRITING_S`` are removed.
    """
    settings = settings or get_settings()
    keep = settings.lookup_keep_versions if keep is None else keep
    client = client or _client(settings)
    ks = KeySpace(prefix)
    lock = None
    if not locked:
        lock = _Lock(client, prefix)
        try:
            lock.acquire()
            locked = True
        except PublicationError:
            lock = None  # a publication is running: leave its version alone
    try:
        live = (client.get(ks.live) or b"").decode()
        now_ms = time.time() * 1000
        retired_kept = 0
        removed = []
        for raw in client.zrevrange(ks.versions, 0, -1):
            ver = raw.decode()
            if ver == live:
                continue
            meta = {k.decode(): v.decode() for k, v in client.hgetall(ks.meta(ver)).items()}
            state = meta.get(keyspace.STATE, keyspace.RETIRED)
            if state == keyspace.RETIRED:
                retired_kept += 1
                if retired_kept <= keep:
                    continue
            elif (
                not locked
                and now_ms - float(meta.get(keyspace.UPDATED_AT, 0)) < STALE_WRITING_S * 1e3
            ):
                continue  # the publication holding the lock may still be working on it
            unlink_version(client, ver, prefix)
            removed.append(ver)
        return removed
    finally:
        if lock is not None:
            lock.release()
