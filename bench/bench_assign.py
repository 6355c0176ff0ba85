"""Benchmark: the native assignment vs a bare hash scan and vs a Python UDF, in one run.

10M units x 10 layers with targeting rules on local[2] (defaults). Three measurements over the
same cached units, each forced with a ``noop`` write (whole rows, so nothing is pruned; the plans
are checked to hash every slot), best of ``--repeat`` runs, with wall time and the JVM's CPU time
(the machine may be shared: the load average is printed with every figure):

- full: :func:`spark_jobs.assign_experiments.assign_units` (domain split, slots, targeting,
  variant choice, one row per unit and experiment);
- (a) bare scan: only the 10 layer slots ``pmod(xxhash64(concat(salt, ':', id)), 10000)``;
- (b) UDF: the same assignment with the Python reference (:func:`strata.assignment.assign_unit`)
  in a Python UDF, on a smaller sample (``--udf-units``), reported as units/s.

    .venv/bin/python bench/bench_assign.py [--units 10000000] [--udf-units 200000] [--breakdown]

``--breakdown`` also times the job's stages cumulatively (where the time goes).

Results are printed, not committed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

#: Inside every generated experiment's window (2026-11-08 .. 2026-11-14).
DAY = dt.date(2026, 11, 8)

LAYERS = 10
JIT_FLAG = "-XX:-DontCompileHugeMethods"


def definitions_yaml() -> str:
    """10 layers in two domains, two experiments per layer, each with a targeting rule."""
    out = [
        "domains:",
        "  - {id: main, salt: bench-split, slots: [0, 8000]}",
        "  - {id: side, salt: bench-split, slots: [8000, 10000]}",
        "layers:",
    ]
    for i in range(LAYERS):
        domain = "main" if i < 7 else "side"
        out.append(
            f"  - {{id: l{i}, domain: {domain}, salt: bench-{i}, unit_type: user_id, "
            f"priority: {100 + i}, service: s{i % 3}}}"
        )
    out.append("experiments:")
    rules = [
        "{type: field, field: country, op: in, values: [US, GB, DE]}",
        "{type: field, field: age, op: gte, values: [18]}",
        '{type: field, field: app_version, op: gte, values: ["2.0.0"], value_type: semver}',
        "{type: and, children: [{type: field, field: platform, op: eq, values: [ios]}, "
        "{type: not, children: [{type: field, field: is_premium, op: eq, values: [true]}]}]}",
        '{type: field, field: language, op: like, values: ["e*"]}',
    ]
    vid = 1
    for i in range(LAYERS):
        for j, (start, end) in enumerate([(0, 4000), (4000, 9000)]):
            mid = (start + end) // 2
            out += [
                f"  - id: e{i}_{j}",
                f"    name: e{i}_{j}",
                "    owner: bench",
                f"    layer: l{i}",
                "    status: running",
                "    start_date: 2026-11-08",
                "    end_date: 2026-11-14",
                f"    targeting: {rules[(i + j) % len(rules)]}",
                "    variants:",
                f"      - {{vid: {vid}, name: control, is_control: true, start: {start}, "
                f"end: {mid}, params: {{x: {{a: 1}}}}}}",
                f"      - {{vid: {vid + 1}, name: treatment, start: {mid}, end: {end}, "
                f"params: {{x: {{a: 2}}}}}}",
            ]
            vid += 2
    return "\n".join(out) + "\n"


def units_frame(spark, n: int):
    """n user units with targeting fields, derived from hashes (no Python)."""
    from pyspark.sql import functions as F

    idx = F.col("id")

    def pick(tag, values):
        h = F.pmod(F.xxhash64(F.lit(tag), idx), F.lit(len(values)))
        return F.element_at(F.array(*[F.lit(v) for v in values]), (h + 1).cast("int"))

    return spark.range(n).select(
        F.format_string("u%09d", idx).alias("user_id"),
        pick("country", ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CZ"]).alias("country"),
        pick("language", ["en", "de", "fr", "es", "ja"]).alias("language"),
        (F.pmod(F.xxhash64(F.lit("age"), idx), F.lit(60)) + 16).cast("int").alias("age"),
        pick("platform", ["ios", "android", "web"]).alias("platform"),
        pick("version", ["1.9.9", "2.0.0-beta.1", "2.0.0", "2.3.1", "3.0.0"]).alias("app_version"),
        (F.pmod(F.xxhash64(F.lit("premium"), idx), F.lit(8)) == 0).alias("is_premium"),
    )


def jvm_cpu_seconds(spark) -> float:
    """CPU time used so far by the (local-mode) JVM: less sensitive to other load than wall time."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def noop(df) -> None:
    """Force every output column of every row: the noop sink writes (and drops) whole rows."""
    df.write.format("noop").mode("overwrite").save()


def measure(spark, label: str, action, repeat: int) -> tuple[float, float]:
    """Best wall seconds and best JVM CPU seconds of ``repeat`` runs."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        cpu0, started = jvm_cpu_seconds(spark), time.perf_counter()
        action()
        wall, cpu = time.perf_counter() - started, jvm_cpu_seconds(spark) - cpu0
        best = [min(best[0], wall), min(best[1], cpu)]
    load = os.getloadavg()[0]
    print(
        f"  {label:<46} {best[0]:7.2f} s wall {best[1]:7.2f} s cpu  (load {load:.1f})", flush=True
    )
    return best[0], best[1]


def count_in_plan(df, needle: str) -> int:
    return df._jdf.queryExecution().executedPlan().toString().count(needle)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10_000_000)
    parser.add_argument("--udf-units", type=int, default=200_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the job's stages cumulatively"
    )
    args = parser.parse_args(argv)

    os.environ["STRATA_SPARK_MASTER"] = args.master
    os.environ["PYSPARK_PYTHON"] = sys.executable  # UDF workers need this venv (strata)
    # Let HotSpot JIT-compile Spark's large generated methods (> 8 KB bytecode); without it the
    # wide assignment projection runs in the bytecode interpreter (measured at 1M units: 18.5 s
    # of JVM CPU instead of 3.7 s). strata.stack.spark_conf sets it for the driver as well.
    os.environ.setdefault("JAVA_TOOL_OPTIONS", JIT_FLAG)
    os.environ.setdefault("STRATA_HOME", tempfile.mkdtemp(prefix="strata-bench-"))
    from pyspark.sql import functions as F

    from spark_jobs.assign_experiments import assign_units, slot_column
    from strata.assignment import assign_unit
    from strata.config import get_settings
    from strata.definitions import load
    from strata.stack import spark_session

    get_settings.cache_clear()
    spark = spark_session(get_settings(), "strata-bench-assign")
    folder = Path(tempfile.mkdtemp(prefix="bench-defs-"))
    (folder / "bench.yaml").write_text(definitions_yaml())
    defs = load(folder)

    units = units_frame(spark, args.units).repartition(8).cache()
    print(
        f"{args.units:,} units, {LAYERS} layers, {len(defs.experiments)} targeted experiments, "
        f"master {args.master}, JAVA_TOOL_OPTIONS={os.environ.get('JAVA_TOOL_OPTIONS', '')!r}, "
        f"best of {args.repeat}"
    )
    started = time.perf_counter()
    units.count()
    print(f"  cache the units (not compared)  {time.perf_counter() - started:.1f} s")

    slots = [slot_column(lay.salt, F.col("user_id")).alias(lay.id) for lay in defs.layers]
    bare_df = units.select("user_id", *slots)
    full_df = assign_units(units, "user_id", defs, DAY)
    # Fairness: the bare scan really hashes all 10 slots (nothing pruned), both run as one
    # whole-stage-generated pipeline over the same cached units.
    assert count_in_plan(bare_df, "xxhash64(concat(") == LAYERS, bare_df.explain()
    assert count_in_plan(full_df, "xxhash64(concat(") == LAYERS + 1  # + the domain split's slot

    def bare():
        noop(bare_df)

    def full():
        noop(full_df)

    full()  # warm-up: JIT, not compared
    bare()
    t_bare, c_bare = measure(spark, "(a) bare pmod(xxhash64) scan, 10 slots", bare, args.repeat)
    t_full, c_full = measure(spark, "full assignment job", full, args.repeat)
    rows = full_df.count()
    if args.breakdown:
        breakdown(spark, units, defs, args.repeat)

    sample = units.limit(args.udf_units).cache()
    sample.count()
    ctx_cols = [c for c in units.columns if c != "user_id"]

    @F.udf("array<struct<experiment_id:string,variant_id:int,slot:int,params:string>>")
    def assign_udf(user_id, *values):
        ctx = dict(zip(ctx_cols, values, strict=True))
        return [
            (a.experiment_id, a.variant_id, a.slot, a.params)
            for a in assign_unit(defs, "user_id", user_id, ctx, as_of=DAY)
        ]

    def udf():
        noop(sample.select("user_id", F.explode(assign_udf("user_id", *ctx_cols)).alias("a")))

    t_udf, _ = measure(spark, f"(b) Python UDF on {args.udf_units:,} units", udf, 1)

    full_rate, bare_rate = args.units / t_full, args.units / t_bare
    udf_rate = args.udf_units / t_udf
    print()
    print(f"  {'measurement':<30} {'units/s (wall)':>15} {'JVM cpu s / 1M units':>22}")
    print(
        f"  {'full assignment job':<30} {full_rate:>15,.0f} {c_full * 1e6 / args.units:>22.2f}"
        f"   ({rows:,} assignment rows)"
    )
    print(f"  {'(a) bare hash scan':<30} {bare_rate:>15,.0f} {c_bare * 1e6 / args.units:>22.2f}")
    print(f"  {'(b) Python UDF (sample)':<30} {udf_rate:>15,.0f} {'(python workers)':>22}")
    print()
    print(
        f"  full / bare scan = {full_rate / bare_rate:.2f}x wall, {c_bare / c_full:.2f}x by JVM "
        "cpu   (target >= 0.8x)"
    )
    print(f"  full / Python UDF = {full_rate / udf_rate:.1f}x   (target >= 20x)")
    print(f"  load average at the end: {os.getloadavg()}")
    spark.stop()


def breakdown(spark, units, defs, repeat: int) -> None:
    """Cumulative stages of :func:`assign_units` (same expressions, built step by step)."""
    from pyspark.sql import functions as F

    from spark_jobs.assign_experiments import slot_column
    from strata.bucketing import SLOTS
    from strata.rules import to_column, with_semver_keys

    uid = F.col("user_id")
    salts = sorted(
        {lay.salt for lay in defs.layers}
        | {d.salt for lay in defs.layers for d in defs.domain_chain(lay.domain)}
    )
    names = {s: f"__slot_{i}" for i, s in enumerate(salts)}
    slots = [slot_column(s, uid).alias(n) for s, n in names.items()]
    keyed = with_semver_keys(units, {"app_version": "__semver_0"})
    codes, k = [], 0
    for lay in defs.layers:
        s, code = F.col(names[lay.salt]), None
        for e in defs.layer_experiments(lay.id):
            rule = to_column(
                e.targeting, units.schema, semver_keys={"app_version": F.col("__semver_0")}
            )
            for v in e.variants:
                hit = (s >= v.start) & (s < v.end) & rule
                value = F.lit(k * SLOTS) + s
                code = F.when(hit, value) if code is None else code.when(hit, value)
                k += 1
        in_domain = F.lit(True)
        for d in defs.domain_chain(lay.domain):
            ds = F.col(names[d.salt])
            in_domain = in_domain & (ds >= d.start) & (ds < d.end)
        codes.append(F.when(in_domain, code))
    with_slots = keyed.select("*", *slots)
    stages = [
        ("stage 1: 11 slots + all context columns", units.select("*", *slots)),
        ("stage 2: + semver sort key", with_slots),
        (
            "stage 3: + 10 layer codes (targeting)",
            with_slots.select("user_id", *[c.alias(f"c{i}") for i, c in enumerate(codes)]),
        ),
        (
            "stage 4: + explode, drop nulls",
            with_slots.select(uid.alias("unit_id"), F.explode(F.array(*codes)).alias("code")).where(
                "code is not null"
            ),
        ),
    ]
    for label, df in stages:
        measure(spark, label, lambda df=df: noop(df), repeat)


if __name__ == "__main__":
    main()
