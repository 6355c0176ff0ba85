"""Bad days in production, on Redis servers the tests own: a restart, a replaced node, a flip under
a million tombstones, a publication refused for memory. Each step asserts what clients see."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from fastapi.testclient import TestClient

from lookup_loader.loader import publish, recover
from lookup_loader.sample import sample_tables, write_tables
from strata.endpoint import create_app
from strata.lookup import LookupClient, LookupUnavailable, NoLiveVersionError
from strata.stack import iceberg_catalog

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
REQUESTS = [(f"d{i:08d}", f"u{i % 40:08d}", None) for i in range(0, 300, 7)]


class Env:
    """One test's Iceberg tables and Redis prefix, published to a given server."""

    def __init__(self, settings) -> None:
        tag = uuid.uuid4().hex[:8]
        self.settings, self.prefix = settings, f"f{tag}"
        self.tables = {"assignments_table": f"lf_{tag}_a", "experiments_table": f"lf_{tag}_e"}
        self.publications = f"lf_{tag}_p"

    def write(self, devices: int = 300, users: int = 40) -> None:
        write_tables(
            self.settings,
            *sample_tables(devices=devices, users=users, urls=2),
            assignments_table=self.tables["assignments_table"],
            experiments_table_name=self.tables["experiments_table"],
        )

    def publish(self, settings=None, **kwargs):
        return publish(
            settings or self.settings,
            prefix=self.prefix,
            publications_table=self.publications,
            **self.tables,
            **kwargs,
        )


def register(http: TestClient, device_id: str = "d00000007"):
    return http.post(f"/v1/device/register/{device_id}", json={"request": {}})


def assert_unavailable(response, err: str, reason: str) -> None:
    """A 503 a client can act on: Retry-After, the envelope's err and the reason."""
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    body = response.json()
    assert (body["params"]["status"], body["params"]["err"]) == ("failed", err)
    assert body["result"]["reason"] == reason


def assert_health_down(response, reason: str) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["status"] == "unavailable"
    assert response.json()["reason"] == reason


class TestRestart:
    def test_kill_restart_replaced_node_and_recover(self, private_redis):
        server = private_redis()
        server.start()
        env = Env(server.settings)
        env.write()
        first = env.publish()
        reader = LookupClient(server.settings, prefix=env.prefix)
        before = reader.lookup_many(REQUESTS)
        assert sum(map(len, before)) > 0
        with TestClient(create_app(server.settings, prefix=env.prefix)) as http:
            served = register(http)
            assert served.status_code == 200
            assert served.json()["result"]["actions"] == reader.lookup("d00000007")
            assert http.get("/healthz").json() == {"status": "ok", "live_version": first.version}

            # 1. the server dies: unreachable, said so everywhere
            server.kill()
            with pytest.raises(LookupUnavailable) as down:
                reader.lookup("d00000007")
            assert down.value.reason == "unreachable"
            assert_unavailable(register(http), "LOOKUP_UNAVAILABLE", "unreachable")
            assert_health_down(http.get("/healthz"), "unreachable")

            # 2. restarted on its own data (AOF): the same version, the same answers
            server.start()
            assert reader.lookup_many(REQUESTS) == before
            assert register(http).json()["result"]["actions"] == served.json()["result"]["actions"]
            assert http.get("/healthz").json() == {"status": "ok", "live_version": first.version}

            # 3. a replaced node: killed, data files gone, started empty. Not "no experiments":
            server.kill()
            server.wipe()
            server.start()
            with pytest.raises(NoLiveVersionError, match="lookup_loader recover"):
                reader.lookup("d00000007")
            with pytest.raises(NoLiveVersionError):
                reader.lookup_many(REQUESTS)
            empty = register(http)
            assert_unavailable(empty, "NO_LIVE_VERSION", "no_live_version")
            assert empty.headers["Retry-After"] == "30"
            assert_health_down(http.get("/healthz"), "no_live_version")

            # 4. recovery: the last verified publication from its Iceberg snapshots
            counts = recover(
                server.settings, prefix=env.prefix, publications_table=env.publications
            )
            assert counts == {
                "state": "recovered",
                "version": first.version,
                "rows": first.rows,
                **first.units,
                "experiments": first.experiments,
                "tombstones_applied": 0,
                "duration_s": counts["duration_s"],
            }
            assert reader.lookup_many(REQUESTS) == before
            assert register(http).json()["result"]["actions"] == served.json()["result"]["actions"]
            assert http.get("/healthz").json() == {"status": "ok", "live_version": first.version}

        # the command does the same, and nothing while a version is live
        cli = subprocess.run(
            [sys.executable, "-m", "lookup_loader", "--prefix", env.prefix, "recover",
             "--publications", env.publications],
            cwd=ROOT, capture_output=True, text=True, check=True,
            env=server.env | {"STRATA_REDIS_URL": server.settings.redis_url},
        )  # fmt: skip
        assert json.loads(cli.stdout)["state"] == "unchanged"
        table = iceberg_catalog(server.settings).load_table(
            f"{server.settings.namespace}.{env.publications}"
        )
        rows = table.scan().to_arrow().sort_by("published_at").to_pylist()
        assert [(r["state"], r["version"]) for r in rows] == [
            ("live", first.version),
            ("recovered", first.version),
        ]
        assert rows[1]["assignments_snapshot_id"] == first.assignments_snapshot_id

    def test_recovery_uses_the_recorded_snapshots_not_the_current_tables(self, private_redis):
        server = private_redis()
        server.start()
        env = Env(server.settings)
        env.write(devices=100)
        first = env.publish()
        reader = LookupClient(server.settings, prefix=env.prefix)
        before = reader.lookup_many(REQUESTS)
        env.write(devices=50)  # a newer snapshot, never published
        server.kill()
        server.wipe()
        server.start()
        counts = recover(server.settings, prefix=env.prefix, publications_table=env.publications)
        assert (counts["version"], counts["device_id"]) == (first.version, 100)
        assert reader.lookup_many(REQUESTS) == before

    def test_nothing_recorded_is_a_clear_error(self, private_redis):
        from lookup_loader.loader import PublicationError

        server = private_redis()
        server.start()
        with pytest.raises(PublicationError, match="nothing to recover"):
            recover(server.settings, prefix="nowhere", publications_table="lf_none_p")
