"""Shared fixtures: one isolated Strata home per test session, one SparkSession, one Redis.

Everything a test touches lives under a temporary STRATA_HOME (Iceberg catalog and warehouse,
Redis data, Airflow home), so tests never see or damage the demo's data. Servers run on loopback
on ports of their own and are stopped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="strata-test-"))
TEST_REDIS_PORT = int(os.environ.get("STRATA_TEST_REDIS_PORT", "6391"))

# Set before anything reads settings or imports Airflow (both read the environment once).
os.environ.update(
    {
        "STRATA_HOME": str(_HOME),
        "STRATA_REDIS_PORT": str(TEST_REDIS_PORT),
        "STRATA_REDIS_URL": f"redis://127.0.0.1:{TEST_REDIS_PORT}/0",
        "STRATA_ENDPOINT_PORT": str(TEST_REDIS_PORT + 1700),  # 8091 by default
        "STRATA_SPARK_SHUFFLE_PARTITIONS": "4",
        "STRATA_SPARK_DRIVER_MEMORY": "2g",
        "AIRFLOW_HOME": str(_HOME / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # dag.test() cannot handle a DAG deadline (Airflow 3.3 looks it up by id in the database
        # when a run succeeds); tests/dags checks the deadline the scheduler gets separately.
        "STRATA_RESULTS_DEADLINE_HOURS": "0",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "include" / "orchestration" / "plugins"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "DO_NOT_TRACK": "1",
        "SCARF_ANALYTICS": "false",
    }
)
os.environ.pop("STRATA_REDIS_PASSWORD", None)
os.environ.pop("STRATA_SETTINGS_FILE", None)


#: Fixtures that start a JVM, a Redis server or Airflow: a test using one (directly or through
#: another fixture) is an integration test. So is everything under these folders.
INTEGRATION_FIXTURES = frozenset({"spark", "redis_server", "private_redis", "airflow_db"})
INTEGRATION_DIRS = tuple(
    ROOT / d
    for d in ("tests/dags", "tests/dbt", "tests/live", "tests/cluster", "include/orchestration")
)


def pytest_collection_modifyitems(config, items):
    """Mark ``integration`` every test that needs a JVM, Redis or Airflow (see above), so
    ``make test-unit`` (``-m "not integration and ..."``) runs the pure tests and doctests alone."""
    for item in items:
        path = Path(str(item.path))
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())) or any(
            path.is_relative_to(d) for d in INTEGRATION_DIRS
        ):
            item.add_marker(pytest.mark.integration)


def _unit_run(config) -> bool:
    return "not integration" in (config.getoption("markexpr", "") or "")


def pytest_ignore_collect(collection_path, config):
    """A unit run does not even import the integration folders (tests/live imports Airflow)."""
    if _unit_run(config) and any(Path(collection_path) == d for d in INTEGRATION_DIRS):
        return True
    return None


def pytest_sessionfinish(session, exitstatus):
    """A unit run (``-m "not integration ..."``) must not have imported Airflow or started a JVM:
    if it did, a test needs the ``integration`` marker (or one of the fixtures above)."""
    if not _unit_run(session.config) or exitstatus not in (0, 5):
        return
    pyspark = sys.modules.get("pyspark")
    heavy = [
        *(["Airflow was imported"] if "airflow" in sys.modules else []),
        *(["a JVM was started"] if pyspark and pyspark.SparkContext._gateway else []),
    ]
    if heavy:
        print(f"\nunit run: {' and '.join(heavy)}; mark the test integration", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    """Remove the run's temporary home (tables, Airflow db, logs) unless STRATA_KEEP_TEST_HOME."""
    if not os.environ.get("STRATA_KEEP_TEST_HOME"):
        shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def settings():
    from strata.config import get_settings

    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def spark(settings):
    """The one SparkSession of the test run (local mode, Iceberg catalog in the temp home)."""
    from strata.stack import spark_session

    session = spark_session(settings, app_name="strata-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def redis_server(settings):
    """A real redis-server on loopback with a password, started/stopped by the project script."""
    script = ROOT / "scripts" / "redis.sh"
    subprocess.run([script, "start"], check=True, capture_output=True)
    yield settings
    subprocess.run([script, "stop"], check=True, capture_output=True)


@pytest.fixture(scope="session")
def airflow_db(settings):
    """Airflow metadata DB (SQLite) in the temp home, migrated once."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
    )
    return Path(os.environ["AIRFLOW_HOME"])


class RedisProcess:
    """A redis-server of one test's own (for faults: kills, restarts, memory limits), run by
    ``scripts/redis.sh`` on an extra loopback port, in the run's home (same password file)."""

    def __init__(self, settings, port: int, extra_conf: str | None = None) -> None:
        from strata.config import Settings

        self.port = port
        self.home = settings.home
        self.settings = Settings(home=settings.home, redis_url=f"redis://127.0.0.1:{port}/0")
        self.env = os.environ | {"STRATA_REDIS_PORT": str(port), "STRATA_HOME": str(self.home)}
        if extra_conf is not None:
            conf = self.home / "redis" / f"extra-{port}.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(extra_conf)
            self.env["STRATA_REDIS_EXTRA_CONF"] = str(conf)
        self.script = ROOT / "scripts" / "redis.sh"

    @property
    def pidfile(self) -> Path:
        return self.home / "redis" / f"redis-{self.port}.pid"

    def start(self, wait: bool = True):
        """Start (and wait for PONG), or with ``wait=False`` return the running script."""
        if not wait:
            return subprocess.Popen([self.script, "start"], env=self.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        subprocess.run([self.script, "start"], check=True, capture_output=True, env=self.env)
        return None

    def stop(self) -> None:
        subprocess.run([self.script, "stop"], check=True, capture_output=True, env=self.env)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM killer would; waits until the process is gone."""
        import signal
        import time

        pid = int(self.pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def wipe(self) -> None:
        """Delete the server's data files (a replaced node starts empty)."""
        shutil.rmtree(self.home / "redis" / f"appendonlydir-{self.port}", ignore_errors=True)
        (self.home / "redis" / f"dump-{self.port}.rdb").unlink(missing_ok=True)

    def admin(self):
        from strata.stack import redis_client

        return redis_client(self.settings)


@pytest.fixture
def private_redis(redis_server):
    """Factory of test-owned Redis servers on ports STRATA_TEST_REDIS_PORT + 1, + 2, ...;
    every one is stopped and its data files deleted at the end of the test."""
    made: list[RedisProcess] = []

    def make(extra_conf: str | None = None) -> RedisProcess:
        server = RedisProcess(redis_server, TEST_REDIS_PORT + 1 + len(made), extra_conf)
        server.wipe()
        made.append(server)
        return server

    yield make
    for server in made:
        subprocess.run([server.script, "stop"], capture_output=True, env=server.env)
        server.wipe()
