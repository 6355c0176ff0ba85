"""Live fixtures: Airflow under its real scheduler, started by the project's own script.

`scripts/airflow.sh start` runs the api-server, scheduler (LocalExecutor), dag-processor and
triggerer on 127.0.0.1. The live session has a home of its own, `<session home>/live` (Iceberg
catalog and warehouse, Airflow home with SQLite metadata, logs), and a Redis of its own
(scripts/redis.sh on STRATA_TEST_LIVE_REDIS_PORT, default: the test Redis port + 12), so the tasks'
processes share no catalog file, metastore or keyspace with the test process's SparkSession and
the other tests. The project's shipped pool and parallelism apply: the fixture removes
STRATA_AIRFLOW_PARALLELISM and STRATA_AIRFLOW_SPARK_SLOTS from the environment it starts Airflow
with. Everything is stopped at the end of the session (`scripts/airflow.sh stop`, by process group;
`scripts/redis.sh stop`).

The api-server listens on STRATA_TEST_AIRFLOW_PORT (default: the test endpoint's port + 1, 8092).
Screenshots go to STRATA_SCREENSHOT_DIR (default <live home>/screenshots; `docs/img` refreshes
the README's).
"""

from __future__ import annotations

import datetime as dt
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
REDIS_SCRIPT = ROOT / "scripts" / "redis.sh"
LIVE_REDIS_PORT = int(
    # + 12: clear of the private servers other tests start on the test port + 1, + 2, ...
    os.environ.get("STRATA_TEST_LIVE_REDIS_PORT", int(os.environ["STRATA_REDIS_PORT"]) + 12)
)
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
    env: dict

    @property
    def airflow_home(self) -> Path:
        return Path(self.env["AIRFLOW_HOME"])

    @property
    def password(self) -> str:
        file = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        return json.loads(file.read_text())["admin"]

    def settings(self):
        """Strata's settings as the live tasks see them (the live home, the live Redis)."""
        from strata.config import Settings

        return Settings(home=self.home, redis_url=self.env["STRATA_REDIS_URL"])

    def script(self, script: Path, command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(script), command],
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
def live_airflow(settings, live_timings):
    """Airflow started through scripts/airflow.sh, with its own home and Redis; both stopped
    (every process group) at the end."""
    home = settings.home / "live"
    env = {k: v for k, v in os.environ.items() if k not in SHIPPED_KNOBS}
    # The scheduler handles the events run's deadline (only dag.test() runs need it off).
    env.pop("STRATA_RESULTS_DEADLINE_HOURS", None)
    env.update(
        STRATA_HOME=str(home),
        AIRFLOW_HOME=str(home / "airflow"),
        STRATA_REDIS_PORT=str(LIVE_REDIS_PORT),
        STRATA_REDIS_URL=f"redis://127.0.0.1:{LIVE_REDIS_PORT}/0",
        STRATA_AIRFLOW_PORT=str(AIRFLOW_PORT),
        # run_demo's sample requests start the endpoint: a port beside the api-server's
        STRATA_ENDPOINT_PORT=str(AIRFLOW_PORT + 1),
    )
    live = LiveAirflow(url=f"http://127.0.0.1:{AIRFLOW_PORT}", home=home, env=env)
    started_at = time.monotonic()
    live_timings["session start"] = started_at
    redis = live.script(REDIS_SCRIPT, "start", timeout=60)
    assert redis.returncode == 0, f"redis.sh start: {redis.stdout}\n{redis.stderr}"
    try:
        started = live.script(SCRIPT, "start", timeout=420)
        if started.returncode != 0:
            pytest.fail(
                f"scripts/airflow.sh start exited {started.returncode}:\n"
                f"{started.stdout}\n{started.stderr}"
            )
        live_timings["airflow start (to healthy)"] = time.monotonic() - started_at
        _RUNNING.append((live, live_timings))
        yield live
    finally:
        _shutdown()


#: The live Airflow while it runs: stopped after the last test of this folder (see below), not
#: at the end of the whole session, so the tests after it do not share the machine with it.
_RUNNING: list[tuple[LiveAirflow, dict]] = []


def _shutdown() -> None:
    while _RUNNING:
        live, timings = _RUNNING.pop()
        stopping = time.monotonic()
        stopped = live.script(SCRIPT, "stop", timeout=120)
        timings["airflow stop"] = time.monotonic() - stopping
        timings["live tests in all (start to stop)"] = time.monotonic() - timings["session start"]
        live.script(REDIS_SCRIPT, "stop", timeout=60)
        assert stopped.returncode == 0, f"airflow.sh stop: {stopped.stdout}\n{stopped.stderr}"


def pytest_runtest_teardown(item, nextitem):
    """After the last live test, stop Airflow and its Redis."""
    if nextitem is None or Path(__file__).parent not in Path(nextitem.path).parents:
        _shutdown()


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
def screenshot_dir(live_airflow) -> Path:
    return Path(os.environ.get("STRATA_SCREENSHOT_DIR") or live_airflow.home / "screenshots")


# --- the whole chain, triggered once (shared by the live test files) ---------------------

#: 5,000 users x 3 days from the experiments' start (day 7 of the default window), so every
#: experiment starting then has exposures and is evaluated.
CHAIN_CONF = {"users": 5_000, "days": 3, "seed": 7, "start_date": "2026-11-08"}
CHAIN = ("run_demo", "build_goal_aggregates", "evaluate_experiments")
#: Upper bounds for a quiet 2-core machine (STRATA_LIVE_TIMEOUT_FACTOR stretches them).
_FACTOR = float(os.environ.get("STRATA_LIVE_TIMEOUT_FACTOR", "1"))
DEMO_TIMEOUT_S, EVENTS_TIMEOUT_S, EVALUATION_TIMEOUT_S = (
    420 * _FACTOR,
    600 * _FACTOR,
    300 * _FACTOR,
)


def last_day() -> str:
    """The synthetic data's last day: the as-of date the chain runs for."""
    start = dt.date.fromisoformat(CHAIN_CONF["start_date"])
    return (start + dt.timedelta(days=CHAIN_CONF["days"] - 1)).isoformat()


def _wait_for_asset_run(api, dag_id: str, timeout: float) -> dict:
    """The DAG's asset-triggered run, once it exists and has finished."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in api.runs(dag_id) if r["run_type"] == "asset_triggered"]
        if runs:
            return api.wait_for_run(
                dag_id, runs[-1]["dag_run_id"], max(deadline - time.monotonic(), 1)
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"no asset-triggered run of {dag_id} within {timeout:.0f} s")
        time.sleep(3)


def _note_tasks(api, dag_id: str, run_id: str, notes: list) -> None:
    for ti in sorted(api.task_instances(dag_id, run_id), key=lambda t: t["start_date"] or ""):
        label = ti["task_id"] + (f"[{ti['rendered_map_index']}]" if ti["map_index"] >= 0 else "")
        notes.append(
            f"  {dag_id:<22} {label:<58} {ti['state']:<8} try {ti['try_number']} "
            f"{ti['duration'] or 0:6.1f} s"
        )


def tries(api, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    return {
        t["task_id"] + (f"[{t['rendered_map_index']}]" if t["map_index"] >= 0 else ""): (
            t["state"],
            t["try_number"],
        )
        for t in api.task_instances(dag_id, run_id)
    }


@pytest.fixture(scope="session")
def chain(airflow_api, live_timings, live_notes) -> dict[str, dict]:
    """One trigger of run_demo on 5,000 users x 3 days; the asset-triggered runs that follow."""
    for dag_id in CHAIN:
        airflow_api.wait_for_dag(dag_id)
    # Unpause downstream first: the asset events of run_demo must find them listening. The
    # daily events DAG also gets its own scheduled run for yesterday, which has no data.
    for dag_id in reversed(CHAIN):
        airflow_api.set_paused(dag_id, False)
    started = time.monotonic()
    demo = airflow_api.trigger("run_demo", conf=CHAIN_CONF)
    runs = {"run_demo": airflow_api.wait_for_run("run_demo", demo["dag_run_id"], DEMO_TIMEOUT_S)}
    live_timings["chain: run_demo (trigger to end)"] = time.monotonic() - started
    step = time.monotonic()
    runs["build_goal_aggregates"] = _wait_for_asset_run(
        airflow_api, "build_goal_aggregates", EVENTS_TIMEOUT_S
    )
    live_timings["chain: build_goal_aggregates (asset-triggered)"] = time.monotonic() - step
    step = time.monotonic()
    runs["evaluate_experiments"] = _wait_for_asset_run(
        airflow_api, "evaluate_experiments", EVALUATION_TIMEOUT_S
    )
    live_timings["chain: evaluate_experiments (asset-triggered)"] = time.monotonic() - step
    live_timings["chain: one trigger to the last report"] = time.monotonic() - started
    for dag_id, run in runs.items():
        _note_tasks(airflow_api, dag_id, run["dag_run_id"], live_notes)
    return runs


def pytest_terminal_summary(terminalreporter, config):
    """Print how long the live steps took (CI's log shows them)."""
    timings = dict(config.stash.get(TIMINGS, {}))
    timings.pop("session start", None)
    if not timings:
        return
    terminalreporter.section("live Airflow")
    for step, seconds in timings.items():
        terminalreporter.write_line(f"{step:<48} {seconds:7.1f} s")
    for note in config.stash.get(NOTES, []):
        terminalreporter.write_line(note)
