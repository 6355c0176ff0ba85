"""The encoder on Arrow tables, without Redis or Iceberg: what each unit's bucket holds, which rows
are left out, which inputs are refused. The RESP stream is parsed back and compared with the rows.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import zlib

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lookup_loader.encode import crc32_array, encode
from lookup_loader.source import Source, version_id
from strata import contracts
from strata.errors import DataError
from strata.keyspace import UNIT_CODES, KeySpace, decode_tokens, normalize_url
from tests.lookup_loader.test_encode_golden import ASSIGNMENT_SCHEMA, EXPERIMENT_SCHEMA

AS_OF = dt.date(2026, 11, 2)
END = dt.date(2099, 12, 31)
# The encoder's input columns, as the golden test pins them.
A_SCHEMA, E_SCHEMA = ASSIGNMENT_SCHEMA, EXPERIMENT_SCHEMA
#: experiment -> (unit type, layer, priority)
EXPS = {
    "dev_a": ("device_id", "la", 30),
    "dev_b": ("device_id", "lb", 20),
    "usr": ("user_id", "lu", 10),
    "page": ("url", "lp", 5),
}


def row(exp: str, unit_id: str, variant: int, **over) -> dict:
    unit, layer, prio = EXPS.get(exp, ("device_id", "lx", 1))
    base = {
        "unit_type": unit,
        "unit_id": unit_id,
        "experiment_id": exp,
        "variant_id": variant,
        "variant_name": f"v{variant}",
        "is_control": variant == 0,
        "layer_id": layer,
        "domain_id": "main",
        "layer_priority": prio,
        "service": "svc",
        "params": json.dumps({"v": variant}),
    }
    return base | over


def experiments(
    ids, status: dict | None = None, end: dict | None = None, start: dict | None = None
) -> pa.Table:
    status, end, start = status or {}, end or {}, start or {}
    return pa.Table.from_pylist(
        [
            {"experiment_id": e, "name": e.upper(), "status": status.get(e, "running"),
             "start_date": start.get(e, dt.date(2026, 1, 1)), "end_date": end.get(e, END),
             "deployment_key": f"dk-{e}"}
            for e in ids
        ],
        schema=E_SCHEMA,
    )  # fmt: skip


def source(rows, exp_table=None, snapshots=(1, 2)) -> Source:
    return Source(
        assignments=pa.Table.from_pylist(rows, schema=A_SCHEMA),
        experiments=exp_table if exp_table is not None else experiments(EXPS),
        assignments_snapshot_id=snapshots[0],
        experiments_snapshot_id=snapshots[1],
        assignments_table="assignments",
    )


def parse_stream(enc) -> dict[str, dict[str, str]]:
    """The RESP stream parsed back: key -> {unit id: value}; checks its framing on the way."""
    data = enc.stream.buffers()[2]
    raw = (
        b"" if data is None else bytes(data)[int(enc.command_bytes[0]) : int(enc.command_bytes[-1])]
    )
    out: dict[str, dict[str, str]] = {}
    pos = 0

    def bulk() -> bytes:
        nonlocal pos
        assert raw[pos : pos + 1] == b"$"
        end = raw.index(b"\r\n", pos)
        n = int(raw[pos + 1 : end])
        value = raw[end + 2 : end + 2 + n]
        assert raw[end + 2 + n : end + 4 + n] == b"\r\n"
        pos = end + 4 + n
        return value

    starts = []
    while pos < len(raw):
        starts.append(pos)
        assert raw[pos : pos + 1] == b"*"
        end = raw.index(b"\r\n", pos)
        argc = int(raw[pos + 1 : end])
        pos = end + 2
        assert bulk() == b"HSET"
        key = bulk().decode()
        assert key not in out, f"bucket {key} written twice"
        fields = [bulk().decode() for _ in range(argc - 2)]
        out[key] = dict(zip(fields[::2], fields[1::2], strict=True))
        assert len(out[key]) == len(fields) // 2, "a unit twice in one bucket"
    assert starts == [int(b) - int(enc.command_bytes[0]) for b in enc.command_bytes[:-1]]
    assert enc.command_units.tolist() == [len(v) for v in out.values()]
    return out


def expected_buckets(rows, enc, prefix: str, served: set[str]) -> dict[str, dict[str, str]]:
    """What every bucket should hold, computed row by row from the input."""
    ks = KeySpace(prefix)
    units: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for r in rows:
        if r["experiment_id"] not in served:
            continue
        uid = normalize_url(r["unit_id"]) if r["unit_type"] == "url" else r["unit_id"]
        pair = (enc.experiment_index[r["experiment_id"]], r["variant_id"])
        units.setdefault((r["unit_type"], uid), []).append(pair)
    out: dict[str, dict[str, str]] = {}
    for (t, uid), pairs in units.items():
        key = ks.bucket(enc.version, t, zlib.crc32(uid.encode()), enc.buckets[t])
        out.setdefault(key, {})[uid] = ",".join(f"{e}.{v}" for e, v in sorted(pairs))
    return out


def mixed_rows(devices: int = 120, users: int = 60, urls: int = 7) -> list[dict]:
    rows = []
    for i in range(devices):
        rows.append(row("dev_a", f"d{i}", i % 2))
        if i % 3 == 0:
            rows.append(row("dev_b", f"d{i}", (i // 3) % 3))
    rows += [row("usr", f"u{i}", i % 4) for i in range(users)]
    rows += [row("page", f"https://x.example/p{i}", i % 2) for i in range(urls)]
    return rows


class TestStream:
    def test_every_unit_is_in_its_bucket_with_its_assignments(self):
        rows = mixed_rows()
        enc = encode(source(rows), "t:lk", AS_OF)
        assert parse_stream(enc) == expected_buckets(rows, enc, "t:lk", set(EXPS))
        assert enc.units == {"device_id": 120, "user_id": 60, "url": 7}
        assert enc.buckets == {"device_id": 3, "user_id": 2, "url": 1}
        assert enc.rows == len(rows)

    def test_values_list_experiments_in_index_order(self):
        rows = [row("dev_b", "d1", 2), row("dev_a", "d1", 1)]
        enc = encode(source(rows), "p", AS_OF)
        assert enc.experiment_index == {"dev_a": 0, "dev_b": 1}
        (bucket,) = parse_stream(enc).values()
        assert bucket == {"d1": "0.1,1.2"}
        assert decode_tokens(bucket["d1"]) == [(0, 1), (1, 2)]

    def test_the_grouped_table_matches_the_stream(self):
        rows = mixed_rows(devices=60, users=10, urls=3)
        enc = encode(source(rows), "p", AS_OF)
        stream = {uid: v for bucket in parse_stream(enc).values() for uid, v in bucket.items()}
        grouped = enc.grouped.to_pylist()
        assert {g["unit_id"]: g["value"] for g in grouped} == stream
        assert len(grouped) == sum(enc.units.values())

    def test_input_order_and_chunking_do_not_change_the_bytes(self):
        rows = mixed_rows()
        reference = encode(source(rows), "p", AS_OF)
        shuffled = rows[:]
        random.Random(7).shuffle(shuffled)
        table = pa.Table.from_pylist(shuffled, schema=A_SCHEMA)
        chunked = pa.concat_tables([table.slice(0, 50), table.slice(50, 1), table.slice(51)])
        assert chunked["unit_id"].num_chunks == 3
        src = source([])
        src.assignments = chunked
        enc = encode(src, "p", AS_OF)
        assert parse_stream(enc) == parse_stream(reference)
        assert enc.catalog == reference.catalog

    def test_the_prefix_and_version_name_the_keys(self):
        enc = encode(source([row("usr", "u1", 1)], snapshots=(5, 6)), "env:x", AS_OF)
        assert enc.version == version_id(source([], snapshots=(5, 6)), AS_OF)
        assert list(parse_stream(enc)) == [f"env:x:{enc.version}:{UNIT_CODES['user_id']}:0"]

    def test_bucket_counts_follow_units_per_bucket(self):
        for devices, buckets in ((48, 1), (49, 2), (96, 2), (97, 3)):
            rows = [row("dev_a", f"d{i}", 0) for i in range(devices)]
            enc = encode(source(rows), "p", AS_OF)
            assert enc.buckets["device_id"] == buckets
            assert sum(len(b) for b in parse_stream(enc).values()) == devices

    def test_units_sharing_a_crc32_stay_apart(self):
        assert zlib.crc32(b"plumless") == zlib.crc32(b"buckeroo")
        rows = [row("dev_a", "plumless", 1), row("dev_b", "buckeroo", 2),
                row("dev_b", "plumless", 0), row("dev_a", "buckeroo", 0)]  # fmt: skip
        enc = encode(source(rows), "p", AS_OF)
        (bucket,) = parse_stream(enc).values()
        assert bucket == {"plumless": "0.1,1.0", "buckeroo": "0.0,1.2"}

    def test_nothing_to_publish(self):
        enc = encode(source([]), "p", AS_OF)
        assert parse_stream(enc) == {}
        assert enc.buckets == {"device_id": 1, "user_id": 1, "url": 1}
        assert enc.units == {"device_id": 0, "user_id": 0, "url": 0}
        assert enc.catalog == {}
        assert enc.command_bytes.tolist() == [0]


class TestUrls:
    def test_spellings_of_one_url_are_one_unit(self):
        rows = [row("page", "HTTPS://X.Example/a?q=1#frag", 1), row("usr", "u1", 0)]
        rows.append(row("page", " https://x.example/b ", 0))
        enc = encode(source(rows), "p", AS_OF)
        urls = {uid for key, b in parse_stream(enc).items() if ":l:" in key for uid in b}
        assert urls == {"https://x.example/a?q=1", "https://x.example/b"}

    def test_two_spellings_in_one_experiment_are_a_duplicate(self):
        rows = [row("page", "https://x.example/a", 1), row("page", "HTTPS://x.example/a", 1)]
        with pytest.raises(DataError, match="more than one row for one experiment"):
            encode(source(rows), "p", AS_OF)


#: The contract's statuses that are not served (statuses Strata does not know are not either).
NOT_SERVED = {s for s in contracts.STATUSES if not contracts.is_served(s)}


class TestExcluded:
    @pytest.mark.parametrize(
        "status", sorted(NOT_SERVED | {"paused", "archived", "holdout", "", "typo"})
    )
    def test_not_served_statuses(self, status):
        rows = [row("dev_a", "d1", 1), row("dev_b", "d1", 1), row("dev_b", "d2", 0)]
        exp = experiments(EXPS, status={"dev_b": status.upper()})
        enc = encode(source(rows, exp), "p", AS_OF)
        assert enc.excluded_rows == {f"status_{status}": 2}
        assert enc.rows == 1
        assert "dev_b" not in enc.experiment_index
        assert parse_stream(enc) == expected_buckets(rows, enc, "p", {"dev_a"})

    def test_an_experiment_ended_before_the_day_is_left_out(self):
        rows = [row("dev_a", "d1", 1), row("dev_b", "d1", 1), row("usr", "u1", 1)]
        ends = {"dev_b": AS_OF - dt.timedelta(days=1), "usr": AS_OF}  # usr ends today: served
        enc = encode(source(rows, experiments(EXPS, end=ends)), "p", AS_OF)
        assert enc.excluded_rows == {"ended": 1}
        assert set(enc.experiment_index) == {"dev_a", "usr"}

    def test_an_experiment_starting_after_the_day_is_left_out(self):
        rows = [row("dev_a", "d1", 1), row("dev_b", "d1", 1), row("usr", "u1", 1)]
        day = dt.timedelta(days=1)
        starts = {"dev_b": AS_OF + day, "usr": AS_OF}  # usr starts today: served
        exp = experiments(EXPS, start=starts, end={"dev_b": AS_OF + 9 * day})
        enc = encode(source(rows, exp), "p", AS_OF)
        assert enc.excluded_rows == {"not_started": 1}
        assert set(enc.experiment_index) == {"dev_a", "usr"}

    def test_a_shipped_experiment_is_served_by_its_launch_rows_only(self):
        kept = [row("dev_b", "d1", 1), row("dev_b", "d2", 0)]  # its own rows: the analysis's
        launch = {"layer_id": "launch", "layer_priority": 1, "params": json.dumps({"v": 1})}
        serving = [row("shipped:dev_b", d, 1, **launch) for d in ("d1", "d2", "d3")]
        exp = experiments(EXPS, status={"dev_b": "shipped"}, end={"dev_b": AS_OF})
        late = AS_OF + dt.timedelta(days=30)  # a launch has no window
        enc = encode(source([row("dev_a", "d1", 1), *kept, *serving], exp), "p", late)
        assert enc.excluded_rows == {"status_shipped": 2}
        assert set(enc.experiment_index) == {"dev_a", "shipped:dev_b"}
        assert enc.units["device_id"] == 3
        entry = json.loads(enc.catalog[enc.experiment_index["shipped:dev_b"]])
        assert (entry["shipped"], entry["name"], entry["layer"]) == (True, "DEV_B", "launch")
        assert entry["variants"] == {"1": {"name": "v1", "control": False, "params": {"v": 1}}}
        assert "shipped" not in json.loads(encode(source(kept), "p", AS_OF).catalog[0])


class TestCatalog:
    def test_entries(self):
        rows = [row("dev_a", "d1", 0, params="{}"), row("dev_a", "d2", 1)]
        enc = encode(source(rows), "p", AS_OF)
        entry = json.loads(enc.catalog[0])
        assert entry == {
            "id": "dev_a", "name": "DEV_A", "startDate": "2026-01-01", "endDate": "2099-12-31",
            "key": "dk-dev_a", "layer": "la", "domain": "main", "priority": 30, "service": "svc",
            "variants": {"0": {"name": "v0", "control": True, "params": {}},
                         "1": {"name": "v1", "control": False, "params": {"v": 1}}},
        }  # fmt: skip
        assert enc.catalog[0] == json.dumps(entry, separators=(",", ":"), sort_keys=True)

    def test_params_spelled_differently_but_equal_are_accepted(self):
        rows = [row("dev_a", "d1", 1, params='{"a": 1, "b": 2}'),
                row("dev_a", "d2", 1, params='{"b":2,"a":1}')]  # fmt: skip
        enc = encode(source(rows), "p", AS_OF)
        assert json.loads(enc.catalog[0])["variants"]["1"]["params"] == {"a": 1, "b": 2}


class TestRefused:
    @pytest.mark.parametrize(
        ("rows", "message"),
        [
            ([row("nowhere", "d1", 0)], "missing from `experiments`"),
            ([row("dev_a", "d1", 0), row("dev_a", "d1", 1)], "more than one row"),
            ([row("dev_a", "d1", 0, unit_type="cookie")], "unit_type 'cookie'"),
            ([row("dev_a", None, 0)], "null unit_id"),
            ([row("dev_a", "a\nb", 0)], "control character"),
            ([row("dev_a", "", 0)], "non-empty"),
            ([row("dev_a", "x" * 513, 0)], "longer than 512 bytes"),
            ([row("dev_a", "d1", 1), row("dev_a", "d2", 1, params='{"v": 2}')], "different"),
            ([row("dev_a", "d1", 1, params="not json")], "params is not JSON"),
            ([row("dev_a", "d1", 1, params="[1]")], "params must be a JSON object"),
            ([row("dev_a", "d1", 1), row("dev_a", "d2", 0, layer_id="other")], "layer_id"),
        ],
        ids=[
            "unknown experiment",
            "duplicate",
            "unit type",
            "null id",
            "control",
            "empty",
            "too long",
            "variant disagrees",
            "params not JSON",
            "params not object",
            "two layers",
        ],
    )
    def test_bad_input_names_the_problem(self, rows, message):
        with pytest.raises(DataError, match=message):
            encode(source(rows), "p", AS_OF)

    def test_an_experiment_listed_twice(self):
        exp = pa.concat_tables([experiments(["dev_a"]), experiments(["dev_a"])])
        with pytest.raises(DataError, match="appears twice"):
            encode(source([row("dev_a", "d1", 0)], exp), "p", AS_OF)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=40), max_size=30))
def test_crc32_array_equals_zlib(ids):
    arr = pa.array(ids, pa.string())
    assert crc32_array(arr).tolist() == [zlib.crc32(u.encode()) for u in ids]
    if len(ids) > 2:
        assert crc32_array(arr.slice(1, len(ids) - 2)).tolist() == [
            zlib.crc32(u.encode()) for u in ids[1:-1]
        ]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["dev_a", "dev_b", "usr"]),
            st.text(
                st.characters(
                    min_codepoint=0x20, max_codepoint=0x2FF, exclude_categories=("Cc", "Cs")
                ),
                min_size=1,
                max_size=8,
            ),
            st.integers(0, 3),
        ),
        max_size=120,
        unique_by=lambda t: (t[0], t[1]),
    )
)
def test_any_valid_input_round_trips(cases):
    """Whatever the ids and how they fall into buckets, the stream holds exactly the rows."""
    rows = [row(e, uid, v, variant_name="n", params="{}", is_control=False) for e, uid, v in cases]
    enc = encode(source(rows), "p", AS_OF)
    assert parse_stream(enc) == expected_buckets(rows, enc, "p", set(EXPS))
