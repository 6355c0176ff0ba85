"""Benchmark: the native assignment vs a bare hash scan and vs a Python UDF, in one run.

10M units x 10 layers with targeting rules on local[2] (defaults). Three measurements over the
same cached units, each forced with a ``noop`` write (whole rows, so nothing is pruned; the plans
are checked to hash every slot), best of ``--repeat`` runs, with wall time and the JVM's CPU time
(the machine may be shared: the load average is printed with every figure):

- full: :func:`spark_jobs.assign_experiments.assign_units` (domain split, slots, targeting,
  variant choice, one row per unit and experiment);
- (a) bare scan: only the 10 layer slots ``pmod(xxhash64(concat(salt, ':', id)), 10000)``;
- (b) UDF: the same assignment with the Python reference (:func:`strata.assignment.assign_unit`)
  in a Python UDF, on a smaller sample (``--udf-units``), reported as units/s;
- (c) the same-I/O floor: read the same context columns and write the same number of output
  rows with the same twelve columns, with no slots and no rules (:func:`same_io_floor`).

    .venv/bin/python bench/bench_assign.py [--units 10000000] [--udf-units 200000] [--breakdown]
    .venv/bin/python bench/bench_assign.py --scale 20x10,200x10,1000x10,1000x100

``--breakdown`` also times the job's stages cumulatively (where the time goes): the partial
plans :func:`~spark_jobs.assign_experiments.assign_units` builds (``stages=``). ``--scale``
compares numbers of experiments (x layers) against the floor and the bare scan: with the same
layers the rows per unit stay the same, so the job's time should grow little with experiments;
with more layers each unit gets more rows, and the table gives time per output row.

Results are printed, not committed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

#: Inside every generated experiment's window (2026-11-08 .. 2026-11-14).
DAY = dt.date(2026, 11, 8)

LAYERS = 10
JIT_FLAG = "-XX:-DontCompileHugeMethods"


def definitions_yaml(layers: int = LAYERS, experiments: int = 2 * LAYERS) -> str:
    """``layers`` layers in two domains (70% in the main one), ``experiments`` spread evenly over
    them, each with two variants and a targeting rule. A layer's experiments share its slots
    0..9000 in equal ranges, so the output rows per unit depend on the layers, not on how many
    experiments there are."""
    if experiments % layers:
        raise SystemExit(f"--experiments {experiments} must be a multiple of --layers {layers}")
    per_layer = experiments // layers
    main_layers = max(1, round(layers * 0.7))
    out = [
        "domains:",
        "  - {id: main, salt: bench-split, slots: [0, 8000]}",
        "  - {id: side, salt: bench-split, slots: [8000, 10000]}",
        "layers:",
    ]
    for i in range(layers):
        domain = "main" if i < main_layers else "side"
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
    if per_layer == 2:  # the historical layout: 40% and 50% of each layer
        ranges = [(0, 4000), (4000, 9000)]
    else:
        width = 9000 // per_layer
        ranges = [(j * width, (j + 1) * width) for j in range(per_layer)]
    vid = 1
    for i in range(layers):
        for j, (start, end) in enumerate(ranges):
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


def same_io_floor(units, defs, rows_per_unit: float):
    """The same-I/O floor: read the same context columns and write the same output rows (the
    twelve assignment columns, looked up the way the job looks them up), with no slots and no
    rules. Each unit yields ``rows_per_unit`` rows on average (the integer part, plus one more
    for that fraction of units, drawn with ``rand``: a few hundred rows of noise in millions)."""
    from functools import reduce

    from pyspark.sql import functions as F

    from spark_jobs.assign_experiments import ASSIGNMENT_FIELDS, variant_fields
    from strata.bucketing import SLOTS

    meta = [
        (*variant_fields(e, lay, v), None, 0)  # first_assigned_date (below), ramp_period
        for lay in defs.layers
        for e in defs.layer_experiments(lay.id)
        for v in e.variants
    ]
    whole, fraction = int(rows_per_unit), rows_per_unit - int(rows_per_unit)
    context = [c for c in units.columns if c != "user_id"]
    read_all = reduce(lambda a, b: a | b, [F.col(c).isNotNull() for c in context])
    count = F.lit(whole) + (F.rand(7) < fraction).cast("int")
    rows = units.where(read_all).select(
        F.col("user_id").alias("unit_id"),
        F.posexplode(F.array_repeat(F.lit(0), count)).alias("pos", "zero"),
    )
    code = (F.col("pos") % F.lit(len(meta))) * SLOTS + F.col("pos")
    index = F.expr(f"code div {SLOTS}").cast("int") + 1
    names = [n for n, _ in ASSIGNMENT_FIELDS if n != "slot"]

    def field(name: str, dtype: str):
        if name == "slot":
            return (F.col("code") % F.lit(SLOTS)).cast("int")
        if name == "first_assigned_date":
            return F.current_date()
        i = names.index(name)
        return F.element_at(F.array(*[F.lit(m[i]).cast(dtype) for m in meta]), index)

    return rows.select("unit_id", code.alias("code")).select(
        F.lit("user_id").alias("unit_type"),
        "unit_id",
        *[field(n, t).alias(n) for n, t in ASSIGNMENT_FIELDS],
    )


def scale_configs(text: str) -> list[tuple[int, int]]:
    """``"20x10,1000x100"`` -> [(20, 10), (1000, 100)]: experiments x layers."""
    out = []
    for part in text.split(","):
        experiments, _, layers = part.strip().partition("x")
        out.append((int(experiments), int(layers)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10_000_000)
    parser.add_argument("--udf-units", type=int, default=200_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the job's stages cumulatively"
    )
    parser.add_argument(
        "--scale",
        default="",
        metavar="ExL,...",
        help="experiments x layers to compare, e.g. 20x10,200x10,1000x10,1000x100 "
        "(no Python UDF run); default: the single 20x10 run with the UDF reference",
    )
    args = parser.parse_args(argv)

    os.environ["STRATA_SPARK_MASTER"] = args.master
    os.environ["PYSPARK_PYTHON"] = sys.executable  # UDF workers need this venv (strata)
    # Let HotSpot JIT-compile Spark's large generated methods (> 8 KB bytecode); without it the
    # wide assignment projection runs in the bytecode interpreter (measured at 1M units: 18.5 s
    # of JVM CPU instead of 3.7 s). strata.stack.spark_conf sets it for the driver as well.
    os.environ.setdefault("JAVA_TOOL_OPTIONS", JIT_FLAG)
    os.environ.setdefault("STRATA_HOME", tempfile.mkdtemp(prefix="strata-bench-"))

    from strata.config import get_settings
    from strata.stack import spark_session

    get_settings.cache_clear()
    spark = spark_session(get_settings(), "strata-bench-assign")
    # count_in_plan reads the plan's text: print every field of wide projections (100 layers).
    spark.conf.set("spark.sql.debug.maxToStringFields", 100_000)
    units = units_frame(spark, args.units).repartition(8).cache()
    started = time.perf_counter()
    units.count()
    print(
        f"{args.units:,} units, master {args.master}, "
        f"JAVA_TOOL_OPTIONS={os.environ.get('JAVA_TOOL_OPTIONS', '')!r}, best of {args.repeat}; "
        f"cache the units (not compared) {time.perf_counter() - started:.1f} s"
    )
    if args.scale:
        scale(spark, units, args, scale_configs(args.scale))
    else:
        single(spark, units, args)
    print(f"  load average at the end: {os.getloadavg()}")
    spark.stop()


def load_definitions(layers: int, experiments: int):
    from strata.definitions import load

    folder = Path(tempfile.mkdtemp(prefix="bench-defs-"))
    (folder / "bench.yaml").write_text(definitions_yaml(layers, experiments))
    return load(folder)


def measured_frames(units, defs):
    """The bare scan and the full job over the same units, checked to hash every slot."""
    from pyspark.sql import functions as F

    from spark_jobs.assign_experiments import assign_units, slot_column

    slots = [slot_column(lay.salt, F.col("user_id")).alias(lay.id) for lay in defs.layers]
    bare_df = units.select("user_id", *slots)
    full_df = assign_units(units, "user_id", defs, DAY)
    # Fairness: the bare scan really hashes all the layer slots (nothing pruned), both run as
    # one whole-stage-generated pipeline over the same cached units.
    layers = len(defs.layers)
    assert count_in_plan(bare_df, "xxhash64(concat(") == layers, bare_df.explain()
    assert count_in_plan(full_df, "xxhash64(concat(") == layers + 1  # + the domain split's slot
    return bare_df, full_df


def scale(spark, units, args, configs: list[tuple[int, int]]) -> None:
    """Assignment as the number of experiments grows: the job beside the same-I/O floor and the
    bare scan, for each experiments x layers configuration."""
    n = args.units
    table = []
    for experiments, layers in configs:
        defs = load_definitions(layers, experiments)
        bare_df, full_df = measured_frames(units, defs)
        rows = full_df.count()
        floor_df = same_io_floor(units, defs, rows / n)
        print(f"{experiments} experiments, {layers} layers: {rows:,} rows ({rows / n:.2f}/unit)")
        noop(full_df)  # warm-up: JIT, not compared
        label = f"bare scan, {layers} slots"
        t_bare, _ = measure(spark, label, partial(noop, bare_df), args.repeat)
        t_floor, _ = measure(spark, "same-I/O floor", partial(noop, floor_df), args.repeat)
        t_full, c_full = measure(spark, "full assignment job", partial(noop, full_df), args.repeat)
        table.append((experiments, layers, rows, t_full, c_full, t_floor, t_bare))
    print()
    print(
        f"  {'exps x layers':>14} {'rows/unit':>9} {'job s':>7} {'floor s':>8} {'bare s':>7} "
        f"{'job/floor':>10} {'job/bare':>9} {'ns/row job':>11} {'ns/row floor':>13}"
    )
    for experiments, layers, rows, t_full, _, t_floor, t_bare in table:
        print(
            f"  {f'{experiments} x {layers}':>14} {rows / n:>9.2f} {t_full:>7.2f} {t_floor:>8.2f} "
            f"{t_bare:>7.2f} {t_floor / t_full:>9.2f}x {t_bare / t_full:>8.2f}x "
            f"{t_full * 1e9 / rows:>11.0f} {t_floor * 1e9 / rows:>13.0f}"
        )
    print("  (job/floor and job/bare are speed ratios: floor time / job time; target >= 0.8x)")
    by_layers: dict[int, list[tuple[int, float]]] = {}
    for experiments, layers, _, t_full, *_ in table:
        by_layers.setdefault(layers, []).append((experiments, t_full))
    for layers, runs in by_layers.items():
        if len(runs) > 1:
            (e0, t0), (e1, t1) = min(runs), max(runs)
            print(
                f"  {layers} layers, {e0} -> {e1} experiments: job time x{t1 / t0:.2f} "
                "(same rows per unit; target <= 3x)"
            )


def single(spark, units, args) -> None:
    """The default run: 20 experiments over 10 layers, against the bare scan and a Python UDF."""
    from pyspark.sql import functions as F

    from strata.assignment import assign_unit

    defs = load_definitions(LAYERS, 2 * LAYERS)
    print(f"{LAYERS} layers, {len(defs.experiments)} targeted experiments")
    bare_df, full_df = measured_frames(units, defs)

    def bare():
        noop(bare_df)

    def full():
        noop(full_df)

    full()  # warm-up: JIT, not compared
    bare()
    t_bare, c_bare = measure(spark, "(a) bare pmod(xxhash64) scan, 10 slots", bare, args.repeat)
    t_full, c_full = measure(spark, "full assignment job", full, args.repeat)
    rows = full_df.count()
    floor_df = same_io_floor(units, defs, rows / args.units)
    t_floor, _ = measure(spark, "(c) same-I/O floor", lambda: noop(floor_df), args.repeat)
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
    floor_rate = args.units / t_floor
    udf_rate = args.udf_units / t_udf
    print()
    print(f"  {'measurement':<30} {'units/s (wall)':>15} {'JVM cpu s / 1M units':>22}")
    print(
        f"  {'full assignment job':<30} {full_rate:>15,.0f} {c_full * 1e6 / args.units:>22.2f}"
        f"   ({rows:,} assignment rows)"
    )
    print(f"  {'(a) bare hash scan':<30} {bare_rate:>15,.0f} {c_bare * 1e6 / args.units:>22.2f}")
    print(f"  {'(c) same-I/O floor':<30} {floor_rate:>15,.0f}")
    print(f"  {'(b) Python UDF (sample)':<30} {udf_rate:>15,.0f} {'(python workers)':>22}")
    print()
    print(
        f"  full / bare scan = {full_rate / bare_rate:.2f}x wall, {c_bare / c_full:.2f}x by JVM "
        "cpu   (target >= 0.8x)"
    )
    print(f"  full / same-I/O floor = {full_rate / floor_rate:.2f}x wall   (target >= 0.8x)")
    print(f"  full / Python UDF = {full_rate / udf_rate:.1f}x   (target >= 20x)")


def breakdown(spark, units, defs, repeat: int) -> None:
    """Cumulative stages of :func:`assign_units`: the partial plans the job itself builds."""
    from pyspark.sql import functions as F

    from spark_jobs.assign_experiments import assign_units

    stages: dict = {}
    full_df = assign_units(units, "user_id", defs, DAY, stages=stages)
    layers = len(defs.layers)
    rows = [
        ("stage 0: read the context columns", units.where(F.col("user_id").isNotNull())),
        ("stage 1: + semver sort keys", stages["keys"]),
        (f"stage 2: domain + {layers} layer slots, rows in a range", stages["slots"]),
        ("stage 3: + semver keys and targeting rules", stages["targeted"]),
        ("stage 4: + output fields (the whole job)", full_df),
    ]
    for label, df in rows:
        measure(spark, label, lambda df=df: noop(df), repeat)


if __name__ == "__main__":
    main()
