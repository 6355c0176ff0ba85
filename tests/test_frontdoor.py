"""The front door (issue 12, item 9): `make clean && make demo` works in a new STRATA_HOME.

Setup state must follow what it describes. The Airflow database lives in AIRFLOW_HOME (inside
STRATA_HOME), so its "migrated" stamp lives there too: before, the stamp sat in the checkout's
`.setup/`, and a new STRATA_HOME (or one after `make clean`) had no database while make believed
it had one (`no such table: variable`).

This runs the real thing — make, Airflow's `db migrate`, the demo's three DAGs, Spark, Redis and
the endpoint — in a temporary STRATA_HOME on ports of its own (STRATA_TEST_REDIS_PORT + 7 and + 8,
or STRATA_FRONTDOOR_REDIS_PORT and the next port). Before running anything it checks, with
`make -n`, that `clean` deletes only that home and that `setup` would install nothing (only the
new home's database migration): this test never touches the default `.strata`, the venv or jars.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
_BASE = int(os.environ.get("STRATA_TEST_REDIS_PORT", "6391"))
REDIS_PORT = int(os.environ.get("STRATA_FRONTDOOR_REDIS_PORT", _BASE + 7))
ENDPOINT_PORT = REDIS_PORT + 1
MIGRATE = "airflow db migrate"


def make_env(home: Path) -> dict[str, str]:
    """A user's environment with a fresh STRATA_HOME: no inherited Strata, Airflow or make state."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STRATA_", "AIRFLOW_", "MAKE")) and k not in ("MFLAGS", "PYTHONPATH")
    }
    env.update(
        STRATA_HOME=str(home),
        AIRFLOW_HOME=str(home / "airflow"),
        STRATA_REDIS_PORT=str(REDIS_PORT),
        STRATA_ENDPOINT_PORT=str(ENDPOINT_PORT),
        STRATA_SPARK_DRIVER_MEMORY="2g",
        PYTHONPATH=f"{ROOT / 'include'}:{ROOT}",  # this checkout, wherever the venv points
        DEMO_USERS="2000",
        DEMO_DAYS="3",
    )
    return env


def make(target: str, env: dict[str, str], *flags: str, timeout: float = 600):
    return subprocess.run(
        ["make", "--no-print-directory", *flags, target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def planned(target: str, env: dict[str, str]) -> list[str]:
    """The commands `make -n target` would run (none when it is up to date)."""
    run = make(target, env, "-n")
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if not line.startswith("make")]


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "strata-home"
    yield home
    env = make_env(home)  # whatever happened: stop the servers this test's home started
    subprocess.run([ROOT / "scripts" / "endpoint.sh", "stop"], env=env, capture_output=True)
    subprocess.run([ROOT / "scripts" / "redis.sh", "stop"], env=env, capture_output=True)


def test_make_clean_then_demo_in_a_new_strata_home(home):
    env = make_env(home)
    removes = [line.split() for line in planned("clean", env) if line.startswith("rm ")]
    absolute = [Path(word) for words in removes for word in words if word.startswith("/")]
    assert home in absolute, removes  # clean deletes this home, and nothing else outside the repo
    assert all(p == home or home in p.parents for p in absolute), removes
    installs = [line for line in planned("setup", env) if MIGRATE not in line]
    installs = [line for line in installs if not line.startswith(("mkdir", "touch"))]
    if installs:
        pytest.fail(f"this checkout is not set up (make -n setup would run {installs}): make setup")

    clean = make("clean", env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not home.exists()
    # A new home has no Airflow database: setup must migrate one (it used to say "nothing to do").
    assert any(MIGRATE in line for line in planned("setup", env))

    demo = make("demo", env, timeout=2400)
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-6000:]
    for dag_id in ("run_demo", "build_goal_aggregates", "evaluate_experiments"):
        assert f"DAG {dag_id}: success" in demo.stdout
    assert "authenticated round trip" in demo.stdout
    assert (home / "airflow" / "airflow.db").is_file()
    assert (home / "airflow" / ".setup-airflow-db").is_file()
    assert planned("setup", env) == []  # set up now, in this home

    clean = make("clean", env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not home.exists()
    assert any(MIGRATE in line for line in planned("setup", env))  # the stamp went with the db
