"""Encoding a source into a version: its catalog and one RESP ``HSET`` stream (pure, no I/O).

Vectorised with pyarrow and numpy, ending in one contiguous RESP buffer: every bucket's ``HSET``
header followed by its fields, ready for ``lookup_loader.resp.write_version``. Rows of experiments
that are not served are counted and left out; unit ids are checked and urls normalised.

Usage:
    enc = encode(read_source(settings), prefix, as_of)   # -> Encoded (catalog, stream, counts)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lookup_loader.source import Source, version_id
from strata import contracts
from strata.errors import DataError
from strata.keyspace import (
    DEFAULT_PREFIX,
    MAX_UNIT_ID_BYTES,
    UNIT_CODES,
    UNITS_PER_BUCKET,
    KeySpace,
    bucket_count,
    check_unit_id,
    normalize_url,
)

if TYPE_CHECKING:
    import pyarrow as pa


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


def _served_experiments(source: Source, as_of: dt.date) -> tuple[dict[str, dict], dict[str, str]]:
    """Experiments table -> {id: row} of served ones, and {id: reason} of excluded ones."""
    served, excluded = {}, {}
    for row in source.experiments.to_pylist():
        exp_id = row["experiment_id"]
        if exp_id in served or exp_id in excluded:
            raise DataError(f"experiments table: experiment_id {exp_id!r} appears twice")
        status = (row["status"] or "").lower()
        if status == contracts.SHIPPED:
            # served through the launch layer by its `shipped:<id>` rows (whatever the window);
            # its own rows (kept for the analysis) are not
            served[contracts.shipped_row_id(exp_id)] = {**row, "shipped": True}
        # only strata.contracts.SERVED_STATUSES are served; any other status, known or not, is not
        if not contracts.is_served(status):
            excluded[exp_id] = f"status_{status}"
        elif window := contracts.outside_window(row["start_date"], row["end_date"], as_of):
            excluded[exp_id] = window  # "not_started" or "ended": served only inside its window
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
        if meta.get("shipped"):
            entry["shipped"] = True
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
    a bytes object per id. Equal to ``strata.keyspace.unit_hash`` (tested).
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
