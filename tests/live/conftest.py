"""Live fixtures: Airflow under its real scheduler, started by the project's own script.

`scripts/airflow.sh start` runs the api-server, scheduler (LocalExecutor), dag-processor and
triggerer on 127.0.0.1 with the session's temporary STRATA_HOME / AIRFLOW_HOME (SQLite metadata)
and the session's Redis (`redis_server`, scripts/redis.sh on STRATA_TEST_REDIS_PORT). The project's
shipped pool and parallelism apply: the fixture removes STRATA_AIRFLOW_PARALLELISM and
STRATA_AIRFLOW_SPARK_SLOTS from the environment it starts Airflow with, and sets nothing else.
Everything is stopped at the end of the session (`scripts/airflow.sh stop`, by process group).

The api-server listens on STRATA_TEST_AIRFLOW_PORT (default: the test endpoint's port + 1, 8092).
Screenshots go to STRATA_SCREENSHOT_DIR (default <temp home>/screenshots; `docs/img` refreshes
the README's).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from airflow_rest import AirflowRest
from airflow_ui import AirflowUI

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "airflow.sh"
#: The test endpoint's port (STRATA_ENDPOINT_PORT, test Redis port + 1700) + 1: 8092 by default.
AIRFLOW_PORT = int(
    os.environ.get("STRATA_TEST_AIRFLOW_PORT", int(os.environ["STRATA_ENDPOINT_PORT"]) + 1)
)
#: Knobs the live test must not change: Airflow runs with what the project ships.
SHIPPED_KNOBS = ("STRATA_AIRFLOW_PARALLELISM", "STRATA_AIRFLOW_SPARK_SLOTS")
TIMINGS = pytest.StashKey[dict]()
NOTES = pytest.StashKey[list]()


@dataclass
class LiveAirflow:
    url: str
    home: Path
    password_file: Path
    env: dict

    @property
    def password(self) -> str:
        return json.loads(self.password_file.read_text())["admin"]

    def script(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SCRIPT), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def live_timings(request) -> dict:
    """Seconds per live step, printed in the terminal summary."""
    return request.config.stash.setdefault(TIMINGS, {})


@pytest.fixture(scope="session")
def live_notes(request) -> list:
    """Findings worth a line in the terminal summary (not timings)."""
    return request.config.stash.setdefault(NOTES, [])


@pytest.fixture(scope="session")
def live_airflow(redis_server, live_timings):
    """Airflow started through scripts/airflow.sh; stopped (every process group) at the end."""
    env = {k: v for k, v in os.environ.items() if k not in SHIPPED_KNOBS}
    # The scheduler handles the events run's deadline (only dag.test() runs need it off).
    env.pop("STRATA_RESULTS_DEADLINE_HOURS", None)
    env["STRATA_AIRFLOW_PORT"] = str(AIRFLOW_PORT)
    home = Path(env["AIRFLOW_HOME"])
    live = LiveAirflow(
        url=f"http://127.0.0.1:{AIRFLOW_PORT}",
        home=home,
        password_file=home / "simple_auth_manager_passwords.json.generated",
        env=env,
    )
    started_at = time.monotonic()
    live_timings["session start"] = started_at
    started = live.script("start", timeout=420)
    if started.returncode != 0:
        live.script("stop", timeout=120)
        pytest.fail(
            f"scripts/airflow.sh start exited {started.returncode}:\n"
            f"{started.stdout}\n{started.stderr}"
        )
    live_timings["airflow start (to healthy)"] = time.monotonic() - started_at
    try:
        yield live
    finally:
        stopping = time.monotonic()
        stopped = live.script("stop", timeout=120)
        live_timings["airflow stop"] = time.monotonic() - stopping
        assert stopped.returncode == 0, f"airflow.sh stop: {stopped.stdout}\n{stopped.stderr}"


@pytest.fixture(scope="session")
def airflow_api(live_airflow) -> AirflowRest:
    """The REST API v2 client, logged in as admin with the generated password."""
    client = AirflowRest(live_airflow.url, "admin", live_airflow.password)
    yield client
    client.close()


@pytest.fixture(scope="session")
def airflow_ui(live_airflow) -> AirflowUI:
    """Headless Chromium, signed in to the UI as admin."""
    ui = AirflowUI(live_airflow.url)
    try:
        ui.login("admin", live_airflow.password)
        yield ui
    finally:
        ui.close()


@pytest.fixture(scope="session")
def screenshot_dir(settings) -> Path:
    return Path(os.environ.get("STRATA_SCREENSHOT_DIR") or settings.home / "screenshots")


def pytest_terminal_summary(terminalreporter, config):
    """Print how long the live steps took (CI's log shows them)."""
    timings = dict(config.stash.get(TIMINGS, {}))
    started = timings.pop("session start", None)
    if not timings:
        return
    terminalreporter.section("live Airflow")
    for step, seconds in timings.items():
        terminalreporter.write_line(f"{step:<48} {seconds:7.1f} s")
    if started is not None:
        total = time.monotonic() - started
        terminalreporter.write_line(f"{'live tests in all (start to stop)':<48} {total:7.1f} s")
    for note in config.stash.get(NOTES, []):
        terminalreporter.write_line(note)
