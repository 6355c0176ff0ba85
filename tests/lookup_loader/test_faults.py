"""Bad days in production, on Redis servers the tests own: a restart, a replaced node, a flip under
a million tombstones, a publication refused for memory. Each step asserts what clients see."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import lookup_loader.publish as publication
from lookup_loader import loader
from lookup_loader.loader import PublicationError, invalidate, publish, recover
from lookup_loader.sample import sample_tables, write_tables
from strata.keyspace import KeySpace
from strata.lookup import LookupClient, LookupUnavailable, NoLiveVersionError
from strata.stack import iceberg_catalog
from strata_apps.endpoint import create_app

ROOT = Path(__file__).resolve().parents[2]
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
        server = private_redis()
        server.start()
        with pytest.raises(PublicationError, match="nothing to recover"):
            recover(server.settings, prefix="nowhere", publications_table="lf_none_p")


def version_keys(admin, prefix: str, version: str) -> list[bytes]:
    return [*admin.scan_iter(match=f"{prefix}:{version}:*", count=1000)] + [
        k for k in (f"{prefix}:ver:{version}".encode(),) if admin.exists(k)
    ]


class TestFailedPublication:
    def test_oom_refusal_removes_what_it_wrote_and_a_retry_succeeds(self, private_redis):
        server = private_redis("maxmemory-policy noeviction\n")
        server.start()
        admin = server.admin()
        env = Env(server.settings)
        env.write(devices=300, users=10)
        old = env.publish()
        reader = LookupClient(server.settings, prefix=env.prefix)
        before = reader.lookup_many(REQUESTS)
        baseline = admin.info("memory")["used_memory"]
        admin.config_set("maxmemory", baseline + 400 * 1024)
        admin.config_resetstat()

        env.write(devices=80_000, users=10)  # about 2 MB: far more than the 400 KB left
        with pytest.raises(PublicationError, match=r"used memory > 'maxmemory'") as failed:
            env.publish(writers=1)

        stats = admin.info("commandstats")
        assert stats["cmdstat_hset"]["calls"] > 0  # it failed half-way: buckets were written
        assert sum(v.get("rejected_calls", 0) for v in stats.values()) >= 1  # then OOM
        versions = [v.decode() for v in admin.zrange(f"{env.prefix}:versions", 0, -1)]
        assert versions == [old.version]  # the failed version is gone, keys and all
        assert "was removed" in "".join(getattr(failed.value, "__notes__", []))
        assert list(admin.scan_iter(match=f"{env.prefix}:*", count=1000)) != []
        failed_versions = {r for r in _recorded(server, env) if r[0] == "failed"}
        ((_, failed_version),) = failed_versions
        assert version_keys(admin, env.prefix, failed_version) == []
        assert admin.info("memory")["used_memory"] < baseline + 100 * 1024
        assert reader.live_version() == old.version
        assert reader.lookup_many(REQUESTS) == before  # nothing published was damaged

        # a retry that fits in the memory the failure freed succeeds, under the same maxmemory
        env.write(devices=3000, users=10)
        retry = env.publish(writers=1)
        assert (retry.state, retry.previous_version) == ("live", old.version)
        assert [s for s, _ in _recorded(server, env)] == ["live", "failed", "live"]

    def test_cleanup_removes_a_killed_publication_at_once(self, private_redis):
        """A publisher killed mid-write leaves a 'writing' version; once its lock is free (or its
        holder is dead), cleanup removes it without waiting an hour."""
        import os
        import signal
        import time

        server = private_redis()
        server.start()
        admin = server.admin()
        env = Env(server.settings)
        env.write(devices=100, users=10)
        old = env.publish()
        env.write(devices=8000, users=10)
        proc = subprocess.Popen(
            [sys.executable, "-m", "lookup_loader", "--prefix", env.prefix, "publish",
             "--assignments", env.tables["assignments_table"],
             "--experiments", env.tables["experiments_table"], "--publications", env.publications,
             "--max-units-per-s", "3000", "--writers", "1"],
            cwd=ROOT, env=server.env | {"STRATA_REDIS_URL": server.settings.redis_url},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        writing = None
        deadline = time.monotonic() + 60
        while writing is None and time.monotonic() < deadline:
            for raw in admin.zrange(f"{env.prefix}:versions", 0, -1):
                if raw.decode() != old.version and admin.exists(f"{env.prefix}:{raw.decode()}:d:0"):
                    writing = raw.decode()
            time.sleep(0.05)
        assert writing is not None, proc.communicate(timeout=5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert admin.hget(f"{env.prefix}:ver:{writing}", "state") == b"writing"
        assert admin.exists(f"{env.prefix}:lock")  # the dead publisher's lock, not yet expired

        from lookup_loader.loader import cleanup

        assert cleanup(server.settings, prefix=env.prefix) == [writing]
        assert version_keys(admin, env.prefix, writing) == []
        assert LookupClient(server.settings, prefix=env.prefix).live_version() == old.version


def _recorded(server, env) -> list[tuple[str, str]]:
    table = iceberg_catalog(server.settings).load_table(
        f"{server.settings.namespace}.{env.publications}"
    )
    rows = table.scan().to_arrow().sort_by("published_at").to_pylist()
    return [(r["state"], r["version"]) for r in rows]


def experiments(actions: list[dict]) -> set[str]:
    return {a["data"]["id"] for a in actions if a["type"] == "experiment"}


def redis_calls(admin) -> int:
    """Commands the server executed so far (scripts' own calls included), INFO itself left out."""
    stats = admin.info("commandstats")
    return sum(
        v["calls"] + v.get("failed_calls", 0) + v.get("rejected_calls", 0)
        for k, v in stats.items()
        if k != "cmdstat_info"
    )


def record_tombstones(admin, prefix: str, experiment: str, n: int) -> None:
    """``n`` removals of units the versions do not hold, stored as ``invalidate`` stores them."""
    import zlib

    ks = KeySpace(prefix)
    seq = int(admin.get(ks.tombstone_seq) or 0)
    for lo in range(0, n, 20_000):
        ids = [f"ghost-{i}" for i in range(lo, min(n, lo + 20_000))]
        fields = [f"d\n{experiment}\n{u}" for u in ids]
        pipe = admin.pipeline(transaction=False)
        pipe.hset(ks.tombstones, mapping={f: f"1:{zlib.crc32(u.encode())}"
                                          for f, u in zip(fields, ids, strict=True)})  # fmt: skip
        pipe.zadd(ks.tombstone_log, {f: seq + lo + j + 1 for j, f in enumerate(fields)})
        pipe.execute()
    admin.set(ks.tombstone_seq, seq + n)


class TestFlipUnderTombstones:
    @pytest.mark.slow
    def test_the_flip_does_the_same_work_at_0_and_1m_tombstones(self, private_redis, monkeypatch):
        server = private_redis()
        server.start()
        admin = server.admin()
        env = Env(server.settings)
        env.write(devices=200, users=10)
        env.publish()  # the scripts are loaded; later flips are one EVALSHA each
        calls: list[int] = []
        original = publication.flip

        def counted(client, version, since, prefix):
            before = redis_calls(admin)
            out = original(client, version, since, prefix)
            calls.append(redis_calls(admin) - before)
            return out

        monkeypatch.setattr(publication, "flip", counted)
        env.write(devices=200, users=10)
        env.publish()  # no tombstone
        record_tombstones(admin, env.prefix, "checkout_button", 1_000_000)
        admin.hset(KeySpace(env.prefix).tombstones, "d\ngone_experiment\nd00000001", "1:0")
        assert invalidate(
            server.settings, "device_id", "d00000005", "checkout_button", prefix=env.prefix
        )
        env.write(devices=200, users=10)
        result = env.publish()  # 1,000,002 tombstones

        assert calls[0] == calls[1] < 20, calls
        assert result.tombstones_applied == 1  # d00000005, re-applied to the new version
        reader = LookupClient(server.settings, prefix=env.prefix)
        served = reader.lookup("d00000005")
        assert "checkout_button" not in {
            a["data"]["id"] for a in served if a["type"] == "experiment"
        }
        tomb = KeySpace(env.prefix).tombstones
        assert admin.hlen(tomb) == 1_000_001  # only the unpublished experiment's was dropped
        assert not admin.hexists(tomb, "d\ngone_experiment\nd00000001")

    def test_a_removal_made_just_before_the_flip_is_applied_by_it(self, private_redis, monkeypatch):
        server = private_redis()
        server.start()
        env = Env(server.settings)
        env.write(devices=200, users=10)
        env.publish()
        original = publication.flip

        def invalidate_first(client, version, since, prefix):
            invalidate(server.settings, "device_id", "d00000009", "checkout_button", prefix=prefix)
            return original(client, version, since, prefix)

        monkeypatch.setattr(publication, "flip", invalidate_first)
        env.write(devices=200, users=10)
        result = env.publish()
        assert result.tombstones_applied == 1
        served = LookupClient(server.settings, prefix=env.prefix).lookup("d00000009")
        assert "checkout_button" not in {
            a["data"]["id"] for a in served if a["type"] == "experiment"
        }


class TestLeastPrivilege:
    """scripts/redis.sh creates a writer for the loader and a read-only user for readers."""

    FORBIDDEN: typing.ClassVar = [
        ("FLUSHALL",), ("CONFIG", "GET", "maxmemory"), ("SHUTDOWN", "NOSAVE"),
        ("REPLICAOF", "127.0.0.1", "6379"), ("ACL", "LIST"),
        ("KEYS", "*"), ("SCRIPT", "FLUSH"), ("INFO",),
    ]  # fmt: skip

    def test_roles_are_used_and_secrets_are_private(self, private_redis):
        import stat

        from strata.stack import redis_client

        server = private_redis()
        server.start()
        for name in ("password", "writer.password", "reader.password"):
            mode = stat.S_IMODE((server.home / "redis" / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
        secrets = [(server.home / "redis" / n).read_text().strip()
                   for n in ("password", "writer.password", "reader.password")]  # fmt: skip
        pid = server.pidfile.read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert not any(s in cmdline for s in secrets)  # the config came in on stdin
        env = Env(server.settings)
        env.write(devices=50, users=5)
        env.publish()
        reader = LookupClient(server.settings, prefix=env.prefix)
        assert reader.lookup("d00000001")
        held = loader._client(server.settings).connection_pool.get_connection()  # the loader's
        users = {c["user"] for c in redis_client(server.settings).client_list()}
        assert {"strata-reader", "strata-writer"} <= users
        held.disconnect()

    def test_a_write_script_run_as_the_reader_fails(self, private_redis):
        import redis

        from strata.stack import redis_client

        server = private_redis()
        server.start()
        env = Env(server.settings)
        env.write(devices=50, users=5)
        env.publish()
        reader = redis_client(server.settings, role="reader")
        args = [env.prefix, "d", "checkout_button", "d00000001", 1, 1]
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.eval(loader.INVALIDATE_LUA, 0, *args)
        sha = reader.script_load(loader.INVALIDATE_LUA)  # allowed: loading is not running
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.evalsha(sha, 0, *args)
        with pytest.raises(redis.ResponseError, match=r"can't run this command"):
            reader.evalsha_ro(sha, 0, *args)
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.set(f"{env.prefix}:live", "x")
        admin = server.admin()
        assert admin.hlen(KeySpace(env.prefix).tombstones) == 0  # nothing was written
        served = LookupClient(server.settings, prefix=env.prefix).lookup("d00000001")
        assert "checkout_button" in experiments(served)
        writer = redis_client(server.settings, role="writer")
        for client in (reader, writer):
            for command in self.FORBIDDEN:
                with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions"):
                    client.execute_command(*command)
        assert admin.ping()  # still up: SHUTDOWN was refused
