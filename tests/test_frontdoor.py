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
The quick tests read `make -n setup` (a dry run executes nothing) for each kind of missing state.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

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


def make(target: str, env: dict[str, str], *args: str, timeout: float = 600):
    return subprocess.run(
        ["make", "--no-print-directory", *args, target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def planned(target: str, env: dict[str, str], *args: str) -> list[str]:
    """The commands `make -n target` would run (none when it is up to date); it runs none."""
    run = make(target, env, "-n", *args)
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if not line.startswith("make")]


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "strata-home"
    yield home
    env = make_env(home)  # whatever happened: stop the servers this test's home started
    subprocess.run([ROOT / "scripts" / "endpoint.sh", "stop"], env=env, capture_output=True)
    subprocess.run([ROOT / "scripts" / "redis.sh", "stop"], env=env, capture_output=True)


def installs(plan: list[str]) -> list[str]:
    """What a setup plan would install (beside migrating a home's Airflow database)."""
    return [
        line for line in plan if MIGRATE not in line and not line.startswith(("mkdir -p", "touch"))
    ]


@pytest.fixture
def set_up(tmp_path):
    """This checkout's environment with a new home; fails if the checkout itself is not set up."""
    env = make_env(tmp_path / "home")
    pending = installs(planned("setup", env))
    if pending:
        pytest.fail(f"this checkout is not set up (make -n setup would run {pending}): make setup")
    return env


class TestSetupStateFollowsItsSubject:
    def test_a_new_home_gets_its_own_airflow_database(self, set_up):
        home = Path(set_up["STRATA_HOME"])
        plan = planned("setup", set_up)
        assert ".venv/bin/airflow db migrate > /dev/null" in plan
        assert f"touch {home}/airflow/.setup-airflow-db" in plan
        (home / "airflow").mkdir(parents=True)
        (home / "airflow" / "airflow.db").touch()
        (home / "airflow" / ".setup-airflow-db").touch()
        assert planned("setup", set_up) == []
        (home / "airflow" / "airflow.db").unlink()  # the database went, the stamp stayed
        assert any(MIGRATE in line for line in planned("setup", set_up))

    def test_another_jvm_profile_downloads_its_jars(self, set_up):
        plan = planned("setup", {**set_up, "JVM_PROFILE": "aws"})
        assert any(line.startswith("mvn ") and " -Paws " in line for line in plan), plan
        assert "touch .setup/jars-aws" in plan

    def test_a_missing_venv_is_installed_again(self, set_up, tmp_path):
        plan = planned("setup", set_up, f"VENV={tmp_path / 'no-venv'}")
        assert (
            f"test -x {tmp_path}/no-venv/bin/python || python3 -m venv {tmp_path}/no-venv" in plan
        )
        assert "touch .setup/python" in plan


@pytest.mark.slow
def test_make_clean_then_demo_in_a_new_strata_home(home):
    env = make_env(home)
    removes = [line.split() for line in planned("clean", env) if line.startswith("rm ")]
    absolute = [Path(word) for words in removes for word in words if word.startswith("/")]
    assert home in absolute, removes  # clean deletes this home, and nothing else outside the repo
    assert all(p == home or home in p.parents for p in absolute), removes
    pending = installs(planned("setup", env))
    if pending:
        pytest.fail(f"this checkout is not set up (make -n setup would run {pending}): make setup")

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
