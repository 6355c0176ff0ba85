"""Benchmark: raw events -> goal_aggregates with dbt-spark on local[2], beside DuckDB.

Both engines start from the same Iceberg data files (synthetic raw events, assignments and
experiments) and compute the same thing: dedupe by event id, drop malformed rows, first exposure
per unit (app start), attribute goals after exposure inside the window, pre-period covariates,
per-unit daily sums, cumulative ep-stats aggregates per analysis date, and the capped (winsorized)
sums of the metrics with a cap (CAPS: a fixed cap, an exact pooled percentile). dbt runs the real
project (`dbt run --full-refresh --select +goal_aggregates`); DuckDB runs an equivalent SQL port
on 2 threads over the Parquet files. The run checks both produce the same totals, then prints
times and ratios. Then the segments: dbt builds int_unit_segments, int_segment_unit_goals and
goal_segment_aggregates, DuckDB the same rows from its steps above and the users / devices / orgs
files (DUCKDB_SEGMENT_SQL), capped sums included; same totals checked, times printed.
Each engine runs in a process of its own (the Spark one generates the data first), and each
size prints its peak memory and disk per step (bench/resources.py).

    .venv/bin/python bench/bench_aggregates.py [--sizes 1,10,100]     # millions of events
    .venv/bin/python bench/bench_aggregates.py --no-caps    # no capped metric (what caps cost)
Target: dbt-spark <= 2x DuckDB; growth from 1M to 10M events printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resources import BUILD_BYTES_PER_EVENT, Peaks

ROOT = Path(__file__).resolve().parents[1]
EVENTS_PER_USER = 10.6  # what the generator yields over 14 days (measured: 1.06M for 100k users)
EXPERIMENTS = [  # (experiment_id, unit_type, salt): two arms split at slot 5000
    ("checkout_button", "user_id", "checkout-2026"),
    ("feed_ranking", "device_id", "ranking-2026"),
    ("upsell_banner", "user_id", "upsell-2026"),
]
#: Capped metrics (experiment -> cap of value(<unit>.unit.purchase)): both kinds of cap.
CAPS = {"checkout_button": {"value": 100.0}, "upsell_banner": {"percentile": 0.99}}


def _metrics_json(exp: str, unit_type: str, caps: bool) -> str:
    if not caps or exp not in CAPS:
        return "[]"
    unit = unit_type.removesuffix("_id")
    return json.dumps(
        [
            {
                "id": "revenue_capped",
                "name": "Revenue per unit, capped",
                "nominator": f"value({unit}.unit.purchase)",
                "denominator": f"count({unit}.global.exposure)",
                "cap": CAPS[exp],
            }
        ]
    )


def _setup_inputs(spark, settings, n_events: int, caps: bool = True) -> int:
    from spark_jobs.generate_synthetic import write_tables
    from strata.synthetic import GeneratorConfig

    counts = write_tables(
        spark, GeneratorConfig(users=int(n_events / EVENTS_PER_USER)), settings.table
    )
    units = {
        "user_id": f"SELECT user_id AS unit_id FROM {settings.table('users')}",
        "device_id": f"SELECT device_id AS unit_id FROM {settings.table('devices')}",
    }
    selects = [
        f"""SELECT '{unit_type}' AS unit_type, unit_id, '{exp}' AS experiment_id,
                   CAST(pmod(xxhash64(concat('{salt}:', unit_id)), 10000) >= 5000 AS INT)
                       AS variant_id,
                   pmod(xxhash64(concat('{salt}:', unit_id)), 10000) < 5000 AS is_control
            FROM ({units[unit_type]})"""
        for exp, unit_type, salt in EXPERIMENTS
    ]
    spark.sql(
        f"CREATE OR REPLACE TABLE {settings.table('assignments')} USING iceberg AS "
        + " UNION ALL ".join(selects)
    )
    rows = ", ".join(
        f"('{exp}', '{unit_type}', DATE '2026-11-08', DATE '2026-11-14', "
        f"'{_metrics_json(exp, unit_type, caps)}')"
        for exp, unit_type, _ in EXPERIMENTS
    )
    spark.sql(
        f"CREATE OR REPLACE TABLE {settings.table('experiments')} USING iceberg AS "
        f"SELECT * FROM VALUES {rows} AS t(experiment_id, unit_type, start_date, end_date, metrics)"
    )
    from spark_jobs.ingest_exposure_logs import ensure_tables

    ensure_tables(spark, settings.table)
    return counts["raw_events"]


#: The segment models timed after the goal_aggregates run (their inputs are built by then).
SEGMENT_MODELS = (
    "int_unit_first_seen",
    "int_unit_segments",
    "int_segment_unit_goals",
    "goal_segment_aggregates",
)


def _run_dbt(settings, profiles: Path, select: tuple[str, ...] = ("+goal_aggregates",)) -> float:
    from dbt.cli.main import dbtRunner

    from strata.contracts import dbt_vars

    started = time.perf_counter()
    result = dbtRunner().invoke(
        [
            "run",
            "--full-refresh",
            "--select",
            *select,
            "--project-dir",
            str(ROOT / "dbt_project"),
            "--profiles-dir",
            str(profiles),
            "--target-path",
            str(profiles / "target"),
            "--log-path",
            str(profiles / "logs"),
            "--vars",
            json.dumps(dbt_vars()),
            "--quiet",
        ]
    )
    if not result.success:
        raise SystemExit(f"dbt run failed: {result.exception}")
    elapsed = time.perf_counter() - started
    models = sorted(result.result.results, key=lambda r: -r.execution_time)
    print(
        "    dbt models: "
        + ", ".join(f"{r.node.name} {r.execution_time:.1f}s" for r in models)
        + f"; dbt overhead {elapsed - sum(r.execution_time for r in models):.1f}s",
        flush=True,
    )
    return elapsed


def _duckdb_segment_sql() -> str:
    """DUCKDB_SEGMENT_SQL over the segment dimensions of strata.contracts."""
    from strata.contracts import SEGMENT_NAMES

    return DUCKDB_SEGMENT_SQL.replace("__DIMENSIONS__", ", ".join(SEGMENT_NAMES))


def _duckdb_sql(caps: bool = True) -> str:
    """DUCKDB_SQL with the goals catalogue's goals and value checks (as dbt gets them), and one
    cap per capped metric (DuckDB's quantile_cont: exact, linear between order statistics)."""
    from strata.contracts import goal_names, value_goals

    checks = "\n      ".join(
        f"AND NOT (event_name = '{g}' AND (value IS NULL OR value < 0))" for g in value_goals()
    )
    goals = ", ".join(f"'{g}'" for g in goal_names())
    cap_selects = [
        "SELECT as_of_date, experiment_id, unit_type, goal, platform, "
        + (
            f"CAST({cap['value']} AS DOUBLE)"
            if "value" in cap
            else f"quantile_cont(v, {cap['percentile']})"
        )
        + f""" AS value_cap FROM capped_values
            WHERE experiment_id = '{exp}' AND goal = 'purchase' GROUP BY ALL"""
        for exp, cap in (CAPS.items() if caps else [])
    ]
    cap_sql = " UNION ALL ".join(cap_selects) or (
        "SELECT NULL::DATE AS as_of_date, NULL AS experiment_id, NULL AS unit_type, NULL AS goal, "
        "NULL AS platform, NULL::DOUBLE AS value_cap WHERE false"
    )
    capped_goals = (
        " UNION ALL ".join(f"SELECT '{exp}' AS experiment_id, 'purchase' AS goal" for exp in CAPS)
        if caps
        else "SELECT NULL AS experiment_id, NULL AS goal WHERE false"
    )
    return (
        DUCKDB_SQL.replace("__GOALS__", goals)
        .replace("__VALUE_CHECKS__", checks)
        .replace("__CAPPED_GOALS__", capped_goals)
        .replace("__CAPS__", cap_sql)
    )


def _check_disk(folder: Path, millions: float) -> None:
    # the build's peak, and as much again for DuckDB's database file and spill beside it
    need = millions * 1e6 * BUILD_BYTES_PER_EVENT * 2
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(
            f"bench_aggregates: {need / 1e9:.0f} GB needed for {millions:g}M events, "
            f"{free / 1e9:.0f} GB free under {folder}"
        )


def _files(settings, name: str) -> list[str]:
    from strata.stack import iceberg_catalog

    table = iceberg_catalog(settings).load_table(f"{settings.namespace}.{name}")
    return [task.file.file_path.removeprefix("file:") for task in table.scan().plan_files()]


DUCKDB_SQL = """
CREATE OR REPLACE TABLE events AS
WITH valid AS (
    SELECT * FROM raw
    WHERE event_id IS NOT NULL AND device_id IS NOT NULL AND event_at IS NOT NULL
      AND event_name IN (__GOALS__)
      __VALUE_CHECKS__
      AND NOT (event_at > arrived_at + INTERVAL 24 HOUR)
)
-- each event id's first delivery (by arrival, then device), as a grouped arg_min of the whole
-- row: an aggregate spills to disk, a window over 100M partitions ran out of memory
SELECT unnest(arg_min(valid, (arrived_at, device_id))) FROM valid GROUP BY event_id;
-- the steps the segment reference reads again are tables (dbt's are tables or views): in the
-- database file, so they leave memory when it runs short
CREATE OR REPLACE TABLE by_unit AS (
    SELECT event_name, event_at, CAST(event_at AS DATE) AS event_date,
           coalesce(platform, 'unknown') AS platform, value,
           'device_id' AS unit_type, device_id AS unit_id FROM events
    UNION ALL
    SELECT event_name, event_at, CAST(event_at AS DATE), coalesce(platform, 'unknown'), value,
           'user_id', user_id FROM events WHERE user_id IS NOT NULL
);
CREATE OR REPLACE TEMP VIEW windows AS (
    SELECT experiment_id, unit_type, start_date, end_date,
           CAST(start_date AS TIMESTAMP) AS starts_at,
           CAST(end_date + 1 AS TIMESTAMP) AS ends_at FROM experiments
);
CREATE OR REPLACE TABLE exposed AS (
    SELECT a.experiment_id, a.variant_id, a.unit_type, a.unit_id, min(e.event_at) AS exposed_at
    FROM by_unit e
    JOIN assignments a ON e.unit_type = a.unit_type AND e.unit_id = a.unit_id
    JOIN windows w ON w.experiment_id = a.experiment_id
    WHERE e.event_name = 'session_start' AND e.event_at >= w.starts_at AND e.event_at < w.ends_at
    GROUP BY ALL
);
CREATE OR REPLACE TABLE unit_days AS (
    SELECT x.experiment_id, x.variant_id, x.unit_type, x.unit_id, e.event_name AS goal,
           e.platform, e.event_date, count(*) AS goal_count, coalesce(sum(e.value), 0) AS goal_value
    FROM by_unit e
    JOIN exposed x ON e.unit_type = x.unit_type AND e.unit_id = x.unit_id
    JOIN windows w ON w.experiment_id = x.experiment_id
    WHERE e.event_at >= x.exposed_at AND e.event_at < w.ends_at
    GROUP BY ALL
    UNION ALL  -- pre-period goals (CUPED covariates), dated on the exposure day
    SELECT x.experiment_id, x.variant_id, x.unit_type, x.unit_id, 'pre_' || e.event_name,
           e.platform, CAST(x.exposed_at AS DATE), count(*), coalesce(sum(e.value), 0)
    FROM by_unit e
    JOIN exposed x ON e.unit_type = x.unit_type AND e.unit_id = x.unit_id
    JOIN windows w ON w.experiment_id = x.experiment_id
    WHERE e.event_at >= w.starts_at - INTERVAL 7 DAY AND e.event_at < w.starts_at
    GROUP BY ALL
);
CREATE OR REPLACE TABLE goal_aggregates AS
WITH dims AS (
    SELECT experiment_id, variant_id, unit_type, unit_id, goal, coalesce(platform, '') AS platform,
           event_date, sum(goal_count) AS goal_count, sum(goal_value) AS goal_value
    FROM unit_days
    GROUP BY GROUPING SETS (
        (experiment_id, variant_id, unit_type, unit_id, goal, platform, event_date),
        (experiment_id, variant_id, unit_type, unit_id, goal, event_date))
),
cum AS (
    SELECT *, sum(goal_count) OVER h AS cc, sum(goal_value) OVER h AS cv,
           row_number() OVER h AS nth
    FROM dims
    WINDOW h AS (PARTITION BY experiment_id, variant_id, unit_type, unit_id, goal, platform
                 ORDER BY event_date ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
inc AS (
    SELECT experiment_id, variant_id, unit_type, goal, platform, event_date, 'unit' AS agg_type,
           sum(goal_count) AS d_count, sum(cc * cc - (cc - goal_count) ^ 2) AS d_sqr_count,
           sum(goal_value) AS d_value, sum(cv * cv - (cv - goal_value) ^ 2) AS d_sqr_value,
           sum(CASE WHEN nth = 1 THEN 1 ELSE 0 END) AS d_unique
    FROM cum GROUP BY ALL
    UNION ALL
    SELECT experiment_id, variant_id, unit_type, 'exposure', '', CAST(exposed_at AS DATE),
           'global', count(*), count(*), 0, 0, count(*)
    FROM exposed GROUP BY ALL
),
dates AS (
    SELECT experiment_id, unnest(generate_series(start_date,
        least(end_date, (SELECT max(CAST(event_at AS DATE)) FROM events)), INTERVAL 1 DAY))
        AS as_of_date
    FROM experiments
),
agg AS (
    SELECT CAST(d.as_of_date AS DATE) AS as_of_date, i.experiment_id AS exp_id,
           i.variant_id AS exp_variant_id, i.unit_type, i.agg_type, i.goal, i.platform,
           sum(d_count) AS count, sum(d_sqr_count) AS sum_sqr_count, sum(d_value) AS sum_value,
           sum(d_sqr_value) AS sum_sqr_value, sum(d_unique) AS count_unique
    FROM dates d JOIN inc i ON d.experiment_id = i.experiment_id AND i.event_date <= d.as_of_date
    GROUP BY ALL
),
capped_goals AS (__CAPPED_GOALS__),
capped_values AS (  -- each unit's cumulative value of a capped goal as of every analysis date
    SELECT CAST(d.as_of_date AS DATE) AS as_of_date, u.experiment_id, u.variant_id, u.unit_type,
           u.unit_id, u.goal, u.platform, sum(u.goal_value) AS v
    FROM dims u JOIN capped_goals c ON u.experiment_id = c.experiment_id AND u.goal = c.goal
    JOIN dates d ON d.experiment_id = u.experiment_id AND u.event_date <= d.as_of_date
    GROUP BY ALL
),
caps AS (__CAPS__),
capped AS (
    SELECT v.as_of_date, v.experiment_id, v.variant_id, v.unit_type, v.goal, v.platform,
           max(c.value_cap) AS value_cap, sum(least(v.v, c.value_cap)) AS sum_value_capped,
           sum(least(v.v, c.value_cap) ^ 2) AS sum_sqr_value_capped
    FROM capped_values v JOIN caps c USING (as_of_date, experiment_id, unit_type, goal, platform)
    GROUP BY ALL
)
SELECT a.*, c.value_cap, c.sum_value_capped, c.sum_sqr_value_capped
FROM agg a LEFT JOIN capped c
  ON a.agg_type = 'unit' AND a.as_of_date = c.as_of_date AND a.exp_id = c.experiment_id
 AND a.exp_variant_id = c.variant_id AND a.unit_type = c.unit_type AND a.goal = c.goal
 AND a.platform = c.platform
"""


#: goal_segment_aggregates (dbt: int_unit_segments -> int_segment_unit_goals ->
#: goal_segment_aggregates) from the temp tables above and the users / devices / orgs files: each
#: exposed unit's segments at first exposure, its goal totals up to the experiment's newest
#: analysis date, unpivoted one dimension at a time; capped goals' totals capped at the
#: experiment's pooled cap of goal_aggregates (one cap per experiment, not per segment).
DUCKDB_SEGMENT_SQL = """
CREATE OR REPLACE TABLE goal_segment_aggregates AS
WITH targets AS (
    SELECT experiment_id,
           least(end_date, (SELECT max(CAST(event_at AS DATE)) FROM events)) AS as_of_date
    FROM experiments WHERE start_date <= (SELECT max(CAST(event_at AS DATE)) FROM events)
),
exposing AS (  -- the device of a user's exposing app start
    SELECT x.experiment_id, x.unit_id, min(e.device_id) AS device_id,
           arg_min(coalesce(e.platform, 'unknown'), e.device_id) AS event_platform
    FROM exposed x
    JOIN events e ON x.unit_type = 'user_id' AND e.user_id = x.unit_id
        AND e.event_at = x.exposed_at AND e.event_name = 'session_start'
    GROUP BY ALL
),
first_seen AS (
    SELECT unit_type, unit_id, min(event_at) AS first_event_at FROM by_unit GROUP BY ALL
),
segs AS (
    SELECT x.experiment_id, x.variant_id, x.unit_type, x.unit_id,
           CAST(x.exposed_at AS DATE) AS exposure_date,
           coalesce(u.country, 'unknown') AS country,
           coalesce(d.platform, p.event_platform, 'unknown') AS platform,
           coalesce(nullif(split_part(d.app_version, '.', 1), ''), 'unknown')
               AS app_version_major,
           CASE WHEN f.first_event_at < w.starts_at THEN 'returning' ELSE 'new' END AS visitor,
           coalesce(o.plan, 'unknown') AS plan
    FROM exposed x
    JOIN windows w ON w.experiment_id = x.experiment_id
    LEFT JOIN exposing p ON p.experiment_id = x.experiment_id AND p.unit_id = x.unit_id
    LEFT JOIN first_seen f ON f.unit_type = x.unit_type AND f.unit_id = x.unit_id
    LEFT JOIN devices d
        ON d.device_id = CASE WHEN x.unit_type = 'device_id' THEN x.unit_id ELSE p.device_id END
    LEFT JOIN users u
        ON u.user_id = CASE WHEN x.unit_type = 'user_id' THEN x.unit_id ELSE d.user_id END
    LEFT JOIN orgs o ON o.org_id = u.org_id
),
units AS (
    SELECT s.*, t.as_of_date FROM segs s JOIN targets t ON t.experiment_id = s.experiment_id
    WHERE s.exposure_date <= t.as_of_date
),
totals AS (
    SELECT d.experiment_id, d.unit_type, d.unit_id, d.goal, sum(d.goal_count) AS c,
           sum(d.goal_value) AS v
    FROM unit_days d JOIN targets t ON t.experiment_id = d.experiment_id
    WHERE d.event_date <= t.as_of_date
    GROUP BY ALL
),
long AS (
    UNPIVOT units ON __DIMENSIONS__ INTO NAME dimension VALUE segment
),
caps AS (  -- the experiment's pooled cap at the date (goal_aggregates' all-platform series)
    SELECT DISTINCT as_of_date, exp_id, unit_type, goal, value_cap FROM goal_aggregates
    WHERE agg_type = 'unit' AND platform = '' AND value_cap IS NOT NULL
)
SELECT l.as_of_date, l.experiment_id AS exp_id, l.variant_id AS exp_variant_id, l.unit_type,
       'unit' AS agg_type, g.goal, l.dimension, l.segment, sum(g.c) AS count,
       sum(g.c * g.c) AS sum_sqr_count, sum(g.v) AS sum_value, sum(g.v * g.v) AS sum_sqr_value,
       count(*) AS count_unique, max(c.value_cap) AS value_cap,
       sum(CASE WHEN c.value_cap IS NOT NULL THEN least(g.v, c.value_cap) END)
           AS sum_value_capped,
       sum(CASE WHEN c.value_cap IS NOT NULL THEN least(g.v, c.value_cap) ^ 2 END)
           AS sum_sqr_value_capped
FROM long l
JOIN totals g ON g.experiment_id = l.experiment_id AND g.unit_type = l.unit_type
    AND g.unit_id = l.unit_id
LEFT JOIN caps c ON c.as_of_date = l.as_of_date AND c.exp_id = l.experiment_id
    AND c.unit_type = l.unit_type AND c.goal = g.goal
GROUP BY ALL
UNION ALL
SELECT as_of_date, experiment_id, variant_id, unit_type, 'global', 'exposure', dimension, segment,
       count(*), count(*), 0, 0, count(*), NULL::DOUBLE, NULL::DOUBLE, NULL::DOUBLE
FROM long
GROUP BY ALL
"""

# What both engines' goal_aggregates must agree on (floats to 1e-9: summation order differs).
TOTALS = (
    "count(*), sum(count), sum(sum_sqr_count), sum(sum_value), sum(sum_sqr_value), "
    "sum(count_unique), count(value_cap), coalesce(sum(value_cap), 0), "
    "coalesce(sum(sum_value_capped), 0), coalesce(sum(sum_sqr_value_capped), 0)"
)


def _run_duckdb(
    settings, caps: bool = True, memory: str = "16GB"
) -> tuple[float, tuple, float, tuple]:
    """Seconds and totals of goal_aggregates, then of goal_segment_aggregates."""
    import duckdb

    # In a process of its own: beside the idle Spark driver (7 GB resident) a 14 GB limit ran out
    # of memory at 100M events (2026-12-03). A database file and a spill folder let its tables
    # and operators leave memory; insertion order is not needed (every step aggregates).
    home = Path(settings.home)
    con = duckdb.connect(str(home / "reference.duckdb"))
    con.execute("SET threads = 2")
    con.execute(f"SET memory_limit = '{memory}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET temp_directory = '{home / 'duckdb-spill'}'")
    for name, alias in (
        ("raw_events", "raw"),
        ("assignments", "assignments"),
        ("experiments", "experiments"),
        ("users", "users"),
        ("devices", "devices"),
        ("orgs", "orgs"),
    ):
        files = ", ".join(f"'{f}'" for f in _files(settings, name))
        con.execute(f"CREATE OR REPLACE VIEW {alias} AS SELECT * FROM read_parquet([{files}])")
    started = time.perf_counter()
    con.execute(_duckdb_sql(caps))
    elapsed = time.perf_counter() - started
    totals = con.execute(f"SELECT {TOTALS} FROM goal_aggregates").fetchone()
    started = time.perf_counter()
    con.execute(_duckdb_segment_sql())
    seg_elapsed = time.perf_counter() - started
    seg_totals = con.execute(f"SELECT {TOTALS} FROM goal_segment_aggregates").fetchone()
    return elapsed, tuple(totals), seg_elapsed, tuple(seg_totals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10", help="millions of events, comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the data folder afterwards")
    parser.add_argument(
        "--no-caps", action="store_true", help="no capped metric (what capping costs)"
    )
    parser.add_argument(
        "--duckdb-memory", default="16GB",
        help="DuckDB's memory_limit (lower it when other jobs share the machine)",
    )  # fmt: skip
    # internal: one engine's run over one size's data, in a process of its own
    parser.add_argument("--phase", choices=("spark", "duckdb"), help=argparse.SUPPRESS)
    parser.add_argument("--millions", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.phase:
        return _phase(args)
    work = Path(tempfile.mkdtemp(prefix="strata-bench-aggregates-"))
    try:
        return _compare(args, work, [float(m) for m in args.sizes.split(",")])
    finally:
        if args.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _phase(args: argparse.Namespace) -> int:
    """One engine over the size's warehouse (STRATA_HOME): seconds, totals and peaks as JSON.

    spark: generate the inputs, then dbt builds goal_aggregates and the segment models;
    duckdb: the same rows from the same Parquet files, without a JVM beside it."""
    from strata.config import get_settings

    settings = get_settings()
    caps = not args.no_caps
    out: dict = {}
    with Peaks(settings.home) as peaks:
        if args.phase == "spark":
            from strata.stack import spark_session, write_dbt_profile

            spark = spark_session(settings, "bench-aggregates")
            try:
                with peaks.stage("generate"):
                    out["events"] = _setup_inputs(
                        spark, settings, int(args.millions * 1_000_000), caps
                    )
                profiles = write_dbt_profile(settings)
                with peaks.stage("dbt-spark"):
                    out["s"] = _run_dbt(settings, profiles)
                out["totals"] = tuple(
                    spark.sql(f"SELECT {TOTALS} FROM {settings.table('goal_aggregates')}").first()
                )
                with peaks.stage("dbt-spark segments"):
                    out["segments_s"] = _run_dbt(settings, profiles, SEGMENT_MODELS)
                table = settings.table("goal_segment_aggregates")
                out["segment_totals"] = tuple(spark.sql(f"SELECT {TOTALS} FROM {table}").first())
            finally:
                spark.stop()
        else:
            with peaks.stage("duckdb"):
                out["s"], out["totals"], out["segments_s"], out["segment_totals"] = _run_duckdb(
                    settings, caps, args.duckdb_memory
                )
    out["peaks"] = peaks.stages
    Path(args.out).write_text(json.dumps(out, default=float))
    return 0


def _run_engine(args, phase: str, home: Path, millions: float) -> dict:
    out = home.parent / f"{home.name}-{phase}.json"
    env = os.environ | {
        "STRATA_HOME": str(home),
        "STRATA_SPARK_MASTER": "local[2]",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    command = [sys.executable, __file__, "--phase", phase, "--millions", str(millions)]
    command += ["--out", str(out), "--duckdb-memory", args.duckdb_memory]
    subprocess.run(command + (["--no-caps"] if args.no_caps else []), env=env, check=True)
    return json.loads(out.read_text())


def _compare(args, work: Path, sizes: list[float]) -> int:
    """Run both engines per size, each in a process of its own; 1 if any result differs."""
    print(
        f"dbt-spark on local[2] vs DuckDB (2 threads, memory_limit {args.duckdb_memory}), each "
        f"engine in a process of its own; data in {work}; "
        f"capped metrics: {'none' if args.no_caps else CAPS}\n"
    )
    print(f"{'events':>12} {'dbt-spark s':>12} {'duckdb s':>9} {'ratio':>7}  same result")
    results, all_same, segment_rows = [], True, []
    for millions in sizes:
        home = work / f"{millions:g}M"
        home.mkdir()
        _check_disk(home, millions)
        spark = _run_engine(args, "spark", home, millions)
        duck = _run_engine(args, "duckdb", home, millions)
        n = spark["events"]
        print(
            "    peaks (memory: the engine's process and its children; disk: growth since its "
            "process began): "
            + "; ".join(
                f"{name} {p['rss_gb']:.1f} GB, disk +{p['disk_gb']:.1f} GB"
                for run in (spark, duck)
                for name, p in run["peaks"].items()
            ),
            flush=True,
        )
        same = all(
            math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
            for a, b in zip(spark["totals"], duck["totals"], strict=True)
        )
        seg_same = all(
            math.isclose(float(a), float(b), rel_tol=1e-9)
            for a, b in zip(spark["segment_totals"], duck["segment_totals"], strict=True)
        )
        all_same &= same and seg_same
        t_seg, t_duck_seg = spark["segments_s"], duck["segments_s"]
        segment_rows.append(
            f"{n:>12,} {t_seg:>12.1f} {t_duck_seg:>9.1f} {t_seg / t_duck_seg:>6.2f}x  "
            + ("yes" if seg_same else f"NO: {spark['segment_totals']} vs {duck['segment_totals']}")
        )
        t_spark, t_duck = spark["s"], duck["s"]
        results.append((n, t_spark, t_duck))
        differs = f"NO: {spark['totals']} vs {duck['totals']}"
        print(
            f"{n:>12,} {t_spark:>12.1f} {t_duck:>9.1f} {t_spark / t_duck:>6.2f}x  "
            f"{'yes' if same else differs}",
            flush=True,
        )
        print(f"    segments: {segment_rows[-1].strip()}", flush=True)  # kept if a later size dies
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    print()
    for (n0, s0, d0), (n1, s1, d1) in itertools.pairwise(results):
        print(
            f"growth {n0:,} -> {n1:,} events ({n1 / n0:.1f}x): dbt-spark {s1 / s0:.1f}x, "
            f"duckdb {d1 / d0:.1f}x"
        )
    print("target: dbt-spark <= 2x DuckDB")
    print(
        "\nsegments (goal_segment_aggregates: 5 dimensions one at a time, each experiment's "
        "newest date; inputs already built)"
    )
    print(f"{'events':>12} {'dbt-spark s':>12} {'duckdb s':>9} {'ratio':>7}  same result")
    for line in segment_rows:
        print(line)
    return 0 if all_same else 1


if __name__ == "__main__":
    raise SystemExit(main())
