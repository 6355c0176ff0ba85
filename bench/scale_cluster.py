"""Benchmark: the pipeline on 1 vs 2 Spark workers (1 core, 1 GB each), same input, same run.

Starts ``scripts/cluster.sh`` with one worker, runs ``tests/cluster/pipeline.py`` (generate,
assign, publish, endpoint, ingest, dbt, evaluate, dump), stops it, then the same with two workers,
and prints each stage's wall time and throughput side by side with the speed-up. The one-worker
run is the reference. Needs root (private worker mounts) and a free Redis port for its own Redis.
The machine's load average is printed with each run: on a shared machine it moves the figures.

    .venv/bin/python bench/scale_cluster.py [--users 100000] [--days 14] [--redis-port 6442]

(Not named bench_*.py: `make bench` does not run it; it needs root and about 20 minutes.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = ROOT / "scripts" / "cluster.sh"
REDIS_SH = ROOT / "scripts" / "redis.sh"
PIPELINE = ROOT / "tests" / "cluster" / "pipeline.py"
#: Stage -> the table whose rows measure its throughput.
RATES = {"generate": "raw_events", "assign": "assignments", "dbt run": "raw_events",
         "evaluate": "results"}  # fmt: skip


def run_on(workers: int, args, home: Path, base_env: dict[str, str]) -> dict:
    env = base_env | {
        "STRATA_HOME": str(home / f"run-{workers}"),
        "CLUSTER_DIR": str(home / f"servers-{workers}"),
        "WORKERS": str(workers),
    }
    subprocess.run([CLUSTER_SH, "start"], env=env, check=True)
    try:
        out = subprocess.run([CLUSTER_SH, "env"], env=env, check=True, capture_output=True,
                             text=True).stdout.splitlines()  # fmt: skip
        out += (home / f"servers-{workers}" / "s3.env").read_text().splitlines()
        env |= dict(line.split("=", 1) for line in out if line[:1].isalpha())
        env |= {
            "STRATA_SPARK_DRIVER_PORT": "7090",
            "STRATA_SPARK_BLOCK_MANAGER_PORT": "7091",
            "STRATA_SPARK_UI_PORT": "0",
            "STRATA_SPARK_DRIVER_MEMORY": "2g",
            "PYSPARK_PYTHON": sys.executable,
            "STRATA_LOOKUP_PREFIX": f"bench:w{workers}",
        }
        dest = home / f"out-{workers}"
        load = os.getloadavg()[0]
        subprocess.run(
            [sys.executable, str(PIPELINE), "--out", str(dest), "--users", str(args.users),
             "--days", str(args.days), "--check-isolation", "--executors", str(workers),
             "--no-dump"],
            env=env, check=True, cwd=ROOT,
        )  # fmt: skip
        report = json.loads((dest / "report.json").read_text())
        report["load"] = (load, os.getloadavg()[0])
        return report
    finally:
        subprocess.run([CLUSTER_SH, "stop"], env=env, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--redis-port", type=int, default=6442)
    parser.add_argument("--endpoint-port", type=int, default=8189)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="strata-bench-cluster-"))
    redis_env = os.environ | {"STRATA_HOME": str(home), "STRATA_REDIS_PORT": str(args.redis_port)}
    subprocess.run([REDIS_SH, "start"], env=redis_env, check=True)
    try:
        base = os.environ | {
            "PYTHONPATH": f"{ROOT / 'include'}:{ROOT}",
            "STRATA_REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
            "STRATA_REDIS_PASSWORD": (home / "redis" / "password").read_text().strip(),
            "STRATA_ENDPOINT_PORT": str(args.endpoint_port),
            "STRATA_SPARK_SHUFFLE_PARTITIONS": "4",
        }
        reports = {w: run_on(w, args, home, base) for w in (1, 2)}
    finally:
        subprocess.run([REDIS_SH, "stop"], env=redis_env, check=False)
        shutil.rmtree(home, ignore_errors=True)
    one, two = reports[1], reports[2]
    print(f"\n{args.users:,} users x {args.days} days; load average at start/end: "
          f"1 worker {one['load'][0]:.1f}/{one['load'][1]:.1f}, "
          f"2 workers {two['load'][0]:.1f}/{two['load'][1]:.1f}")  # fmt: skip
    print(
        f"{'stage':<16}{'1 worker s':>12}{'2 workers s':>13}{'speed-up':>10}  throughput (rows/s)"
    )
    for stage, t1 in one["timings_s"].items():
        t2 = two["timings_s"].get(stage)
        if t2 is None:
            continue
        rate = ""
        if stage in RATES:
            rows = one["tables"][RATES[stage]]
            rate = f"{rows / t1:,.0f} -> {rows / t2:,.0f} {RATES[stage]}"
        print(f"{stage:<16}{t1:>12.1f}{t2:>13.1f}{t1 / t2:>9.2f}x  {rate}")
    total1, total2 = sum(one["timings_s"].values()), sum(two["timings_s"].values())
    print(f"{'total':<16}{total1:>12.1f}{total2:>13.1f}{total1 / total2:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
