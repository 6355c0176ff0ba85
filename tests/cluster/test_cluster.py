"""The same pipeline on a real cluster gives the same tables and verdicts as the embedded stack.

``scripts/cluster.sh`` starts an S3-compatible store, the Iceberg REST catalog on it and a Spark
standalone master with two workers whose filesystems are private (their own mount namespaces,
tmpfs over the driver's STRATA_HOME). ``pipeline.py`` runs the whole pipeline once on
the embedded stack (local[*], JDBC catalog, local landing) and once on the cluster (REST catalog,
s3:// warehouse and exposure landing, executors that first prove they cannot read the driver's
disk); every table's business columns and the endpoint's answers must then be equal.

Run with ``make test-cluster`` (deselected from ``make test`` by the ``cluster`` marker).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = Path(__file__).with_name("pipeline.py")
CLUSTER_SH = ROOT / "scripts" / "cluster.sh"
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

USERS = int(os.environ.get("STRATA_CLUSTER_TEST_USERS", "3000"))
DAYS = int(os.environ.get("STRATA_CLUSTER_TEST_DAYS", "7"))
REL_TOL = 1e-9
#: Redis key prefixes of the two runs (one server), of equal length so bytes_sent compares.
PREFIXES = ("strata:lk-a", "strata:lk-b")
#: The two runs overlap, so each endpoint gets a port of its own.
_ENDPOINT = int(os.environ.get("STRATA_ENDPOINT_PORT", "8091"))
ENDPOINT_PORTS = (_ENDPOINT, int(os.environ.get("STRATA_CLUSTER_TEST_ENDPOINT_PORT", "8189")))

#: Columns that identify a run rather than describe the data: ids and times of the run itself,
#: Iceberg snapshot ids, lookup versions and key prefixes, LOG message ids, request and ingestion
#: times, file locations, durations.
RUN_COLUMNS = {
    "assignments": {"run_id", "assigned_at"},
    "publications": {"version", "previous_version", "assignments_snapshot_id",
                     "experiments_snapshot_id", "write_s", "verify_s", "duration_s",
                     "redis_prefix", "published_at"},
    "exposure_logs": {"mid", "ets", "source_file", "ingested_at"},
    "exposure_log_rejects": {"source_file", "ingested_at"},
    "results": {"run_id", "input_snapshots", "evaluated_at"},
}  # fmt: skip
#: Per row: an exposure by a LOG event is dated by the request, made when the test ran.
RUN_TIME_ROWS = {"int_units_exposed": ("exposure_source", "log", ["exposed_at", "exposure_date"])}


def _spark_ports(env: dict[str, str]) -> dict[str, str]:
    """The driver UI off (the cluster run's driver ports are fixed in ``runs``)."""
    return env | {
        "STRATA_SPARK_UI_PORT": "0",
        "STRATA_SPARK_DRIVER_MEMORY": "2g",
        "PYSPARK_PYTHON": sys.executable,
    }


@pytest.fixture(scope="module")
def base_env(redis_server, settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_S3_")}
    return env | {
        "STRATA_REDIS_PASSWORD": settings.redis_secret() or "",
        "PYTHONPATH": f"{ROOT / 'include'}:{ROOT}",
    }


@contextlib.contextmanager
def _cluster(base_env: dict[str, str], settings):
    """The cluster of scripts/cluster.sh; stopped (every process it started) on the way out."""
    servers = settings.home / "cluster-servers"
    env = base_env | {"STRATA_HOME": str(settings.home / "cluster-run"),
                      "CLUSTER_DIR": str(servers)}  # fmt: skip
    started = time.monotonic()
    try:
        run = subprocess.run([CLUSTER_SH, "start"], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr + _tail(servers)
        print(f"\ncluster up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        out = subprocess.run([CLUSTER_SH, "env"], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        settings_lines = [*out.stdout.splitlines(), *(servers / "s3.env").read_text().splitlines()]
        yield env | dict(line.split("=", 1) for line in settings_lines if line[:1].isalpha())
    finally:
        stop = subprocess.run([CLUSTER_SH, "stop"], env=env, capture_output=True, text=True)
        print(stop.stderr, file=sys.stderr)


def _tail(folder: Path, lines: int = 15) -> str:
    return "".join(
        f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in sorted(folder.glob("*.log"))
    )


def _start(env: dict[str, str], out: Path, *extra: str) -> tuple[subprocess.Popen, float]:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pipeline.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(PIPELINE), "--out", str(out), "--users", str(USERS),
             "--days", str(DAYS), *extra],
            env=_spark_ports(env), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    return proc, time.monotonic()


def _finish(run: tuple[subprocess.Popen, float], out: Path, timeout_s: float = 900) -> dict:
    proc, started = run
    try:
        proc.wait(timeout=max(1.0, started + timeout_s - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (out / "pipeline.log").read_text(errors="replace")
    assert proc.returncode == 0, f"pipeline in {out.name} failed:\n{log[-6000:]}"
    report = json.loads((out / "report.json").read_text())
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(f"\n{out.name}: {json.dumps(report)}", file=sys.stderr)
    return report


@pytest.fixture(scope="module")
def runs(base_env, settings, tmp_path_factory):
    """The embedded run (in the background, from the start) and the cluster run."""
    local_out = tmp_path_factory.mktemp("local")
    cluster_out = tmp_path_factory.mktemp("cluster")
    local_env = base_env | {"STRATA_HOME": str(settings.home / "local-run"),
                            "STRATA_LOOKUP_PREFIX": PREFIXES[0],
                            "STRATA_ENDPOINT_PORT": str(ENDPOINT_PORTS[0])}  # fmt: skip
    local = _start(local_env, local_out)
    try:
        with _cluster(base_env, settings) as cluster_env:
            cluster_env |= {"STRATA_LOOKUP_PREFIX": PREFIXES[1],
                            "STRATA_ENDPOINT_PORT": str(ENDPOINT_PORTS[1]),
                            "STRATA_SPARK_DRIVER_PORT": "7090",
                            "STRATA_SPARK_BLOCK_MANAGER_PORT": "7091"}  # fmt: skip
            cluster_report = _finish(_start(cluster_env, cluster_out, "--check-isolation"),
                                     cluster_out)  # fmt: skip
    except BaseException:
        local[0].kill()
        raise
    return (local_out, _finish(local, local_out)), (cluster_out, cluster_report)


def _business(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    missing = RUN_COLUMNS.get(table, set()) - set(frame.columns)
    assert not missing, f"{table}: no columns {sorted(missing)} (update RUN_COLUMNS)"
    frame = frame.drop(columns=sorted(RUN_COLUMNS.get(table, set())))
    if table in RUN_TIME_ROWS:
        column, value, masked = RUN_TIME_ROWS[table]
        frame = frame.astype(dict.fromkeys(masked, "string"))
        frame.loc[frame[column] == value, masked] = "<request time>"
    keys = [c for c in frame.columns if not pd.api.types.is_float_dtype(frame[c])]
    frame = frame.astype(dict.fromkeys(keys, "string"))
    return frame.sort_values(keys + [c for c in frame.columns if c not in keys]).reset_index(
        drop=True
    )


def _assert_equal_tables(local: pd.DataFrame, remote: pd.DataFrame, table: str) -> None:
    a, b = _business(local, table), _business(remote, table)
    assert list(a.columns) == list(b.columns), table
    assert len(a) == len(b), f"{table}: {len(a)} rows locally, {len(b)} on the cluster"
    problems = []
    for col in a.columns:
        if pd.api.types.is_float_dtype(a[col]):
            x, y = a[col].to_numpy(float), b[col].to_numpy(float)
            differ = int((~np.isclose(x, y, rtol=REL_TOL, atol=0.0, equal_nan=True)).sum())
        else:
            differ = int((a[col].fillna("<null>") != b[col].fillna("<null>")).sum())
        if differ:
            problems.append(f"{table}.{col}: {differ} of {len(a)} values differ")
    assert not problems, "; ".join(problems)


def test_cluster_run_equals_local_run(runs):
    (local_out, local_report), (cluster_out, cluster_report) = runs
    assert cluster_report["isolation"]["executor_namespaces"] >= 2
    tables = sorted(p.stem for p in local_out.glob("*.parquet"))
    assert tables == sorted(p.stem for p in cluster_out.glob("*.parquet"))
    for name in ("raw_events", "assignments", "exposure_logs", "goal_aggregates", "results"):
        assert name in tables
        assert local_report["tables"][name] > 0, f"{name} is empty: nothing was compared"
    # The LOG events went through the s3:// landing (shipped: nothing left in the local spool)
    # and were ingested from there.
    assert cluster_report["spooled_files"] == 0
    assert cluster_report["landed_files"] >= 1
    assert cluster_report["ingest"]["merged"] == local_report["ingest"]["merged"] > 0
    for name in tables:
        _assert_equal_tables(
            pd.read_parquet(local_out / f"{name}.parquet"),
            pd.read_parquet(cluster_out / f"{name}.parquet"),
            name,
        )
    local_answers = json.loads((local_out / "answers.json").read_text())
    assert local_answers == json.loads((cluster_out / "answers.json").read_text())
    assert any(a["experiments"] for a in local_answers)
