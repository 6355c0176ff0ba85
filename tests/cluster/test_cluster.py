"""The same pipeline on a real cluster gives the same tables and verdicts as the embedded stack.

``scripts/cluster.sh`` starts an S3-compatible store, the Iceberg REST catalog on it and a Spark
standalone master with two workers whose filesystems are private (their own mount namespaces,
tmpfs over /tmp and the driver's STRATA_HOME). ``pipeline.py`` runs the whole pipeline once on
the embedded stack (local[*], JDBC catalog, local landing) and once on the cluster (REST catalog,
s3:// warehouse and exposure landing, executors that first prove they cannot read the driver's
disk); every table's business columns and the endpoint's answers must then be equal.

Run with ``make test-cluster`` (deselected from ``make test`` by the ``cluster`` marker).
"""

from __future__ import annotations

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

#: Columns that identify a run rather than describe the data: ids and times of the run itself,
#: lookup versions (a publication's id), LOG message ids and arrival times, file locations.
RUN_COLUMNS = {
    "assignments": {"run_id", "assigned_at"},
    "experiments": {"run_id", "assigned_at"},
    "publications": {"version", "published_at", "started_at", "finished_at", "duration_s",
                     "units_per_s", "live_before"},
    "exposure_logs": {"mid", "ets", "source_file", "ingested_at"},
    "exposure_log_rejects": {"source_file", "ingested_at"},
    "results": {"run_id", "evaluated_at", "input_snapshots"},
}  # fmt: skip


def _spark_ports(env: dict[str, str]) -> dict[str, str]:
    """Every driver port fixed on this test's range, the driver UI off."""
    return env | {
        "STRATA_SPARK_DRIVER_PORT": "7090",
        "STRATA_SPARK_BLOCK_MANAGER_PORT": "7091",
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


@pytest.fixture(scope="module")
def cluster(base_env, settings):
    """The cluster of scripts/cluster.sh, stopped (every process it started) at the end."""
    servers = settings.home / "cluster-servers"
    env = base_env | {"STRATA_HOME": str(settings.home / "cluster-run"),
                      "CLUSTER_DIR": str(servers)}  # fmt: skip
    started = time.monotonic()
    run = subprocess.run([CLUSTER_SH, "start"], env=env, capture_output=True, text=True)
    try:
        assert run.returncode == 0, run.stderr + _tail(servers)
        print(f"\ncluster up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        out = subprocess.run([CLUSTER_SH, "env"], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        cluster_env = dict(
            line.split("=", 1) for line in out.stdout.splitlines() if "=" in line[:40]
        )
        creds = dict(
            line.split("=", 1) for line in (servers / "s3.env").read_text().splitlines() if line
        )
        yield env | cluster_env | creds
    finally:
        subprocess.run([CLUSTER_SH, "stop"], env=env, capture_output=True, text=True)


def _tail(folder: Path, lines: int = 15) -> str:
    return "".join(
        f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in sorted(folder.glob("*.log"))
    )


def _run_pipeline(env: dict[str, str], out: Path, *extra: str) -> dict:
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(PIPELINE), "--out", str(out), "--users", str(USERS),
         "--days", str(DAYS), *extra],
        env=_spark_ports(env), capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-6000:]
    report = json.loads((out / "report.json").read_text())
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(f"\n{out.name}: {report}", file=sys.stderr)
    return report


@pytest.fixture(scope="module")
def local_run(base_env, settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    env = base_env | {"STRATA_HOME": str(settings.home / "local-run"),
                      "STRATA_LOOKUP_PREFIX": "strata:lk-local"}  # fmt: skip
    return out, _run_pipeline(env, out)


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster")
    env = cluster | {"STRATA_LOOKUP_PREFIX": "strata:lk-cluster"}
    return out, _run_pipeline(env, out, "--check-isolation")


def _business(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    frame = frame.drop(columns=sorted(RUN_COLUMNS.get(table, set()) & set(frame.columns)))
    keys = [c for c in frame.columns if not pd.api.types.is_float_dtype(frame[c])]
    frame = frame.astype(dict.fromkeys(keys, "string"))
    return frame.sort_values(keys + [c for c in frame.columns if c not in keys]).reset_index(
        drop=True
    )


def _assert_equal_tables(local: pd.DataFrame, remote: pd.DataFrame, table: str) -> None:
    a, b = _business(local, table), _business(remote, table)
    assert list(a.columns) == list(b.columns), table
    assert len(a) == len(b), f"{table}: {len(a)} rows locally, {len(b)} on the cluster"
    for col in a.columns:
        if pd.api.types.is_float_dtype(a[col]):
            x, y = a[col].to_numpy(float), b[col].to_numpy(float)
            same = np.isclose(x, y, rtol=REL_TOL, atol=0.0, equal_nan=True)
            assert same.all(), f"{table}.{col}: {(~same).sum()} values differ beyond 1e-9"
        else:
            diff = a[col].fillna("<null>") != b[col].fillna("<null>")
            assert not diff.any(), f"{table}.{col}: {int(diff.sum())} values differ"


def test_cluster_run_equals_local_run(local_run, cluster_run):
    (local_out, local_report), (cluster_out, cluster_report) = local_run, cluster_run
    assert cluster_report["isolation"]["executor_namespaces"] >= 2
    tables = sorted(p.stem for p in local_out.glob("*.parquet"))
    assert tables == sorted(p.stem for p in cluster_out.glob("*.parquet"))
    for name in ("raw_events", "assignments", "exposure_logs", "goal_aggregates", "results"):
        assert name in tables
        assert local_report["tables"][name] > 0, f"{name} is empty: nothing was compared"
    # The LOG events went through the s3:// landing and were ingested from there.
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
