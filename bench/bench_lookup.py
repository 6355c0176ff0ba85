"""Benchmark of the Redis lookup table: publication, reader, endpoint, flip visibility.

Each figure is printed beside a reference measured in the same run on the same server, with the
ratio, because the machine is shared and absolute numbers are noisy:

  (a) publication: units/s of the RESP writer vs ``redis-benchmark -P 64 -t set`` (ops/s) and vs
      naive redis-py pipelining; Arrow-from-pyiceberg read time (vs Spark, with ``--spark``);
      Redis memory per unit for three encodings beside the payload bytes;
  (b) reader: single lookup p50/p99 vs a bare redis-py GET; batch lookups/s;
  (c) endpoint (scripts/endpoint.sh: nginx in front of uvicorn) under bounded load from a second
      process: p50/p99 and sustained rate, beside GET /healthz on the same server, and beside
      the same requests sent straight to uvicorn's unix socket (what nginx costs); seed 002's
      ``POST /experiment`` (half its users known to the table, half evaluated online) beside the
      device-register route at the same open-loop rates;
  (d) time from the pointer flip to a polling reader seeing the new version;
  (e) the flip under 0 and 1M fast-path tombstones: SLOWLOG duration and Redis calls of the flip
      script, and of the longest call of the pre-flip pass that applies the tombstones.

Runs its own redis-server (scripts/redis.sh, port 6396) and endpoint (port 8496) in a temporary
STRATA_HOME, and stops both (``--redis-port`` / ``--endpoint-port``, or STRATA_BENCH_REDIS_PORT /
STRATA_BENCH_ENDPOINT_PORT, move them). Results are printed, not committed.

    .venv/bin/python bench/bench_lookup.py [--units 1000000] [--spark] [--tombstones 1000000]
    .venv/bin/python bench/bench_lookup.py --units 20000 --skip b,d,e --endpoint-scale 0.1  # smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDIS_PORT = int(os.environ.get("STRATA_BENCH_REDIS_PORT", "6396"))
ENDPOINT_PORT = int(os.environ.get("STRATA_BENCH_ENDPOINT_PORT", "8496"))
PREFIX = "bench:lk"
#: Open-loop rate of the earlier sessions' endpoint figure (half their measured capacity).
FIXED_RATE = 250
SEED = 20261123
#: Interleaved rounds of the batch figure of section (b); the best of each side is reported.
BATCH_ROUNDS = 5
#: Multiplies the request counts of section (c) (``--endpoint-scale``; 1 for the figures).
ENDPOINT_SCALE = 1.0


def requests(n: int) -> int:
    return max(200, round(n * ENDPOINT_SCALE))


def set_ports(redis_port: int, endpoint_port: int) -> None:
    global REDIS_PORT, ENDPOINT_PORT
    REDIS_PORT, ENDPOINT_PORT = redis_port, endpoint_port


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(label: str, ours: str, reference: str, ratio: float | str) -> None:
    r = f"{ratio:.2f}x" if isinstance(ratio, float) else ratio
    print(f"  {label:<44} {ours:>20}   {reference:>28}   {r:>8}")


def header(title: str) -> None:
    print(f"\n{title}")
    print(f"  {'measure':<44} {'ours':>20}   {'reference (same run)':>28}   {'ratio':>8}")


# --------------------------------------------------------------------------------------------
# Source tables (columnar, fast to build for millions of units)
# --------------------------------------------------------------------------------------------


def build_tables(units: int):
    """``units`` devices in checkout_button, a quarter of them also in a second device layer,
    plus units/10 users in feed_ranking (so values hold one or two tokens, like real traffic)."""
    import numpy as np
    import pyarrow as pa

    from lookup_loader.sample import (
        SAMPLE_EXPERIMENTS,
        assignments_schema,
        experiments_table,
    )
    from strata.bucketing import slot

    exps = [dict(e) for e in SAMPLE_EXPERIMENTS[:3]]
    second = dict(SAMPLE_EXPERIMENTS[0]) | {
        "experiment_id": "search_box",
        "name": "Search box",
        "layer_id": "search",
        "layer_priority": 150,
        "service": "search",
        "variants": [("control", {"box": "small"}), ("big", {"box": "big"})],
    }
    exps.insert(1, second)
    devices = [f"d{i:09d}" for i in range(units)]
    users = [f"u{i:09d}" for i in range(units // 10)]
    parts = []
    for exp, ids in ((exps[0], devices), (second, devices[: units // 4]), (exps[2], users)):
        n = len(ids)
        slots = np.fromiter((slot(exp["experiment_id"], u) for u in ids), np.int32, count=n)
        k = len(exp["variants"])
        vid = np.minimum(slots // (10_000 // k), k - 1).astype(np.int32)
        names = pa.array([v[0] for v in exp["variants"]]).take(pa.array(vid))
        params = pa.array(
            [json.dumps(v[1], sort_keys=True, separators=(",", ":")) for v in exp["variants"]]
        ).take(pa.array(vid))

        def const(v, t=None, n=n):
            return pa.array([v] * n, t or pa.string())

        parts.append(
            pa.table(
                {
                    "unit_type": const(exp["unit_type"]),
                    "unit_id": pa.array(ids),
                    "experiment_id": const(exp["experiment_id"]),
                    "variant_id": pa.array(vid),
                    "variant_name": names,
                    "is_control": pa.array(vid == 0),
                    "layer_id": const(exp["layer_id"]),
                    "domain_id": const("main"),
                    "layer_priority": const(exp["layer_priority"], pa.int32()),
                    "service": const(exp["service"]),
                    "slot": pa.array(slots),
                    "params": params,
                    "definitions_version": const("bench-1"),
                    "run_id": const("bench"),
                    "assigned_at": pa.array(
                        [dt.datetime(2026, 11, 1, tzinfo=dt.UTC)] * n,
                        pa.timestamp("us", tz="UTC"),
                    ),
                },
                schema=assignments_schema(),
            )
        )
    return pa.concat_tables(parts), experiments_table(exps)


# --------------------------------------------------------------------------------------------
# (a) publication
# --------------------------------------------------------------------------------------------


def redis_benchmark_set(client, n: int) -> float:
    """ops/s of ``redis-benchmark -P 64 -t set`` on the same server (random keys over n).

    redis-benchmark only takes a password on its command line, so it gets a throwaway ACL user
    that is deleted right after; the configured secret never appears in ``ps``.
    """
    import secrets

    user, password = f"bench-{secrets.token_hex(4)}", secrets.token_hex(16)
    client.acl_setuser(user, enabled=True, passwords=[f"+{password}"], commands=["+@all"],
                       keys=["*"])  # fmt: skip
    try:
        out = subprocess.run(
            ["redis-benchmark", "-h", "127.0.0.1", "-p", str(REDIS_PORT), "--user", user,
             "-a", password, "-P", "64", "-t", "set", "-n", str(n), "-r", str(n), "-q"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        client.acl_deluser(user)
    # "SET: 812345.67 requests per second, p50=..." (the last \r-separated progress line)
    line = [x for x in out.replace("\r", "\n").splitlines() if x.startswith("SET:")][-1]
    return float(line.split()[1])


def naive_pipeline(client, units: list[tuple[str, str]]) -> float:
    """units/s of redis-py pipelined HSETs (one per unit, batches of 1000): the naive way."""
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i, (uid, value) in enumerate(units, 1):
        pipe.hset(f"naive:{uid}", "v", value)
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()
    elapsed = time.perf_counter() - started
    for i in range(0, len(units), 5000):
        client.unlink(*[f"naive:{u}" for u, _ in units[i : i + 5000]])
    return len(units) / elapsed


def encoding_memory(client, units: list[tuple[str, str]]) -> dict[str, float]:
    """Bytes per unit of three layouts for the same units (used_memory delta / units)."""
    import zlib

    from strata.keyspace import UNITS_PER_BUCKET, bucket_count

    out = {}
    nb = bucket_count(len(units), UNITS_PER_BUCKET)
    layouts = {
        "string key per unit (SET)": lambda p, u, v: p.set(f"m:s:{u}", v),
        "hash key per unit (HSET 1 field)": lambda p, u, v: p.hset(f"m:h:{u}", "v", v),
        "bucketed hashes (chosen)": lambda p, u, v: p.hset(
            f"m:b:{zlib.crc32(u.encode()) % nb}", u, v
        ),
    }
    if client.connection_pool.connection_kwargs.get("db") != 1:
        raise RuntimeError("encoding_memory flushes its database: give it the scratch db 1")
    for name, op in layouts.items():
        client.flushdb()  # db 1, the benchmark's scratch db: each layout starts from empty
        client.memory_purge()
        before = client.info("memory")["used_memory"]
        pipe = client.pipeline(transaction=False)
        for i, (u, v) in enumerate(units, 1):
            op(pipe, u, v)
            if i % 2000 == 0:
                pipe.execute()
        pipe.execute()
        out[name] = (client.info("memory")["used_memory"] - before) / len(units)
    client.flushdb()
    return out


def bench_publication(settings, units: int, spark: bool) -> dict:
    import pyarrow.compute as pc

    from lookup_loader import loader
    from lookup_loader.sample import write_tables
    from strata.keyspace import KeySpace
    from strata.stack import redis_client

    # FLUSHDB of a 10M-unit version runs for seconds (minutes under load): no socket timeout
    client = redis_client(settings, socket_timeout=600)
    t0 = time.perf_counter()
    assignments, experiments = build_tables(units)
    build_s = time.perf_counter() - t0
    write_tables(settings, assignments, experiments)
    print(
        f"\nsource: {assignments.num_rows:,} assignment rows for {units + units // 10:,} units "
        f"(built in {build_s:.1f} s, written to Iceberg through pyiceberg)"
    )

    t0 = time.perf_counter()
    source = loader.read_source(settings)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc = loader.encode(source, PREFIX)
    encode_s = time.perf_counter() - t0
    total_units = sum(enc.units.values())
    payload = (
        pc.sum(pc.binary_length(enc.grouped["unit_id"])).as_py()
        + pc.sum(pc.binary_length(enc.grouped["value"])).as_py()
    )

    ref_ops = redis_benchmark_set(client, max(total_units, 1_000_000))
    client.flushdb()

    writes = {}
    for writers in (1, 2, 3):
        client.flushdb()
        before = client.info("memory")["used_memory"]
        t0 = time.perf_counter()
        loader.write_version(settings, enc, writers=writers)
        writes[writers] = time.perf_counter() - t0
        if writers == 1:
            version_memory = client.info("memory")["used_memory"] - before
    client.flushdb()
    result = loader.publish(settings, prefix=PREFIX, publications_table=None, writers=2)
    sample_units = list(
        zip(
            enc.grouped["unit_id"].slice(0, 200_000).to_pylist(),
            enc.grouped["value"].slice(0, 200_000).to_pylist(),
            strict=True,
        )
    )
    naive = naive_pipeline(client, sample_units)
    # db 1 of the same server (URL options win over redis-py keyword arguments, so change the URL)
    scratch = redis_client(settings.model_copy(update={"redis_url": settings.redis_url[:-1] + "1"}))
    layouts = encoding_memory(scratch, sample_units[:100_000])

    header(f"(a) publication of {total_units:,} units ({assignments.num_rows:,} rows)")
    best_writers = min(writes, key=writes.get)
    for writers, secs in writes.items():
        rate = total_units / secs
        row(
            f"RESP writer, {writers} connection(s), units/s",
            f"{rate:,.0f}",
            f"redis-benchmark SET {ref_ops:,.0f}/s",
            rate / ref_ops,
        )
    row(
        "naive redis-py pipeline HSET, units/s",
        f"{naive:,.0f}",
        f"redis-benchmark SET {ref_ops:,.0f}/s",
        naive / ref_ops,
    )
    e2e = total_units / result.duration_s
    row(
        "publish() end to end (read+encode+write+verify+flip)",
        f"{e2e:,.0f} units/s",
        f"redis-benchmark SET {ref_ops:,.0f}/s",
        e2e / ref_ops,
    )
    rest = result.duration_s - result.read_s - result.encode_s - result.write_s - result.verify_s
    print(
        f"  publish() {result.duration_s:.2f} s = pyiceberg read {result.read_s:.2f} + encode "
        f"{result.encode_s:.2f} + write {result.write_s:.2f} (2 conn) + verify "
        f"{result.verify_s:.2f} + lock/meta/flip/cleanup {rest:.2f}; "
        f"{result.bytes_sent / 1e6:.1f} MB of RESP\n"
        f"  stand-alone stages before it: read {read_s:.2f} s, encode {encode_s:.2f} s, write "
        f"{writes[best_writers]:.2f} s (best: {best_writers} conn); load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    if spark:
        bench_spark_read(settings, read_s)

    per_unit = version_memory / total_units
    header("(a) Redis memory per unit")
    row(
        "bucketed hashes, full version",
        f"{per_unit:.1f} B/unit",
        f"payload {payload / total_units:.1f} B/unit",
        f"+{per_unit - payload / total_units:.1f} B",
    )
    sample_payload = sum(len(u) + len(v) for u, v in sample_units[:100_000]) / 100_000
    for name, b in layouts.items():
        row(name + " (100k units)", f"{b:.1f} B/unit", f"payload {sample_payload:.1f} B/unit",
            f"+{b - sample_payload:.1f} B")  # fmt: skip
    ks = KeySpace(PREFIX)
    return {"version": result.version, "client": client, "ks": ks, "units": total_units}


def bench_spark_read(settings, pyiceberg_s: float) -> None:
    """Time for Spark to hand the same table to Python (Arrow-enabled toPandas), JVM warm."""
    from strata.stack import spark_session

    spark = spark_session(settings, app_name="bench-lookup")
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    spark.table(settings.table("assignments")).limit(10).toPandas()  # warm-up
    t0 = time.perf_counter()
    frame = spark.table(settings.table("assignments")).toPandas()
    spark_s = time.perf_counter() - t0
    row(
        "source read: pyiceberg Arrow vs Spark toPandas",
        f"{pyiceberg_s:.2f} s",
        f"Spark {spark_s:.2f} s ({len(frame):,} rows)",
        spark_s / pyiceberg_s,
    )
    spark.stop()


# --------------------------------------------------------------------------------------------
# (b) reader, (d) flip visibility
# --------------------------------------------------------------------------------------------


def bench_reader(settings, units: int) -> None:
    import random

    from strata.lookup import LookupClient
    from strata.stack import redis_client

    reader = LookupClient(settings, prefix=PREFIX)
    raw = redis_client(settings)
    raw.set("bench:ref", "x" * 40)
    rng = random.Random(SEED)
    ids = [f"d{rng.randrange(units):09d}" for _ in range(20_000)]
    users = [f"u{rng.randrange(units // 10):09d}" for _ in range(20_000)]
    reader.lookup(ids[0])  # catalog cached
    single, triple, ref = [], [], []
    for i, d in enumerate(ids):
        t0 = time.perf_counter()
        raw.get("bench:ref")
        t1 = time.perf_counter()
        actions = reader.lookup(d)
        t2 = time.perf_counter()
        reader.lookup(d, users[i], "https://app.example.com/p/1")
        t3 = time.perf_counter()
        ref.append(t1 - t0)
        single.append(t2 - t1)
        triple.append(t3 - t2)
        if i == 0:
            assert actions, "the benchmark's units must be published"
    load_b = os.getloadavg()[0]
    cpu = {}
    for name, fn in (("lookup", reader.lookup), ("GET", lambda _d: raw.get("bench:ref"))):
        t0 = time.process_time()
        for d in ids[:5000]:
            fn(d)
        cpu[name] = (time.process_time() - t0) / 5000
    header(
        f"(b) reader client, 20,000 lookups each, interleaved with the reference "
        f"(load average {load_b:.1f} on {os.cpu_count()} cores)"
    )
    for label, xs in (("lookup(device_id)", single), ("lookup(device, user, url)", triple)):
        for q in (0.5, 0.99, 0.999):
            row(
                f"{label} p{q * 100:g}",
                f"{pct(xs, q) * 1e3:.3f} ms",
                f"redis-py GET {pct(ref, q) * 1e3:.3f} ms",
                pct(xs, q) / pct(ref, q),
            )
        over = sum(x > 1e-3 for x in xs) / len(xs)
        row(f"{label}: share over 1 ms", f"{over:.2%}",
            f"GET {sum(x > 1e-3 for x in ref) / len(ref):.2%}", "")  # fmt: skip
    row("client CPU per call (process_time)", f"{cpu['lookup'] * 1e6:.0f} us",
        f"redis-py GET {cpu['GET'] * 1e6:.0f} us", cpu["lookup"] / cpu["GET"])  # fmt: skip
    p99 = pct(single, 0.99) * 1e3
    row("anchor: lookup(device_id) p99", f"{p99:.3f} ms", "target 1 ms",
        "met" if p99 < 1 else "NOT met")  # fmt: skip
    # One batch takes tens of ms: on a shared machine a single shot measures the neighbours.
    # Best of BATCH_ROUNDS interleaved rounds each (the answers dropped inside the timing, as a
    # caller that serves them would).
    batch = [(d, None, None) for d in ids[:10_000]]
    batch_s, pipe_s = [], []
    for _ in range(BATCH_ROUNDS):
        t0 = time.perf_counter()
        reader.lookup_many(batch)
        batch_s.append(time.perf_counter() - t0)
        pipe = raw.pipeline(transaction=False)
        for d in ids[:10_000]:
            pipe.get(f"bench:none:{d}")
        t0 = time.perf_counter()
        pipe.execute()
        pipe_s.append(time.perf_counter() - t0)
    batch_rate, pipe_rate = len(batch) / min(batch_s), 10_000 / min(pipe_s)
    row(f"lookup_many, 10,000 devices: lookups/s (best of {BATCH_ROUNDS})", f"{batch_rate:,.0f}",
        f"pipelined GETs {pipe_rate:,.0f}/s", batch_rate / pipe_rate)  # fmt: skip


def bench_flip(settings, units: int) -> None:
    """A reader polls lookup(); the loader publishes a new snapshot; delay = seen - flipped."""
    from lookup_loader import loader
    from lookup_loader.sample import write_tables
    from strata.keyspace import KeySpace
    from strata.lookup import LookupClient

    ks = KeySpace(PREFIX)
    delays = []
    for attempt in range(3):
        assignments, experiments = build_tables(50_000)
        write_tables(settings, assignments, experiments)
        reader = LookupClient(settings, prefix=PREFIX)
        old = reader.live_version()
        seen: dict[str, float] = {}
        stop = threading.Event()

        def poll(reader=reader, old=old, seen=seen, stop=stop) -> None:
            while not stop.is_set():
                ans = reader.answer("d000000001")
                if ans.version != old:
                    seen["t"] = time.time()
                    return

        t = threading.Thread(target=poll)
        t.start()
        result = loader.publish(settings, prefix=PREFIX, publications_table=None)
        t.join(timeout=30)
        stop.set()
        live_at = int(reader.redis.hget(ks.meta(result.version), "live_at")) / 1000
        delays.append((seen["t"] - live_at) * 1000)
        del attempt
    header("(d) pointer flip -> reader sees the new version (3 publications)")
    row("max delay", f"{max(delays):.1f} ms", "target (seed 002) 100 ms", max(delays) / 100)


def bench_tombstones(settings, tombstones: int) -> None:
    """(e) The flip's cost at 0 and ``tombstones`` fast-path removals, from Redis' SLOWLOG (every
    command logged with its server-side duration) and INFO commandstats (calls, script calls
    included). The flip at 0 tombstones, same run, is the reference."""
    import zlib

    import lookup_loader.publish as publication
    from lookup_loader import loader
    from lookup_loader.sample import write_tables
    from strata.keyspace import KeySpace
    from strata.stack import redis_client

    admin = redis_client(settings, socket_timeout=600)
    ks = KeySpace(PREFIX)
    flip_sha = admin.script_load(loader.FLIP_LUA)
    apply_sha = admin.script_load(loader.APPLY_TOMBSTONES_LUA)
    # Commands a script calls are logged too (each well under 20 us): a threshold of 0 would log
    # millions of them, evicting the scripts' own entries and slowing the server down.
    admin.config_set("slowlog-log-slower-than", 20)
    admin.config_set("slowlog-max-len", 100_000)

    def calls() -> int:
        stats = admin.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    measured: dict[int, dict[str, float]] = {}
    original = publication.flip
    for count in (0, tombstones):
        admin.delete(ks.tombstones, ks.tombstone_log, ks.tombstone_seq)
        for lo in range(0, count, 20_000):  # stored as invalidate stores them (units not held)
            ids = [f"ghost-{i}" for i in range(lo, min(count, lo + 20_000))]
            fields = [f"d\ncheckout_button\n{u}" for u in ids]
            values = [f"1:{zlib.crc32(u.encode())}" for u in ids]
            pipe = admin.pipeline(transaction=False)
            pipe.hset(ks.tombstones, mapping=dict(zip(fields, values, strict=True)))
            pipe.zadd(ks.tombstone_log, {f: lo + j + 1 for j, f in enumerate(fields)})
            pipe.execute()
        admin.set(ks.tombstone_seq, count)
        write_tables(settings, *build_tables(50_000))
        flip_calls: list[int] = []

        def counted(client, version, since, prefix, flip_calls=flip_calls):
            before = calls()
            out = original(client, version, since, prefix)
            flip_calls.append(calls() - before)
            return out

        publication.flip = counted
        admin.slowlog_reset()
        try:
            result = loader.publish(settings, prefix=PREFIX, publications_table=None)
        finally:
            publication.flip = original
        log = admin.slowlog_get(100_000)
        sha_of = {e["id"]: (e["command"].split(b" ")[1] if e["command"].startswith(b"EVALSHA")
                            else b"") for e in log}  # fmt: skip
        flips = [e["duration"] for e in log if sha_of[e["id"]] == flip_sha.encode()]
        passes = [e["duration"] for e in log if sha_of[e["id"]] == apply_sha.encode()]
        measured[count] = {
            "flip_us": max(flips),
            "flip_calls": flip_calls[0],
            "pass_max_us": max(passes, default=0),
            "pass_total_s": sum(passes) / 1e6,
            "pass_n": len(passes),
            "publish_s": result.duration_s,
        }
    admin.config_set("slowlog-log-slower-than", 10_000)
    admin.delete(ks.tombstones, ks.tombstone_log, ks.tombstone_seq)
    zero, many = measured[0], measured[tombstones]
    header(f"(e) the flip under {tombstones:,} fast-path tombstones (SLOWLOG, commandstats)")
    at0 = f"0 tombstones {zero['flip_us']:,} us"
    row("flip script, server time", f"{many['flip_us']:,} us", at0,
        many["flip_us"] / max(zero["flip_us"], 1))  # fmt: skip
    row("flip script, Redis calls", f"{many['flip_calls']:,}",
        f"0 tombstones {zero['flip_calls']:,}",
        many["flip_calls"] / zero["flip_calls"])  # fmt: skip
    row("pre-flip pass: longest call (server time)", f"{many['pass_max_us']:,} us", at0,
        many["pass_max_us"] / max(zero["flip_us"], 1))  # fmt: skip
    row("pre-flip pass: calls / total server time",
        f"{many['pass_n']:,} / {many['pass_total_s']:.2f} s",
        f"0 tombstones {zero['pass_n']} / {zero['pass_total_s']:.3f} s", "-")  # fmt: skip
    row("publish() 50k units, end to end", f"{many['publish_s']:.2f} s",
        f"0 tombstones {zero['publish_s']:.2f} s",
        many["publish_s"] / zero["publish_s"])  # fmt: skip


# --------------------------------------------------------------------------------------------
# (c) endpoint under bounded load from a second process
# --------------------------------------------------------------------------------------------

LOAD_CLIENT = r"""
# A thin load generator: raw keep-alive sockets, a selector, no HTTP library (http.client parses
# headers through email.parser: ~0.15 ms of CPU per request on the same 2 cores as the server).
import json, random, selectors, socket, sys, time
target, n, path, rate, units, conns = sys.argv[1:7]  # target: a TCP port or a unix socket path
n, rate, units, conns = int(n), float(rate), int(units), int(conns)
rng = random.Random(7)

def request(i):
    if path == "healthz":
        return b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    d = f"d{rng.randrange(units):09d}"
    if path == "experiment":  # seed 002: a known device; a known user or one evaluated online
        user = f"u{rng.randrange(1000):09d}" if i % 2 else f"n{rng.randrange(10**6):09d}"
        body = json.dumps({"services": ["checkout", "feed", "search"], "context": {
            "user_id": user, "device_id": d, "country": "US", "age": 20 + i % 50,
            "org_plan": "free", "org_seats": 10, "is_premium": False}}).encode()
        return (b"POST /experiment HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    body = json.dumps({"id": "api.device.register", "params": {"msgid": str(i)},
                       "request": {"did": d, "ext": {"userid": f"u{rng.randrange(1000):09d}"}}})
    body = body.encode()
    return (b"POST /v1/device/register/%s HTTP/1.1\r\nHost: bench\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (d.encode(), len(body), body))

sel = selectors.DefaultSelector()
idle, state = [], {}

def connect():
    if target.isdigit():
        s = socket.create_connection(("127.0.0.1", int(target)), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(target)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    idle.append(s)
    state[s] = [b"", 0.0]

for _ in range(conns):
    connect()

def parse(buf):
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    at = head.find(b"content-length:")
    length = int(head[at + 15 :].split(b"\r\n", 1)[0])
    if len(buf) < end + 4 + length:
        return None
    return buf[9:12], end + 4 + length, b"connection: close" in head

def run(total, warm=False):
    lat, sent, done = [], 0, 0
    start = time.perf_counter()
    while done < total:
        now = time.perf_counter()
        # open loop: request i is due at start + i / rate; its latency counts from then (so a
        # stall delays and is charged to every request due behind it: no coordinated omission)
        while sent < total and idle and (not rate or now >= start + sent / rate):
            s = idle.pop(0)  # round robin: no connection idles into the server's keep-alive timeout
            state[s][1] = start + sent / rate if rate else now
            s.sendall(request(sent))
            sent += 1
        timeout = None
        if rate and sent < total and idle:
            timeout = max(0.0, start + sent / rate - time.perf_counter())
        for key, _ in sel.select(timeout):
            s = key.fileobj
            data = s.recv(65536)
            if not data and s in idle:  # closed while idle (keep-alive timeout): replace it
                idle.remove(s)
                sel.unregister(s)
                s.close()
                connect()
                continue
            if not data:
                raise SystemExit("server closed a connection with a request in flight")
            buf = state[s][0] + data
            got = parse(buf)
            if got is None:
                state[s][0] = buf
                continue
            status, used, closing = got
            if status != b"200":
                raise SystemExit(f"HTTP {status!r}: {buf[:300]!r}")
            state[s][0] = buf[used:]
            lat.append(time.perf_counter() - state[s][1])
            done += 1
            if closing:  # the server's last answer on it (nginx: keepalive_requests 1000)
                sel.unregister(s)
                s.close()
                connect()
            else:
                idle.append(s)
    return lat, time.perf_counter() - start

run(200)  # warm-up: connections, catalog cache, memo
lat, total = run(n)
print(json.dumps({"lat": lat, "total": total}))
"""


def load(n: int, path: str, units: int, *, rate: float = 0, conns: int = 1, target: str = ""):
    """(latencies, requests/s, load average) of one run of the load client in its own process
    (against the endpoint's port, or ``target``: uvicorn's unix socket behind it)."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_CLIENT, target or str(ENDPOINT_PORT), str(n), path, str(rate),
         str(units), str(conns)], capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"load client ({path}, {conns} conn) failed: {done.stderr[-2000:]}")
    data = json.loads(done.stdout)
    return data["lat"], n / data["total"], os.getloadavg()[0]


def cpu_seconds(pids) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def bench_endpoint(units: int) -> None:
    from strata_apps.endpoint_server import _descendants, run_dir_for

    env = os.environ | {"STRATA_ENDPOINT_PORT": str(ENDPOINT_PORT), "STRATA_LOOKUP_PREFIX": PREFIX}
    script = ROOT / "scripts" / "endpoint.sh"
    started = subprocess.run([script, "start"], check=True, capture_output=True, env=env, text=True)
    home = Path(os.environ["STRATA_HOME"])
    app_socket = str(run_dir_for(home, ENDPOINT_PORT) / "app.sock")
    server_pid = int((home / "endpoint" / f"endpoint-{ENDPOINT_PORT}.pid").read_text())
    nginx_pids = sorted(_descendants(server_pid) - {server_pid})
    cpu = {"via_app": 0.0, "via_nginx": 0.0, "bare_app": 0.0, "requests": 0}
    runs = {}
    try:
        for conns in (1, 4):  # closed loop: 1 keep-alive connection, then 4 (bounded concurrency)
            runs[f"ref{conns}"] = load(requests(3000), "healthz", units, conns=conns)
            runs[f"closed{conns}"] = load(requests(5000), "register", units, conns=conns)
        open_rate = round(runs["closed1"][1] / 2)  # half the 1-connection capacity
        runs["open"] = load(requests(5000), "register", units, rate=open_rate, conns=4)
        runs["refopen"] = load(requests(5000), "healthz", units, rate=open_rate, conns=4)
        # seed 002's evaluation API at the same open-loop rate as the device-register route
        runs["xopen"] = load(requests(5000), "experiment", units, rate=open_rate, conns=4)
        # and at the fixed rate of the earlier sessions' open loop, comparable across runs
        runs["fixed"] = load(requests(3000), "register", units, rate=FIXED_RATE, conns=4)
        runs["reffixed"] = load(requests(3000), "healthz", units, rate=FIXED_RATE, conns=4)
        runs["xfixed"] = load(requests(3000), "experiment", units, rate=FIXED_RATE, conns=4)
        # what the nginx hop costs: the same requests through nginx and straight to uvicorn's
        # socket, alternated three times so a change in the machine's load hits both alike
        for name, rate, conns in (("1", 0, 1), ("open", FIXED_RATE, 4)):
            via, bare = [], []
            for _ in range(3):
                app0, nginx0 = cpu_seconds([server_pid]), cpu_seconds(nginx_pids)
                via += load(requests(1500), "register", units, rate=rate, conns=conns)[0]
                app1, nginx1 = cpu_seconds([server_pid]), cpu_seconds(nginx_pids)
                bare += load(requests(1500), "register", units, rate=rate, conns=conns,
                             target=app_socket)[0]  # fmt: skip
                cpu["via_app"] += app1 - app0
                cpu["via_nginx"] += nginx1 - nginx0
                cpu["bare_app"] += cpu_seconds([server_pid]) - app1
                cpu["requests"] += 200 + requests(1500)  # warm-up + the run
            runs[f"via{name}"], runs[f"bare{name}"] = (via,), (bare,)
    finally:
        subprocess.run([script, "stop"], check=True, capture_output=True, env=env)
    header(
        "(c) endpoint, load from a second process (raw keep-alive sockets)\n  "
        + started.stdout.strip()
    )
    for label, ours, ref in (
        ("closed loop, 1 connection, 5,000 req", "closed1", "ref1"),
        ("closed loop, 4 connections, 5,000 req", "closed4", "ref4"),
        (f"open loop {open_rate}/s, <=4 conn, 5,000 req", "open", "refopen"),
        (f"open loop {FIXED_RATE}/s, <=4 conn, 3,000 req", "fixed", "reffixed"),
        (f"POST /experiment, open loop {open_rate}/s, <=4 conn", "xopen", "refopen"),
        (f"POST /experiment, open loop {FIXED_RATE}/s, <=4 conn", "xfixed", "reffixed"),
    ):
        lat, rate, load_avg = runs[ours]
        ref_lat, ref_rate, _ = runs[ref]
        for q in (0.5, 0.99):
            r = pct(ref_lat, q)
            row(f"{label} p{int(q * 100)}", f"{pct(lat, q) * 1e3:.2f} ms",
                f"GET /healthz {r * 1e3:.2f} ms", pct(lat, q) / r)  # fmt: skip
        row(f"{label}: rate (load {load_avg:.1f})", f"{rate:,.0f} req/s",
            f"/healthz {ref_rate:,.0f} req/s", rate / ref_rate)  # fmt: skip
    for label, ours, ref in (
        ("nginx hop: closed loop, 1 conn, 3x1,500 req", "via1", "bare1"),
        (f"nginx hop: open loop {FIXED_RATE}/s, 3x1,500 req", "viaopen", "bareopen"),
    ):
        for q in (0.5, 0.99):
            r = pct(runs[ref][0], q)
            row(f"{label} p{int(q * 100)}", f"{pct(runs[ours][0], q) * 1e3:.2f} ms",
                f"uvicorn socket alone {r * 1e3:.2f} ms", pct(runs[ours][0], q) / r)  # fmt: skip
    per = 1e6 / cpu["requests"]
    row("server CPU per request via nginx (app + nginx)",
        f"{cpu['via_app'] * per:.0f} + {cpu['via_nginx'] * per:.0f} us",
        f"uvicorn socket alone {cpu['bare_app'] * per:.0f} us",
        (cpu["via_app"] + cpu["via_nginx"]) / cpu["bare_app"])  # fmt: skip
    for name, rate in (("open", open_rate), ("fixed", FIXED_RATE)):
        for route, key in (("register", name), ("POST /experiment", f"x{name}")):
            p99 = pct(runs[key][0], 0.99) * 1e3
            reg = pct(runs[name][0], 0.99) * 1e3
            row(f"anchor: {route} p99, open loop {rate}/s (from due time)", f"{p99:.2f} ms",
                f"target (seed 002) 5 ms; register {reg:.2f} ms",
                "met" if p99 < 5 else "NOT met")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=1_000_000, help="devices (users = /10)")
    parser.add_argument("--spark", action="store_true", help="also time Spark reading the source")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: b,c,d,e")
    parser.add_argument("--tombstones", type=int, default=1_000_000, help="section (e)")
    parser.add_argument("--redis-port", type=int, default=REDIS_PORT)
    parser.add_argument("--endpoint-port", type=int, default=ENDPOINT_PORT)
    parser.add_argument("--endpoint-scale", type=float, default=1.0,
                        help="multiply the request counts of (c); 0.1: a smoke run")  # fmt: skip
    args = parser.parse_args()
    global ENDPOINT_SCALE
    ENDPOINT_SCALE = args.endpoint_scale
    set_ports(args.redis_port, args.endpoint_port)
    home = Path(tempfile.mkdtemp(prefix="strata-bench-lookup-"))
    os.environ.update(
        {
            "STRATA_HOME": str(home),
            "STRATA_REDIS_PORT": str(REDIS_PORT),
            "STRATA_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
        }
    )
    os.environ.pop("STRATA_REDIS_PASSWORD", None)
    from strata.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    redis_sh = ROOT / "scripts" / "redis.sh"
    import socket

    for port in (REDIS_PORT, ENDPOINT_PORT):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                print(f"bench_lookup: port {port} is already in use; stop that server first")
                return 1
    subprocess.run([redis_sh, "start"], check=True, capture_output=True)
    print(
        f"bench_lookup: {os.cpu_count()} cores shared with other workloads (load average "
        f"{os.getloadavg()[0]:.1f} at start); redis-server {REDIS_PORT}, home {home}"
    )
    try:
        bench_publication(settings, args.units, args.spark)
        if "b" not in args.skip:
            bench_reader(settings, args.units)
        if "c" not in args.skip:
            bench_endpoint(args.units)
        if "d" not in args.skip:
            bench_flip(settings, args.units)
        if "e" not in args.skip:
            bench_tombstones(settings, args.tombstones)
    finally:
        subprocess.run([redis_sh, "stop"], check=True, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)  # the benchmark's tables and Redis files
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
