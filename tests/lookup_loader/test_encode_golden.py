"""Golden output of the encoder: the RESP bytes a publication sends for a fixed Arrow input.

A publication's Redis contents must stay byte-for-byte the same across refactorings of the loader.
The encoder (Arrow in, catalog and RESP ``HSET`` stream out) is pure, so these tests pin its
output without Redis or Iceberg: the exact bytes of a tiny case, and a sha256 of a larger one
that spans several buckets of each unit type, url normalisation, a crc32 clash, excluded
experiments and units in several experiments. If one of these fails, the stored layout changed:
that needs a new ``FORMAT_VERSION``, not a new digest.

The server-side scripts are pinned the same way, by the SHA1 Redis knows them by.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pyarrow as pa

from lookup_loader import loader
from lookup_loader.loader import Source, encode
from strata import lookup

AS_OF = dt.date(2026, 11, 2)
START, END = dt.date(2026, 1, 1), dt.date(2099, 12, 31)

ASSIGNMENT_SCHEMA = pa.schema(
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
        ("params", pa.string()),
    ]
)
EXPERIMENT_SCHEMA = pa.schema(
    [
        ("experiment_id", pa.string()),
        ("name", pa.string()),
        ("status", pa.string()),
        ("start_date", pa.date32()),
        ("end_date", pa.date32()),
        ("deployment_key", pa.string()),
    ]
)

#: id -> (unit type, layer, priority, service, status, end date, variant names)
EXPERIMENTS = {
    "checkout_button": ("device_id", "checkout", 200, "checkout", "running", END, ["c", "green"]),
    "feed_ranking": ("user_id", "feed", 100, "checkout", "running", END, ["c", "v2", "v3"]),
    "landing_copy": ("url", "landing", 50, None, "running", END, ["c", "bold"]),
    "search_box": ("device_id", "search", 150, "search", "Running", END, ["c", "wide"]),
    "old_banner": ("device_id", "banner", 10, "home", "stopped", END, ["c", "banner"]),
    "last_week": ("user_id", "promo", 5, "promo", "running", dt.date(2026, 10, 30), ["c", "x"]),
}


def experiments_table(ids: list[str]) -> pa.Table:
    rows = []
    for e in ids:
        _unit, _layer, _prio, _service, status, end, _variants = EXPERIMENTS[e]
        name = e.replace("_", " ").title()
        rows.append({"experiment_id": e, "name": name, "status": status, "start_date": START,
                     "end_date": end, "deployment_key": f"dk-{e}"})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=EXPERIMENT_SCHEMA)


def row(experiment: str, unit_id: str, variant: int) -> dict:
    unit, layer, prio, service, _status, _end, variants = EXPERIMENTS[experiment]
    params = {"exp": experiment, "variant": variants[variant]} if variant else {}
    return {
        "unit_type": unit,
        "unit_id": unit_id,
        "experiment_id": experiment,
        "variant_id": variant,
        "variant_name": variants[variant],
        "is_control": variant == 0,
        "layer_id": layer,
        "domain_id": "main",
        "layer_priority": prio,
        "service": service,
        "params": json.dumps(params, sort_keys=True, separators=(",", ":")),
    }


def source(rows: list[dict], experiments: list[str]) -> Source:
    return Source(
        assignments=pa.Table.from_pylist(rows, schema=ASSIGNMENT_SCHEMA),
        experiments=experiments_table(experiments),
        assignments_snapshot_id=1111,
        experiments_snapshot_id=2222,
        assignments_table="assignments",
    )


def stream_bytes(enc) -> bytes:
    """The RESP bytes ``write_version`` sends: every bucket's HSET, in order."""
    data = enc.stream.buffers()[2]
    if data is None:
        return b""
    return bytes(memoryview(data)[int(enc.command_bytes[0]) : int(enc.command_bytes[-1])])


def tiny_source() -> Source:
    rows = [
        row("checkout_button", "d-1", 1),
        row("checkout_button", "d-2", 0),
        row("old_banner", "d-1", 1),
        row("feed_ranking", "u-1", 2),
        row("landing_copy", "HTTPS://Example.COM/a#top", 1),
    ]
    return source(rows, ["checkout_button", "feed_ranking", "landing_copy", "old_banner"])


def larger_source() -> Source:
    """Several buckets per unit type (48 units per bucket), units in several experiments."""
    rows = []
    for i in range(130):
        rows.append(row("checkout_button", f"d{i:05d}", i % 2))
        if i % 3:
            rows.append(row("search_box", f"d{i:05d}", (i // 3) % 2))
        if i % 5 == 0:
            rows.append(row("old_banner", f"d{i:05d}", 1))
    for i in range(70):
        rows.append(row("feed_ranking", f"u{i:05d}", i % 3))
        if i % 4 == 0:
            rows.append(row("last_week", f"u{i:05d}", 1))
    for i in range(12):
        host = "App.Example.com" if i % 2 else "app.example.com"
        rows.append(row("landing_copy", f"HTTPS://{host}/p/{i}#f{i}", i % 2))
    # 'plumless' and 'buckeroo' share a crc32; a non-ASCII id; unit ids in two experiments
    rows += [row("checkout_button", "plumless", 1), row("search_box", "buckeroo", 0),
             row("search_box", "plumless", 1), row("checkout_button", "buckeroo", 0),
             row("checkout_button", "dévice-ü", 1)]  # fmt: skip
    rows.reverse()  # input order must not matter; reversed, the sort has work to do
    return source(rows, list(EXPERIMENTS))


TINY_STREAM = (
    b"*6\r\n$4\r\nHSET\r\n$20\r\npfx:c9c89717f794:d:0\r\n"
    b"$3\r\nd-2\r\n$3\r\n0.0\r\n$3\r\nd-1\r\n$3\r\n0.1\r\n"
    b"*4\r\n$4\r\nHSET\r\n$20\r\npfx:c9c89717f794:u:0\r\n"
    b"$3\r\nu-1\r\n$3\r\n1.2\r\n"
    b"*4\r\n$4\r\nHSET\r\n$20\r\npfx:c9c89717f794:l:0\r\n"
    b"$21\r\nhttps://example.com/a\r\n$3\r\n2.1\r\n"
)


def _entry(exp: str, name: str, key: str, layer: str, prio: int, service: str | None,
           variants: str) -> str:  # fmt: skip
    svc = "null" if service is None else f'"{service}"'
    return (
        f'{{"domain":"main","endDate":"2099-12-31","id":"{exp}","key":"{key}","layer":"{layer}",'
        f'"name":"{name}","priority":{prio},"service":{svc},"startDate":"2026-01-01",'
        f'"variants":{{{variants}}}}}'
    )


TINY_CATALOG = {
    0: _entry("checkout_button", "Checkout Button", "dk-checkout_button", "checkout", 200,
              "checkout", '"0":{"control":true,"name":"c","params":{}},"1":{"control":false,'
              '"name":"green","params":{"exp":"checkout_button","variant":"green"}}'),
    1: _entry("feed_ranking", "Feed Ranking", "dk-feed_ranking", "feed", 100, "checkout",
              '"2":{"control":false,"name":"v3","params":{"exp":"feed_ranking","variant":"v3"}}'),
    2: _entry("landing_copy", "Landing Copy", "dk-landing_copy", "landing", 50, None,
              '"1":{"control":false,"name":"bold","params":{"exp":"landing_copy",'
              '"variant":"bold"}}'),
}  # fmt: skip
LARGER_COMMAND_UNITS = [46, 42, 45, 34, 36, 12]
LARGER_DIGESTS = (
    "36a73e77998abb4ff17f2c3fa7604efb9d0b4f113fc8d2d8e374195ed5725236",  # 5,430 bytes of RESP
    "e5947621853a16d1c4e63e81709232228f6acd6c36b6ad348153699a85143093",  # the catalog's JSON
)


class TestGolden:
    def test_tiny_case_bytes(self):
        enc = encode(tiny_source(), "pfx", AS_OF)
        assert enc.version == "c9c89717f794"
        assert stream_bytes(enc) == TINY_STREAM
        assert enc.buckets == {"device_id": 1, "user_id": 1, "url": 1}
        assert enc.units == {"device_id": 2, "user_id": 1, "url": 1}
        assert enc.rows == 4
        assert enc.excluded_rows == {"status_stopped": 1}
        assert enc.experiment_index == {"checkout_button": 0, "feed_ranking": 1, "landing_copy": 2}
        assert enc.catalog == TINY_CATALOG

    def test_larger_case_digest(self):
        enc = encode(larger_source(), "strata:lk", AS_OF)
        assert enc.buckets == {"device_id": 3, "user_id": 2, "url": 1}
        assert enc.units == {"device_id": 133, "user_id": 70, "url": 12}
        assert enc.rows == 303
        assert enc.excluded_rows == {"status_stopped": 26, "ended": 18}
        assert enc.experiment_index == {
            "checkout_button": 0, "feed_ranking": 1, "landing_copy": 2, "search_box": 3,
        }  # fmt: skip
        assert enc.command_units.tolist() == LARGER_COMMAND_UNITS
        digest = hashlib.sha256(stream_bytes(enc)).hexdigest()
        catalog = hashlib.sha256(json.dumps(enc.catalog, sort_keys=True).encode()).hexdigest()
        assert (digest, catalog) == LARGER_DIGESTS


#: SHA1 (the ``EVALSHA`` id) of each server-side script.
SCRIPT_SHA1 = {
    "READ_LUA": "a14dd89f6a6616cf1fbea442d990fd11a1261b25",
    "COUNT_LUA": "057977d85299f992a06df9051629f9eeed1753e1",
    "APPLY_TOMBSTONES_LUA": "729a66f9de7863acffd6f309aac7ee585184953c",
    "FLIP_LUA": "619955f0174448dbf1efe79540443d33b0c942ce",
    "DROP_TOMBSTONES_LUA": "31569abe605c5d79e4be3d8eeabfea32d717ec5b",
    "INVALIDATE_LUA": "423120ae9fc4adad2704191a9b5ab20c779fb0fd",
}


def test_the_scripts_are_unchanged():
    scripts = {n: getattr(lookup if n == "READ_LUA" else loader, n) for n in SCRIPT_SHA1}
    got = {n: hashlib.sha1(text.encode()).hexdigest() for n, text in scripts.items()}
    assert got == SCRIPT_SHA1
