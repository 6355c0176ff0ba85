"""Publish the ``assignments`` table into Redis as a new version, verify it, flip one pointer.

A publication never touches the live version: it writes every bucket of a new version beside it
(pre-encoded RESP ``HSET`` commands streamed on raw sockets, several connections at once), checks
the server-side counts against the Iceberg source and a sample of units field by field, and only
then runs one Lua script that re-applies fast-path removals and sets ``strata:lk:live``. Readers
resolve the pointer and read their buckets inside one script, so they see the old version or the
new one, never a mix. A publication that dies half-way leaves the live version serving; the
version id is a digest of the source snapshots, so a re-run writes the same version again and
completes it. Older versions are unlinked afterwards (the previous one is kept for rollback).

Usage (the functions the CLI and the DAG call)::

    from lookup_loader.loader import publish, invalidate, cleanup, recover
    result = publish(settings)          # -> PublicationResult, also appended to `publications`
    invalidate(settings, "device_id", "d-42", "checkout_button")   # fast path, effective now
    recover(settings)   # Redis lost its data: the last verified publication again -> dict of counts
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import redis as redis_lib

from lookup_loader.keys import (
    DEFAULT_PREFIX,
    MAX_UNIT_ID_BYTES,
    UNIT_CODES,
    UNITS_PER_BUCKET,
    KeySpace,
    bucket_count,
    check_unit_id,
    decode_tokens,
    normalize_url,
    tombstone_field,
    unit_hash,
)
from strata import contracts
from strata.config import Settings, get_settings
from strata.errors import DataError, StackError, StrataError

if TYPE_CHECKING:
    import pyarrow as pa
    import redis

log = logging.getLogger(__name__)

#: Bumped when the stored layout changes; part of every version id.
FORMAT_VERSION = 1
ASSIGNMENTS_TABLE = contracts.ASSIGNMENTS
EXPERIMENTS_TABLE = contracts.EXPERIMENTS
PUBLICATIONS_TABLE = contracts.PUBLICATIONS
#: HSET commands per socket write (about 100k units, a few MB).
COMMANDS_PER_CHUNK = 2000
#: Parallel writer connections (Redis is single-threaded; 2 keep it busy while one encodes).
DEFAULT_WRITERS = 2
#: Units compared field by field against the Iceberg source before the flip.
DEFAULT_SAMPLE = 1000
#: Previous versions kept after a flip (for rollback); older ones are unlinked.
KEEP_PREVIOUS = 1
#: A version still "writing" after this long belongs to a dead publisher and may be unlinked.
STALE_WRITING_S = 3600
#: The publisher lock expires this long after its last refresh (a killed loader frees it).
LOCK_TTL_S = 30
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


class PublicationError(StrataError):
    """A publication could not be written, verified or flipped; the live version is untouched."""


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


@dataclass
class Encoded:
    """A version ready to send: catalog, meta, RESP command stream, and what verification needs."""

    version: str
    catalog: dict[int, str]  # experiment index -> experiment JSON
    experiment_index: dict[str, int]
    buckets: dict[str, int]  # unit type -> bucket count
    units: dict[str, int]
    rows: int
    excluded_rows: dict[str, int]
    stream: pa.Array  # RESP: each bucket's HSET header then its fields; one contiguous buffer
    command_bytes: Any  # numpy int64: byte offset of each HSET in the stream's buffer, plus end
    command_units: Any  # numpy array: units carried by each command
    grouped: pa.Table  # unit_type, unit_id, value (one row per unit)


# --------------------------------------------------------------------------------------------
# Source: two Iceberg tables at fixed snapshots
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Encoding: vectorised with pyarrow, ending in one contiguous RESP buffer
# --------------------------------------------------------------------------------------------


def _served_experiments(source: Source, as_of: dt.date) -> tuple[dict[str, dict], dict[str, str]]:
    """Experiments table -> {id: row} of served ones, and {id: reason} of excluded ones."""
    served, excluded = {}, {}
    for row in source.experiments.to_pylist():
        exp_id = row["experiment_id"]
        if exp_id in served or exp_id in excluded:
            raise DataError(f"experiments table: experiment_id {exp_id!r} appears twice")
        status = (row["status"] or "").lower()
        # only strata.contracts.SERVED_STATUSES are served; any other status, known or not, is not
        if not contracts.is_served(status):
            excluded[exp_id] = f"status_{status}"
        elif row["end_date"] is not None and row["end_date"] < as_of:
            excluded[exp_id] = "ended"
        else:
            served[exp_id] = row
    return served, excluded


#: The columns that describe a variant; every row of one (experiment, variant) must agree on them.
_VARIANT_COLUMNS = (
    "variant_name", "is_control", "layer_id", "domain_id", "layer_priority", "service", "params",
)  # fmt: skip


def _catalog_entries(rows: pa.Table, served: dict[str, dict]) -> dict[str, dict]:
    """One JSON-able entry per experiment; its variants and their params, checked for agreement.

    Fast path: one hash aggregation on the integer (experiment, variant) key computing min and max
    of every descriptive column; when min == max (and nulls are all-or-none) on every group, all
    rows of a variant agree and the min row describes it. Any disagreement falls back to the exact
    distinct-row path below, which names the experiment (or accepts params that differ only in
    JSON spelling).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = _VARIANT_COLUMNS
    exp_ids = sorted(set(pc.unique(rows["experiment_id"]).to_pylist()))
    code = pc.index_in(rows["experiment_id"], pa.array(exp_ids, pa.string()))
    table = pa.table({"e": code, "v": rows["variant_id"], **{c: rows[c] for c in cols}})
    aggs: list[tuple[Any, str]] = [([], "count_all")]
    for c in cols:
        aggs += [(c, "min"), (c, "max"), (c, "count")]
    stats = table.group_by(["e", "v"], use_threads=False).aggregate(aggs)
    agree = all(
        pc.all(pc.equal(stats[f"{c}_min"], stats[f"{c}_max"])).as_py() is not False
        and pc.all(
            pc.or_(
                pc.equal(stats[f"{c}_count"], 0),
                pc.equal(stats[f"{c}_count"], stats["count_all"]),
            )
        ).as_py()
        for c in cols
    )
    if not agree:
        return _catalog_entries_exact(rows, served)
    decoded = {"experiment_id": pa.array(exp_ids, pa.string()).take(stats["e"]),
               "variant_id": stats["v"], **{c: stats[f"{c}_min"] for c in cols}}  # fmt: skip
    return _entries_from_distinct(pa.table(decoded), served)


def _catalog_entries_exact(rows: pa.Table, served: dict[str, dict]) -> dict[str, dict]:
    """The distinct (experiment, variant, descriptive columns) rows, grouped exactly."""
    import pyarrow as pa

    # Group on dictionary indices, not on the strings (params repeat on every row): much faster.
    columns, dictionaries = {}, {}
    for c in ["experiment_id", "variant_id", *_VARIANT_COLUMNS]:
        col = rows[c].combine_chunks()
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            encoded = col.dictionary_encode()
            columns[c], dictionaries[c] = encoded.indices, encoded.dictionary
        else:
            columns[c] = col
    codes = pa.table(columns).group_by(list(columns)).aggregate([])
    decoded = {
        c: (dictionaries[c].take(codes[c]) if c in dictionaries else codes[c]) for c in columns
    }
    return _entries_from_distinct(pa.table(decoded), served)


def _entries_from_distinct(distinct: pa.Table, served: dict[str, dict]) -> dict[str, dict]:
    keys = ["experiment_id", "variant_id"]
    entries: dict[str, dict] = {}
    for r in distinct.sort_by([(k, "ascending") for k in keys]).to_pylist():
        exp_id, meta = r["experiment_id"], served[r["experiment_id"]]
        entry = entries.setdefault(
            exp_id,
            {
                "id": exp_id,
                "name": meta["name"],
                "startDate": meta["start_date"].isoformat() if meta["start_date"] else None,
                "endDate": meta["end_date"].isoformat() if meta["end_date"] else None,
                "key": meta["deployment_key"],
                "layer": r["layer_id"],
                "domain": r["domain_id"],
                "priority": r["layer_priority"],
                "service": r["service"],
                "variants": {},
            },
        )
        where = f"assignments: experiment {exp_id!r}"
        for attr, col in (("layer", "layer_id"), ("priority", "layer_priority")):
            if entry[attr] != r[col]:
                raise DataError(f"{where} has more than one {col}: {entry[attr]!r}, {r[col]!r}")
        vid = str(r["variant_id"])
        try:
            params = json.loads(r["params"]) if r["params"] else {}
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} variant {vid}: params is not JSON ({exc})") from exc
        if not isinstance(params, dict):
            raise DataError(f"{where} variant {vid}: params must be a JSON object")
        variant = {"name": r["variant_name"], "control": bool(r["is_control"]), "params": params}
        if entry["variants"].setdefault(vid, variant) != variant:
            raise DataError(
                f"{where} variant {vid} has different names/params on different rows "
                "(params must be the variant's own; merging happens in the reader)"
            )
    return entries


def _string_bytes(arr: pa.Array) -> tuple[Any, Any]:
    """(offsets as int64 numpy, data bytes as uint8 numpy) of a string/binary array, zero-copy."""
    import numpy as np
    import pyarrow as pa

    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    width = np.int64 if large else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=width, count=len(arr) + 1,
                            offset=arr.offset * np.dtype(width).itemsize)  # fmt: skip
    data = arr.buffers()[2]
    values = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), values


def _crc32_table() -> Any:
    import numpy as np

    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


def crc32_array(arr: pa.Array) -> Any:
    """``zlib.crc32`` of every string of an Arrow string array, vectorised with numpy.

    Byte position by byte position over all strings at once (strings sorted by length, so the
    ones still going are a prefix): ~10 numpy passes for 10-byte ids instead of a Python call and
    a bytes object per id. Equal to ``lookup_loader.keys.unit_hash`` (tested).
    """
    import numpy as np

    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint32)
    offsets, data = _string_bytes(arr)
    starts, lengths = offsets[:-1], np.diff(offsets)
    # lengths <= MAX_UNIT_ID_BYTES after the checks: a 16-bit key gets numpy's O(n) radix sort
    short = int(lengths.max()) < (1 << 16)
    key = (np.int64(1 << 16) - 1 - lengths).astype(np.uint16) if short else -lengths
    by_length = np.argsort(key, kind="stable")
    starts, lengths = starts[by_length], lengths[by_length]
    # active[j] = how many strings are longer than j (a prefix, lengths being descending)
    active = np.searchsorted(-lengths, -np.arange(int(lengths[0]) if n else 0), side="left")
    table = _crc32_table()
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    pos = starts.copy()
    for j, m in enumerate(active):
        head = crc[:m]
        byte = data[pos[:m]]
        crc[:m] = table[(head ^ byte) & 0xFF] ^ (head >> 8)
        pos[:m] += 1
        del j
    out = np.empty(n, np.uint32)
    out[by_length] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def _has_control_bytes(arr: pa.Array) -> bool:
    """Any byte < 0x20 or == 0x7f in the strings (UTF-8 continuation bytes are >= 0x80)."""
    import numpy as np

    offsets, data = _string_bytes(arr)
    span = data[int(offsets[0]) : int(offsets[-1])] if len(arr) else data[:0]
    return bool(np.any((span < 0x20) | (span == 0x7F)))


def _normalized_unit_ids(rows: pa.Table) -> pa.Array:
    """``unit_id`` with url units in their stored normal form (only url rows go through Python)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = rows["unit_id"].combine_chunks() if isinstance(rows["unit_id"], pa.ChunkedArray) else (
        rows["unit_id"])  # fmt: skip
    is_url = pc.equal(rows["unit_type"], "url")
    if isinstance(is_url, pa.ChunkedArray):
        is_url = is_url.combine_chunks()
    if not pc.any(is_url).as_py():
        return ids
    fixed = pa.array([normalize_url(u) for u in ids.filter(is_url).to_pylist()], ids.type)
    return pc.replace_with_mask(ids, is_url, fixed)


def _check_units(rows: pa.Table) -> pa.Table:
    """Reject bad unit types / ids with the offending row named; normalise url units."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for col in ("unit_type", "unit_id", "experiment_id", "variant_id", "layer_id"):
        nulls = rows[col].null_count
        if nulls:
            raise DataError(f"assignments: {nulls} rows have a null {col}")
    bad_type = pc.invert(pc.is_in(rows["unit_type"], pa.array(list(UNIT_CODES))))
    if pc.any(bad_type).as_py():
        example = rows.filter(bad_type).slice(0, 1).to_pylist()[0]
        raise DataError(
            f"assignments: unit_type {example['unit_type']!r} (unit {example['unit_id']!r}, "
            f"experiment {example['experiment_id']!r}) is not one of {sorted(UNIT_CODES)}"
        )
    for col in ("unit_id", "experiment_id"):
        values = rows[col].combine_chunks()
        lengths = pc.binary_length(values)
        if len(values) and (
            _has_control_bytes(values)
            or pc.max(lengths).as_py() > MAX_UNIT_ID_BYTES
            or pc.min(lengths).as_py() == 0
        ):  # rare: find and name the offending row
            suspicious = pc.or_(
                pc.match_substring_regex(values, r"[\x00-\x1f\x7f]"),
                pc.or_(pc.greater(lengths, MAX_UNIT_ID_BYTES), pc.equal(lengths, 0)),
            )
            example = rows.filter(suspicious).slice(0, 1).to_pylist()[0]
            check_unit_id(
                example[col], f"assignments {col} (experiment {example['experiment_id']!r})"
            )
    ids = _normalized_unit_ids(rows)
    return rows.set_column(rows.schema.get_field_index("unit_id"), "unit_id", ids)


def _concat(*parts: Any) -> pa.Array:
    """Row-wise concatenation into ``large_string`` (64-bit offsets: a version's RESP stream may
    exceed 2 GiB); ``str`` parts are literals, arrays of any type are cast to text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cast = [
        pa.scalar(p, pa.large_string()) if isinstance(p, str) else pc.cast(p, pa.large_string())
        for p in parts
    ]
    out = pc.binary_join_element_wise(*cast, pa.scalar("", pa.large_string()))
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def _group_units(type_idx: Any, exp_idx: Any, crc: Any, uid: pa.Array) -> tuple[Any, Any]:
    """Sort rows so each unit's rows are adjacent (experiment order inside); find unit starts.

    Sorts on one integer key (unit type, crc32 of the id, experiment index) instead of hashing
    strings; rows of different units whose ids share a crc32 (about n^2 / 2^33 pairs) are put
    in order by id in Python. Returns (row order, boolean "a new unit starts here" per sorted row).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(type_idx)
    key = (type_idx.astype(np.uint64) << np.uint64(61)) | (crc.astype(np.uint64) << np.uint64(29))
    key |= exp_idx.astype(np.uint64)
    order = np.argsort(key, kind="quicksort")
    unit_key = key[order] >> np.uint64(29)
    same_key = unit_key[1:] == unit_key[:-1]
    ids = uid.take(pa.array(order))
    same_id = pc.equal(ids.slice(1), ids.slice(0, max(n - 1, 0))).to_numpy(zero_copy_only=False)
    starts = np.ones(n, dtype=bool)
    starts[1:] = ~(same_key & same_id)
    clashes = np.flatnonzero(same_key & ~same_id)  # two ids with one crc32 in one run
    if len(clashes):
        run_starts = np.flatnonzero(np.concatenate([[True], ~same_key]))
        for run in sorted({int(run_starts[np.searchsorted(run_starts, c, "right") - 1])
                           for c in clashes}):  # fmt: skip
            end = run + 1
            while end < n and same_key[end - 1]:
                end += 1
            seg = order[run:end]
            texts = uid.take(pa.array(seg)).to_pylist()
            resorted = sorted(range(len(seg)), key=lambda i: (texts[i], int(exp_idx[seg[i]])))
            order[run:end] = seg[resorted]
            texts = [texts[i] for i in resorted]
            starts[run] = True
            for i in range(1, len(texts)):
                starts[run + i] = texts[i] != texts[i - 1]
    return order, starts


def encode(source: Source, prefix: str = DEFAULT_PREFIX, as_of: dt.date | None = None) -> Encoded:
    """Turn the source into the version's catalog and its RESP ``HSET`` stream (pure, no I/O).

    Vectorised end to end: experiment and unit-type codes with ``index_in``, crc32 of the unit ids
    with numpy, one integer sort to bring each unit's rows together, the values joined from a
    small dictionary of ``<exp>.<variant>`` tokens, and the RESP stream assembled by pyarrow
    string kernels into one buffer: every bucket's ``HSET`` header followed by its fields.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    as_of = as_of or dt.datetime.now(dt.UTC).date()
    version = version_id(source, as_of)
    ks = KeySpace(prefix)
    served, not_served = _served_experiments(source, as_of)
    rows = source.assignments
    known = list(served) + list(not_served)
    code = pc.index_in(rows["experiment_id"], pa.array(known, pa.string()))
    if code.null_count:
        missing = sorted(set(rows.filter(pc.is_null(code))["experiment_id"].to_pylist()))
        raise DataError(f"assignments reference experiments missing from `experiments`: {missing}")
    excluded_rows: dict[str, int] = {}
    if not_served:
        per_exp = np.bincount(pc.fill_null(code, 0).to_numpy(), minlength=len(known))
        for i, e in enumerate(known[len(served) :], len(served)):
            if per_exp[i]:
                reason = not_served[e]
                excluded_rows[reason] = excluded_rows.get(reason, 0) + int(per_exp[i])
        rows = rows.filter(pc.less(code, len(served)))
    rows = _check_units(rows)
    entries = _catalog_entries(rows, served) if rows.num_rows else {}
    exp_ids = sorted(entries)
    index = {e: i for i, e in enumerate(exp_ids)}
    catalog = {
        i: json.dumps(entries[e], separators=(",", ":"), sort_keys=True) for e, i in index.items()
    }
    types = list(UNIT_CODES)
    n_rows = rows.num_rows
    uid = rows["unit_id"].combine_chunks() if n_rows else pa.array([], pa.string())
    type_idx = pc.index_in(rows["unit_type"], pa.array(types)).to_numpy(zero_copy_only=False)
    exp_idx = pc.index_in(rows["experiment_id"], pa.array(exp_ids, pa.string()))
    exp_idx = exp_idx.to_numpy(zero_copy_only=False).astype(np.int64)
    variant = rows["variant_id"].to_numpy().astype(np.int64)
    crc = crc32_array(uid)
    order, starts = _group_units(type_idx, exp_idx, crc, uid)
    exp_sorted = exp_idx[order]
    dup = ~starts[1:] & (exp_sorted[1:] == exp_sorted[:-1])
    if dup.any():
        first_rows = np.flatnonzero(starts)
        unit_of = np.cumsum(starts) - 1
        bad_units = np.unique(unit_of[1:][dup])
        row0 = int(order[first_rows[bad_units[0]]])
        raise DataError(
            f"assignments: {len(bad_units)} units have more than one row for one experiment, "
            f"e.g. {types[type_idx[row0]]}={uid[row0].as_py()!r} (rows must be one per unit and "
            "experiment)"
        )
    first = np.flatnonzero(starts)  # sorted-row position of each unit's first row
    n_units = len(first)
    unit_type = type_idx[order[first]]
    per_type = np.bincount(unit_type, minlength=len(types))
    units = {t: int(per_type[i]) for i, t in enumerate(types)}
    buckets = {t: bucket_count(n, UNITS_PER_BUCKET) for t, n in units.items()}
    bucket_no = (
        crc[order[first]].astype(np.int64)
        % np.array([buckets[t] for t in types], dtype=np.int64)[unit_type]
    )
    wire = np.argsort((unit_type.astype(np.int64) << 32) | bucket_no, kind="stable")

    # Values: "<exp>.<variant>,..." per unit, from a small dictionary of distinct tokens.
    v_sorted = variant[order]
    pair = exp_sorted * (1 << 32) + (v_sorted - np.int64(-(1 << 31)))
    v_lo = int(v_sorted.min()) if n_rows else 0
    span = int(v_sorted.max()) - v_lo + 1 if n_rows else 1
    if n_rows and len(exp_ids) * span <= 1 << 22:  # a direct table: no sort
        dense = exp_sorted * span + (v_sorted - v_lo)
        used = np.zeros(len(exp_ids) * span, dtype=bool)
        used[dense] = True
        codes = np.flatnonzero(used)
        distinct = (codes // span) * (1 << 32) + (codes % span + v_lo + (1 << 31))
        slot = np.zeros(len(used), dtype=np.int64)
        slot[codes] = np.arange(len(codes))
        token_of_row = slot[dense]
    else:
        distinct, token_of_row = np.unique(pair, return_inverse=True) if n_rows else (pair, pair)
    words = pa.array([f"{p >> 32}.{(p & 0xFFFFFFFF) - (1 << 31)}" for p in distinct.tolist()],
                     pa.string())  # fmt: skip
    tokens = words.take(pa.array(token_of_row))
    value_offsets = np.append(first, n_rows).astype(np.int32)
    values = pc.binary_join(pa.ListArray.from_arrays(pa.array(value_offsets), tokens), ",")
    values = values.take(pa.array(wire))
    ids = uid.take(pa.array(order[first][wire]))
    unit_type, bucket_no = unit_type[wire], bucket_no[wire]

    if n_units:
        combined = unit_type.astype(np.int64) * (1 << 32) + bucket_no
        heads = np.flatnonzero(np.concatenate([[True], np.diff(combined) != 0]))
        counts = np.diff(np.append(heads, n_units))
        keys = _concat(
            pa.array([ks.bucket_prefix(version, t) for t in types]).take(
                pa.array(unit_type[heads])
            ),
            pa.array(bucket_no[heads]),
        )
        headers = _concat(
            "*", pa.array(counts * 2 + 2), "\r\n$4\r\nHSET\r\n$", pc.binary_length(keys),
            "\r\n", keys, "\r\n",
        )  # fmt: skip
        fields = _concat(
            "$", pc.binary_length(ids), "\r\n", ids, "\r\n$", pc.binary_length(values), "\r\n",
            values, "\r\n",
        )  # fmt: skip
        # One array whose data buffer is the whole stream: header of bucket 0, its fields, ...
        n_cmd = len(heads)
        slot_of_header = heads + np.arange(n_cmd)
        slot_of_field = np.arange(n_units) + np.repeat(np.arange(1, n_cmd + 1), counts)
        pick = np.empty(n_cmd + n_units, dtype=np.int64)
        pick[slot_of_header] = np.arange(n_cmd)
        pick[slot_of_field] = n_cmd + np.arange(n_units)
        stream = pa.concat_arrays([headers, fields]).take(pa.array(pick))
        piece_offsets, _ = _string_bytes(stream)
        command_bytes = np.append(piece_offsets[slot_of_header], piece_offsets[-1])
    else:
        stream = pa.array([], pa.large_string())
        counts = np.array([], np.int64)
        command_bytes = np.zeros(1, np.int64)
    grouped = pa.table({
        "unit_type": pa.DictionaryArray.from_arrays(pa.array(unit_type.astype(np.int32)),
                                                    pa.array(types)),
        "unit_id": ids,
        "value": values,
    })  # fmt: skip
    return Encoded(
        version=version,
        catalog=catalog,
        experiment_index=index,
        buckets=buckets,
        units=units,
        rows=n_rows,
        excluded_rows=excluded_rows,
        stream=stream,
        command_bytes=command_bytes,
        command_units=counts,
        grouped=grouped,
    )


# --------------------------------------------------------------------------------------------
# Writing: pre-encoded RESP on raw sockets, several connections, replies drained concurrently
# --------------------------------------------------------------------------------------------


def _resp(*args: str | bytes | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class RespConnection:
    """A raw socket to Redis, authenticated from configuration (AUTH and SELECT from the URL)."""

    def __init__(self, settings: Settings, timeout: float = 60.0) -> None:
        from redis.connection import parse_url

        opts = parse_url(settings.redis_url)
        if "connection_class" in opts and "SSL" in opts["connection_class"].__name__:
            raise StackError("the raw-socket writer does not speak TLS; use a redis:// URL")
        host, port = opts.get("host", "127.0.0.1"), int(opts.get("port", 6379))
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise StackError(f"Redis at {host}:{port} is not reachable: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        role_user, password = settings.redis_credentials("writer")
        password = password or opts.get("password")
        if password:
            user = role_user or opts.get("username")
            reply = self.call("AUTH", *([user] if user else []), password)
            if not reply.startswith(b"+OK"):
                raise StackError(f"Redis at {host}:{port} refused our credentials: {reply!r}")
        if opts.get("db"):
            self.call("SELECT", opts["db"])
        reply = self.call("PING")
        if not reply.startswith(b"+PONG"):
            raise StackError(f"Redis at {host}:{port} answered PING with {reply!r}")

    def call(self, *args: str | bytes | int) -> bytes:
        """Send one command, return its one-line reply (status, error or integer)."""
        self.sock.sendall(_resp(*args))
        while b"\r\n" not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                raise StackError("Redis closed the connection")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def stream(self, chunks: list[memoryview], expected: int, on_chunk: Any = None) -> None:
        """Send pre-encoded commands while a thread drains and checks their integer replies."""
        errors: list[str] = []
        done = threading.Event()

        def drain() -> None:
            seen, tail = 0, b""
            try:
                while seen < expected:
                    data = self.sock.recv(1 << 20)
                    if not data:
                        errors.append("Redis closed the connection mid-publication")
                        return
                    data = tail + data
                    cut = data.rfind(b"\r\n") + 2
                    whole, tail = data[:cut], data[cut:]
                    if b"-" in whole:  # integer replies never contain '-'; errors start with it
                        line = whole[whole.index(b"-") :].split(b"\r\n", 1)[0]
                        errors.append(line.decode(errors="replace"))
                        return
                    seen += whole.count(b"\r\n")
            except OSError as exc:
                errors.append(f"reading replies failed: {exc}")
            finally:
                done.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            for chunk in chunks:
                if errors:
                    break
                self.sock.sendall(chunk)
                if on_chunk is not None:
                    on_chunk()
        except OSError as exc:
            errors.append(f"sending failed: {exc}")
        reader.join()
        if errors:
            raise PublicationError(f"writing to Redis failed: {errors[0]}")

    def close(self) -> None:
        self.sock.close()


def _chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, size):
        yield a, min(a + size, stop)


def _buffer(enc: Encoded, a: int, b: int) -> memoryview:
    """Zero-copy bytes of HSET commands a..b-1 (the stream's data buffer is contiguous)."""
    data = enc.stream.buffers()[2]
    return memoryview(data)[int(enc.command_bytes[a]) : int(enc.command_bytes[b])]


def write_version(
    settings: Settings,
    enc: Encoded,
    *,
    writers: int = DEFAULT_WRITERS,
    max_units_per_s: float | None = None,
    heartbeat: Any = None,
) -> int:
    """Send every bucket of the version; returns bytes sent. Raises on any Redis error reply."""
    n = len(enc.command_units)
    writers = max(1, min(writers, n or 1))
    bounds = [round(i * n / writers) for i in range(writers + 1)]
    failures: list[BaseException] = []
    total = [0]
    lock = threading.Lock()

    def run(lo: int, hi: int) -> None:
        conn = None
        try:
            conn = RespConnection(settings)
            parts = list(_chunks(lo, hi, COMMANDS_PER_CHUNK))
            views = [_buffer(enc, a, b) for a, b in parts]
            started = time.perf_counter()
            sent_units = [0]
            it = iter(parts)

            def pace() -> None:
                a, b = next(it)
                sent_units[0] += int(enc.command_units[a:b].sum())
                if max_units_per_s:
                    ahead = sent_units[0] / (max_units_per_s / writers) - (
                        time.perf_counter() - started
                    )
                    if ahead > 0:
                        time.sleep(ahead)

            conn.stream(views, expected=hi - lo, on_chunk=pace)
            with lock:
                total[0] += sum(len(v) for v in views)
        except BaseException as exc:
            failures.append(exc)
        finally:
            if conn is not None:
                conn.close()

    threads = [
        threading.Thread(target=run, args=(bounds[i], bounds[i + 1]), daemon=True)
        for i in range(writers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=1.0)
            if heartbeat is not None:
                heartbeat()
    if failures:
        exc = failures[0]
        if isinstance(exc, StrataError):
            raise exc
        raise PublicationError(f"writing version {enc.version} failed: {exc}") from exc
    return total[0]


# --------------------------------------------------------------------------------------------
# Server-side scripts: flip (with fast-path removals re-applied) and the fast path itself
# --------------------------------------------------------------------------------------------

#: Lua helper: drop the token of experiment index ``e`` from a unit's "e.v,e.v" value.
_REMOVE_TOKEN_LUA = """
local function remove_token(value, e)
  local kept, removed = {}, false
  for tok in string.gmatch(value, '[^,]+') do
    if string.match(tok, '^(%d+)%.') == e then removed = true else kept[#kept + 1] = tok end
  end
  return table.concat(kept, ','), removed
end
local function remove_unit(p, ver, meta, code, exp, uid, h)
  local e = redis.call('HGET', meta, 'x:' .. exp)
  local nb = tonumber(redis.call('HGET', meta, 'buckets:' .. code))
  if not e or not nb then return -1 end
  local key = p .. ':' .. ver .. ':' .. code .. ':' .. string.format('%d', h % nb)
  local cur = redis.call('HGET', key, uid)
  if not cur then return 0 end
  local new, removed = remove_token(cur, e)
  if not removed then return 0 end
  if new == '' then redis.call('HDEL', key, uid) else redis.call('HSET', key, uid, new) end
  return 1
end
"""

#: ARGV: bucket key prefix, first bucket, end bucket. Sum of HLEN over the buckets (verification:
#: one script per COUNT_BUCKETS_PER_CALL buckets instead of one HLEN round trip each).
COUNT_LUA = """
local p, total = ARGV[1], 0
for b = tonumber(ARGV[2]), tonumber(ARGV[3]) - 1 do
  total = total + redis.call('HLEN', p .. b)
end
return total
"""
#: Buckets counted per COUNT_LUA call (about a millisecond of server time each).
COUNT_BUCKETS_PER_CALL = 2000

#: ARGV: prefix, version, then (tombstone field, value) pairs. Applies fast-path removals to a
#: verified version before its flip; returns {applied, fields whose experiment it does not hold}.
APPLY_TOMBSTONES_LUA = (
    _REMOVE_TOKEN_LUA
    + """
local p, ver = ARGV[1], ARGV[2]
local meta = p .. ':ver:' .. ver
if redis.call('HGET', meta, 'state') ~= 'verified' then
  return redis.error_reply('version ' .. ver .. ' is not verified')
end
local applied, unknown, index, nb = 0, {}, {}, {}
for i = 3, #ARGV, 2 do
  local code, exp, uid = string.match(ARGV[i], '^(%a)\\n([^\\n]*)\\n(.*)$')
  local h = tonumber(string.match(ARGV[i + 1], ':(%d+)$'))
  if index[exp] == nil then index[exp] = redis.call('HGET', meta, 'x:' .. exp) end
  if nb[code] == nil then nb[code] = tonumber(redis.call('HGET', meta, 'buckets:' .. code)) end
  local e, n = index[exp], nb[code]
  if not e or not n then
    unknown[#unknown + 1] = ARGV[i]
  else
    local key = p .. ':' .. ver .. ':' .. code .. ':' .. string.format('%d', h % n)
    local cur = redis.call('HGET', key, uid)
    if cur then
      local new, removed = remove_token(cur, e)
      if removed then
        if new == '' then redis.call('HDEL', key, uid) else redis.call('HSET', key, uid, new) end
        applied = applied + 1
      end
    end
  end
end
return {applied, unknown}
"""
)

#: ARGV: prefix, version, now_ms, tombstone sequence number the pre-flip pass started from.
#: Atomically: apply the removals recorded since then (normally none: bounded by the
#: invalidations of the last seconds, never by history), set the pointer, mark the states.
FLIP_LUA = (
    _REMOVE_TOKEN_LUA
    + """
local p, ver, now, since = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local meta = p .. ':ver:' .. ver
local state = redis.call('HGET', meta, 'state')
if state ~= 'verified' then
  return redis.error_reply('version ' .. ver .. ' is ' .. tostring(state) .. ', not verified')
end
local applied = 0
local late = redis.call('ZRANGEBYSCORE', p .. ':tomb:log', '(' .. since, '+inf')
for _, f in ipairs(late) do
  local value = redis.call('HGET', p .. ':tomb', f)
  if value then
    local code, exp, uid = string.match(f, '^(%a)\\n([^\\n]*)\\n(.*)$')
    local h = tonumber(string.match(value, ':(%d+)$'))
    if remove_unit(p, ver, meta, code, exp, uid, h) == 1 then applied = applied + 1 end
  end
end
local prev = redis.call('GET', p .. ':live')
redis.call('SET', p .. ':live', ver)
redis.call('HSET', meta, 'state', 'live', 'live_at', now)
if prev and prev ~= ver then
  redis.call('HSET', p .. ':ver:' .. prev, 'state', 'retired', 'retired_at', now)
end
return {prev or '', applied}
"""
)

#: ARGV: prefix, version, fields. After the flip: drop tombstones of experiments the live version
#: does not publish (checked again: nothing changes unless ``version`` is still live).
DROP_TOMBSTONES_LUA = """
local p, ver = ARGV[1], ARGV[2]
if redis.call('GET', p .. ':live') ~= ver then return 0 end
local meta, dropped = p .. ':ver:' .. ver, 0
for i = 3, #ARGV do
  local exp = string.match(ARGV[i], '^%a\\n([^\\n]*)\\n')
  if exp and redis.call('HEXISTS', meta, 'x:' .. exp) == 0 then
    dropped = dropped + redis.call('HDEL', p .. ':tomb', ARGV[i])
    redis.call('ZREM', p .. ':tomb:log', ARGV[i])
  end
end
return dropped
"""

#: Tombstones per script call of the pre-flip pass (about a millisecond of server time each).
TOMBSTONES_PER_CALL = 1000

#: ARGV: prefix, code, experiment id, unit id, crc32, now_ms. Removes now and records a tombstone
#: (and its sequence number in ``tomb:log``, so a flip can find the removals made after its
#: pre-flip pass without reading them all).
INVALIDATE_LUA = (
    _REMOVE_TOKEN_LUA
    + """
local p, code, exp, uid, h, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local field = code .. '\\n' .. exp .. '\\n' .. uid
redis.call('HSET', p .. ':tomb', field, now .. ':' .. ARGV[5])
redis.call('ZADD', p .. ':tomb:log', redis.call('INCR', p .. ':tomb:seq'), field)
local ver = redis.call('GET', p .. ':live')
if not ver then return 0 end
local r = remove_unit(p, ver, p .. ':ver:' .. ver, code, exp, uid, h)
if r == 1 then return 1 end
return 0
"""
)


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


# --------------------------------------------------------------------------------------------
# Verification against the source, locking, cleanup, and the publication record
# --------------------------------------------------------------------------------------------


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
        self.client, self.key = client, f"{prefix}:lock"
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"

    def acquire(self) -> None:
        if self.client.set(self.key, self.token, nx=True, ex=LOCK_TTL_S):
            return
        holder = (self.client.get(self.key) or b"").decode()
        host, _, rest = holder.partition(":")
        pid = int(rest.partition(":")[0] or 0)
        if host == socket.gethostname() and pid and not _alive(pid):
            self.client.set(self.key, self.token, ex=LOCK_TTL_S)
            return
        raise PublicationError(f"another publication holds {self.key} ({holder}); retry later")

    def refresh(self) -> None:
        self.client.expire(self.key, LOCK_TTL_S)

    def release(self) -> None:
        if (self.client.get(self.key) or b"").decode() == self.token:
            self.client.delete(self.key)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unlink_version(client: redis.Redis, version: str, prefix: str = DEFAULT_PREFIX) -> int:
    """Unlink every key of one version (bucket names are computed, no SCAN). Never the live one."""
    ks = KeySpace(prefix)
    if (client.get(ks.live) or b"").decode() == version:
        raise PublicationError(f"refusing to unlink the live version {version}")
    meta = {k.decode(): v.decode() for k, v in client.hgetall(ks.meta(version)).items()}
    keys = [ks.catalog(version), ks.meta(version)]
    for t in UNIT_CODES:
        nb = int(meta.get(f"buckets:{UNIT_CODES[t]}", 0))
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
    keep: int = KEEP_PREVIOUS,
    client: redis.Redis | None = None,
    locked: bool = False,
) -> list[str]:
    """Unlink retired versions beyond the ``keep`` newest, and unfinished ones (left by a failed
    or killed publication).

    An unfinished version is removed at once when no publication can be working on it: the
    caller holds the publisher lock (``locked``), or cleanup takes the lock itself (free, or
    left by a dead process on this host). While another publication holds the lock, only
    versions untouched for ``STALE_WRITING_S`` are removed.
    """
    client = client or _client(settings or get_settings())
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
            state = meta.get("state", "retired")
            if state == "retired":
                retired_kept += 1
                if retired_kept <= keep:
                    continue
            elif not locked and now_ms - float(meta.get("updated_at", 0)) < STALE_WRITING_S * 1e3:
                continue  # the publication holding the lock may still be working on it
            unlink_version(client, ver, prefix)
            removed.append(ver)
        return removed
    finally:
        if lock is not None:
            lock.release()


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
    keep: int = KEEP_PREVIOUS,
) -> PublicationResult:
    """Publish the current ``assignments`` snapshot as a new live version (see module doc).

    ``max_units_per_s`` throttles writing to spare a busy production Redis. ``publications_table``
    None skips the Iceberg record (benchmarks).
    """
    settings = settings or get_settings()
    started = time.perf_counter()
    as_of = as_of or dt.datetime.now(dt.UTC).date()
    source = read_source(settings, assignments_table, experiments_table)
    return _publish_source(
        settings, source, as_of, started, prefix=prefix, experiments_table=experiments_table,
        publications_table=publications_table, writers=writers, sample=sample,
        max_units_per_s=max_units_per_s, keep=keep,
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
    (``state`` is what a successful flip is recorded as: "live", or "recovered")."""
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
        result = _publish_locked(
            settings, client, lock, enc, source, prefix, writers, sample, max_units_per_s, started
        )
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
        if client.hget(ks.meta(version), "state") not in (None, b"writing", b"verified"):
            return  # failed before touching it: an older version of the same id (kept)
        unlink_version(client, version, prefix)
    except (redis_lib.RedisError, StrataError) as exc:
        error.add_note(
            f"removing the failed version {version} failed too ({exc}); "
            "`python -m lookup_loader cleanup` removes it once no publication holds the lock"
        )
    else:
        error.add_note(f"the failed version {version} was removed")


def _publish_locked(
    settings: Settings,
    client: redis.Redis,
    lock: _Lock,
    enc: Encoded,
    source: Source,
    prefix: str,
    writers: int,
    sample: int,
    max_units_per_s: float | None,
    started: float,
) -> PublicationResult:
    ks = KeySpace(prefix)
    live = (client.get(ks.live) or b"").decode() or None
    if live == enc.version and client.exists(ks.meta(live)):  # else its keys are gone: rewrite
        return _result(enc, source, "unchanged", live, 0, 0, 0.0, 0.0, started)
    now = int(time.time() * 1000)
    meta = {
        "state": "writing",
        "created_at": now,
        "updated_at": now,
        "assignments_snapshot_id": source.assignments_snapshot_id,
        "experiments_snapshot_id": source.experiments_snapshot_id,
        "rows": enc.rows,
        **{f"buckets:{UNIT_CODES[t]}": n for t, n in enc.buckets.items()},
        **{f"units:{UNIT_CODES[t]}": n for t, n in enc.units.items()},
        **{f"x:{e}": i for e, i in enc.experiment_index.items()},
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
        settings,
        enc,
        writers=writers,
        max_units_per_s=max_units_per_s,
        heartbeat=lambda: (
            lock.refresh(),
            client.hset(ks.meta(enc.version), "updated_at", int(time.time() * 1000)),
        ),
    )
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    verify(client, enc, source, prefix=prefix, sample=sample)
    verify_s = time.perf_counter() - t0
    client.hset(ks.meta(enc.version), "state", "verified")
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
# Recovery: the last verified publication, rebuilt from its recorded Iceberg snapshots
# --------------------------------------------------------------------------------------------


def last_publication(
    settings: Settings,
    *,
    prefix: str = DEFAULT_PREFIX,
    table_name: str = PUBLICATIONS_TABLE,
) -> dict[str, Any]:
    """The newest row of ``publications`` for ``prefix`` that went live (state "live" or
    "recovered"): what :func:`recover` republishes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from strata.stack import iceberg_catalog

    ident = f"{settings.namespace}.{table_name}"
    catalog = iceberg_catalog(settings)
    if not catalog.table_exists(ident):
        raise PublicationError(f"nothing to recover: the Iceberg table {ident} does not exist")
    rows = catalog.load_table(ident).scan().to_arrow()
    went_live = pc.is_in(rows["state"], pa.array(["live", "recovered"]))
    mask = pc.and_(pc.equal(rows["redis_prefix"], prefix), went_live)
    done = rows.filter(mask)
    if done.num_rows == 0:
        raise PublicationError(
            f"nothing to recover: {ident} records no publication of prefix {prefix!r} that went "
            "live; run `python -m lookup_loader publish`"
        )
    return done.sort_by([("published_at", "descending")]).slice(0, 1).to_pylist()[0]


def recover(
    settings: Settings | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    publications_table: str = PUBLICATIONS_TABLE,
    writers: int = DEFAULT_WRITERS,
    sample: int = DEFAULT_SAMPLE,
    keep: int = KEEP_PREVIOUS,
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
    started = time.perf_counter()
    client = _client(settings)
    ks = KeySpace(prefix)
    live = (client.get(ks.live) or b"").decode() or None
    counts = {"rows": 0, **dict.fromkeys(UNIT_CODES, 0), "experiments": 0,
              "tombstones_applied": 0}  # fmt: skip
    if live and client.exists(ks.meta(live)):
        return {"state": "unchanged", "version": live, **counts, "duration_s": 0.0}
    last = last_publication(settings, prefix=prefix, table_name=publications_table)
    experiments_table = last.get("experiments_table") or EXPERIMENTS_TABLE
    source = read_source(
        settings,
        last["assignments_table"],
        experiments_table,
        snapshot_ids=(last["assignments_snapshot_id"], last["experiments_snapshot_id"]),
    )
    as_of = last.get("as_of") or last["published_at"].date()
    result = _publish_source(
        settings, source, as_of, started, prefix=prefix, experiments_table=experiments_table,
        publications_table=publications_table, writers=writers, sample=sample,
        max_units_per_s=None, keep=keep, state="recovered",
    )  # fmt: skip
    return {
        "state": result.state,
        "version": result.version,
        "rows": result.rows,
        **{t: result.units.get(t, 0) for t in UNIT_CODES},
        "experiments": result.experiments,
        "tombstones_applied": result.tombstones_applied,
        "duration_s": result.duration_s,
    }
