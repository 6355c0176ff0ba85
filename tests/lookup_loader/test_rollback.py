"""Rollback: a held version live again in one flip, an older one republished from its recorded
Iceberg snapshots, every rollback recorded, refusals that change nothing; the CLI commands."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import lookup_loader.publish as publication
from lookup_loader.loader import (
    RollbackRefused,
    held_versions,
    invalidate,
    publish,
    rollback,
)
from lookup_loader.sample import sample_tables, write_tables
from strata.keyspace import KeySpace
from strata.lookup import LookupClient
from strata.stack import iceberg_catalog, redis_client

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = [(f"d{i:08d}", f"u{i % 10:08d}", None) for i in range(0, 120, 7)]


class Env:
    """One test's Iceberg tables and Redis prefix."""

    def __init__(self, settings) -> None:
        tag = uuid.uuid4().hex[:8]
        self.settings, self.prefix = settings, f"rb{tag}"
        self.tables = {"assignments_table": f"rb_{tag}_a", "experiments_table": f"rb_{tag}_e"}
        self.publications = f"rb_{tag}_p"

    def write(self, devices: int) -> None:
        write_tables(
            self.settings,
            *sample_tables(devices=devices, users=10, urls=2),
            assignments_table=self.tables["assignments_table"],
            experiments_table_name=self.tables["experiments_table"],
        )

    def publish(self, devices: int, **kwargs):
        self.write(devices)
        return publish(
            self.settings,
            prefix=self.prefix,
            publications_table=self.publications,
            **self.tables,
            **kwargs,
        )

    def rollback(self, version=None, **kwargs):
        return rollback(
            self.settings,
            version,
            prefix=self.prefix,
            publications_table=self.publications,
            **kwargs,
        )

    def answers(self):
        reader = LookupClient(self.settings, prefix=self.prefix)
        return reader.live_version(), reader.lookup_many(REQUESTS)

    def live(self) -> str:
        return redis_client(self.settings).get(KeySpace(self.prefix).live).decode()

    def records(self) -> list[dict]:
        table = iceberg_catalog(self.settings).load_table(
            f"{self.settings.namespace}.{self.publications}"
        )
        rows = table.scan().to_arrow().sort_by("published_at").to_pylist()
        return [r for r in rows if r["redis_prefix"] == self.prefix]


def redis_calls(admin) -> int:
    """Commands the server executed so far (scripts' own calls included), INFO left out."""
    stats = admin.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


@pytest.fixture
def env(redis_server):
    return Env(redis_server)


class TestHeldVersion:
    def test_a_rollback_to_a_held_version_flips_in_one_call(self, env, monkeypatch):
        first = env.publish(devices=100)
        before = env.answers()
        second = env.publish(devices=60)
        assert env.answers() != before
        assert set(held_versions(redis_client(env.settings), env.prefix)) == {first.version}

        admin = redis_client(env.settings)
        flips: list[int] = []
        original = publication.flip

        def counted(client, version, since, prefix):
            calls = redis_calls(admin)
            out = original(client, version, since, prefix)
            flips.append(redis_calls(admin) - calls)
            return out

        def no_write(*args, **kwargs):
            raise AssertionError("a held version is not written again")

        monkeypatch.setattr(publication, "flip", counted)
        monkeypatch.setattr(publication, "write_version", no_write)
        monkeypatch.setattr(publication, "read_source", no_write)
        out = env.rollback(first.version)

        assert (out["state"], out["how"]) == ("rollback", "held")
        assert (out["version"], out["previous_version"]) == (first.version, second.version)
        assert out["device_id"] == 100
        assert len(flips) == 1, flips
        assert flips[0] < 20, flips  # one script: EVALSHA and its own calls
        assert env.answers() == before
        assert set(held_versions(admin, env.prefix)) == {second.version}
        last = env.records()[-1]
        assert (last["state"], last["version"], last["previous_version"]) == (
            "rollback",
            first.version,
            second.version,
        )
        assert last["assignments_snapshot_id"] == first.assignments_snapshot_id
        assert last["as_of"] == env.records()[0]["as_of"]

    def test_no_version_is_the_previous_one_and_twice_is_undo(self, env):
        first = env.publish(devices=80)
        second = env.publish(devices=40)
        assert env.rollback()["version"] == first.version
        assert env.live() == first.version
        assert env.rollback()["version"] == second.version
        assert env.live() == second.version
        states = [(r["state"], r["version"]) for r in env.records()]
        assert states[-2:] == [("rollback", first.version), ("rollback", second.version)]

    def test_tombstones_are_reapplied_by_the_rollback_flip(self, env):
        first = env.publish(devices=50)
        env.publish(devices=30)
        assert invalidate(env.settings, "device_id", "d00000007", "checkout_button",
                          prefix=env.prefix)  # fmt: skip
        out = env.rollback(first.version)
        assert out["tombstones_applied"] == 1
        served = LookupClient(env.settings, prefix=env.prefix).lookup("d00000007")
        assert "checkout_button" not in {
            a["data"]["id"] for a in served if a["type"] == "experiment"
        }

    def test_the_live_version_is_unchanged_and_nothing_before_it_is_refused(self, env):
        first = env.publish(devices=20)
        out = env.rollback(first.version)
        assert (out["state"], out["version"]) == ("unchanged", first.version)
        with pytest.raises(RollbackRefused, match="no previous version"):
            env.rollback()
        assert [r["state"] for r in env.records()] == ["live"]

    def test_how_many_are_held_is_a_setting(self, env):
        settings = env.settings.model_copy(update={"lookup_keep_versions": 2})
        versions = [env.publish(devices=n).version for n in (10, 20)]
        env.settings = settings
        versions.append(env.publish(devices=30).version)
        versions.append(env.publish(devices=40).version)
        held = held_versions(redis_client(settings), env.prefix)
        assert set(held) == {versions[1], versions[2]}  # the two newest retired ones
        out = env.rollback(versions[1])
        assert out["how"] == "held"


class TestOlderVersion:
    def test_a_version_no_longer_held_is_republished_from_its_snapshots(self, env):
        first = env.publish(devices=90, keep=0)
        before = env.answers()
        second = env.publish(devices=45, keep=0)
        assert held_versions(redis_client(env.settings), env.prefix) == {}
        out = env.rollback(keep=0)
        assert (out["state"], out["how"]) == ("rollback", "republished")
        assert (out["version"], out["previous_version"]) == (first.version, second.version)
        assert out["device_id"] == 90
        assert env.answers() == before
        last = env.records()[-1]
        assert (last["state"], last["previous_version"]) == ("rollback", second.version)
        assert last["bytes_sent"] > 0

    def test_unknown_and_expired_versions_are_refused_and_nothing_changes(self, env):
        first = env.publish(devices=40, keep=0)
        second = env.publish(devices=20, keep=0)
        rows = len(env.records())
        for bad in ("0123456789ab", "not-a-version"):
            with pytest.raises(RollbackRefused, match="unknown version"):
                env.rollback(bad)
        table = iceberg_catalog(env.settings).load_table(
            f"{env.settings.namespace}.{env.tables['assignments_table']}"
        )
        table.maintenance.expire_snapshots().by_id(first.assignments_snapshot_id).commit()
        with pytest.raises(RollbackRefused, match="no longer has snapshot"):
            env.rollback(first.version)
        assert env.live() == second.version
        assert len(env.records()) == rows


def test_cli_rollback(env, capsys):
    from strata_apps.cli import main

    first = env.publish(devices=30)
    second = env.publish(devices=15)
    common = ["--prefix", env.prefix, "--publications", env.publications]
    assert main(["rollback", *common]) == 0
    assert f'"version": "{first.version}"' in capsys.readouterr().out
    assert env.live() == first.version
    run = [sys.executable, "-m", "lookup_loader", "--prefix", env.prefix, "rollback"]
    done = subprocess.run(
        [*run, second.version, "--publications", env.publications],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert '"how": "held"' in done.stdout
    refused = subprocess.run(
        [*run, "abcdef012345", "--publications", env.publications],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "unknown version abcdef012345" in refused.stderr
    assert env.live() == second.version
