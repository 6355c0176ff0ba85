"""What scripts/airflow.sh promises about the running Airflow: its processes, the addresses they
listen on, the password file, the pool. Checked on the live session's Airflow."""

from __future__ import annotations

import os
import stat

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.live]

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def _component_processes(live_airflow) -> dict[str, list[psutil.Process]]:
    """Each component's process group (leader from its pid file, and its children)."""
    groups = {}
    for name in COMPONENTS:
        pid = int((live_airflow.airflow_home / "run" / f"{name}.pid").read_text())
        leader = psutil.Process(pid)
        groups[name] = [leader, *leader.children(recursive=True)]
    return groups


def test_four_components_each_lead_their_own_process_group(live_airflow):
    groups = _component_processes(live_airflow)
    for name, processes in groups.items():
        leader = processes[0]
        assert os.getpgid(leader.pid) == leader.pid, name
        assert "airflow" in " ".join(leader.cmdline()), name
    assert len({p[0].pid for p in groups.values()}) == len(COMPONENTS)


def test_only_the_api_server_listens_and_only_on_loopback(live_airflow):
    """No log server (it binds to every interface), no scheduler health server; the api-server
    on 127.0.0.1 at the configured port."""
    listening = {}
    for name, processes in _component_processes(live_airflow).items():
        for process in processes:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.setdefault(name, set()).add((conn.laddr.ip, conn.laddr.port))
    port = int(live_airflow.env["STRATA_AIRFLOW_PORT"])
    assert listening == {"api-server": {("127.0.0.1", port)}}


def test_password_file_is_private_and_signs_in(live_airflow, airflow_api):
    file = live_airflow.airflow_home / "simple_auth_manager_passwords.json.generated"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert airflow_api.token  # POST /auth/token accepted the generated password


def test_spark_pool_has_the_shipped_slots(airflow_api):
    pool = airflow_api.get("/pools/spark")
    assert pool["slots"] == 2
