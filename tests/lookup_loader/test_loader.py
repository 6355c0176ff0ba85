"""The loader against a real redis-server (password-protected, loopback) and real Iceberg tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict

import pyarrow as pa
import pytest
import redis

from lookup_loader.loader import (
    RespConnection,
    cleanup,
    invalidate,
    publish,
    restore,
)
from lookup_loader.sample import SAMPLE_EXPERIMENTS, sample_tables, write_tables
from strata.config import Settings
from strata.errors import DataError, StackError
from strata.keyspace import KeySpace
from strata.lookup import LookupClient
from strata.stack import iceberg_catalog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Env:
    """One test's own Redis prefix and Iceberg table names, and helpers around them."""

    def __init__(self, settings: Settings) -> None:
        tag = uuid.uuid4().hex[:8]
        self.settings = settings
        self.prefix = f"t{tag}"
        self.assignments = f"lk_{tag}_assignments"
        self.experiments = f"lk_{tag}_experiments"
        self.publications = f"lk_{tag}_publications"

    def write(self, assignments: pa.Table, experiments: pa.Table) -> tuple[int, int]:
        return write_tables(
            self.settings,
            assignments,
            experiments,
            assignments_table=self.assignments,
            experiments_table_name=self.experiments,
        )

    def publish(self, **kwargs):
        return publish(
            self.settings,
            prefix=self.prefix,
            assignments_table=self.assignments,
            experiments_table=self.experiments,
            publications_table=self.publications,
            **kwargs,
        )

    def reader(self) -> LookupClient:
        return LookupClient(self.settings, prefix=self.prefix)

    def redis(self) -> redis.Redis:
        from strata.stack import redis_client

        return redis_client(self.settings)


@pytest.fixture
def env(redis_server):
    return Env(redis_server)


def served_pairs(assignments: pa.Table, stopped: set[str]) -> dict[tuple[str, str], set]:
    """(unit type, unit id) -> {(experiment, variant)} straight from the source rows."""
    out: dict[tuple[str, str], set] = defaultdict(set)
    for r in assignments.select(
        ["unit_type", "unit_id", "experiment_id", "variant_id"]
    ).to_pylist():
        if r["experiment_id"] not in stopped:
            out[(r["unit_type"], r["unit_id"])].add((r["experiment_id"], r["variant_id"]))
    return out


def experiment_pairs(actions: list[dict]) -> set[tuple[str, int]]:
    return {(a["data"]["id"], a["data"]["variantId"]) for a in actions if a["type"] == "experiment"}


def ask(reader: LookupClient, unit_type: str, unit_id: str) -> list[dict]:
    request = {"device_id": (unit_id, None, None), "user_id": (None, unit_id, None)}
    return reader.lookup(*request.get(unit_type, (None, None, unit_id)))


class TestPublish:
    def test_lookup_equals_assignments_for_every_unit(self, env):
        assignments, experiments = sample_tables(devices=3000, users=1200, urls=40)
        snapshot, _ = env.write(assignments, experiments)

        result = env.publish()

        expected = served_pairs(assignments, stopped={"old_banner"})
        assert result.state == "live"
        assert result.units == {"device_id": 3000, "user_id": 1200, "url": 40}
        assert result.excluded_rows == {"status_stopped": 3000}  # old_banner's rows, counted
        units = list(expected)
        requests = [
            {"device_id": (u, None, None), "user_id": (None, u, None), "url": (None, None, u)}[t]
            for t, u in units
        ]
        answers = env.reader().lookup_many(requests)
        mismatches = [
            (unit, experiment_pairs(got), expected[unit])
            for unit, got in zip(units, answers, strict=True)
            if experiment_pairs(got) != expected[unit]
        ]
        assert mismatches == []
        assert len(answers) == 3000 + 1200 + 40
        # the record in Iceberg says what happened
        table = iceberg_catalog(env.settings).load_table(
            f"{env.settings.namespace}.{env.publications}"
        )
        rows = table.scan().to_arrow().to_pylist()
        assert [(r["version"], r["state"], r["assignments_snapshot_id"]) for r in rows] == [
            (result.version, "live", snapshot)
        ]
        assert (rows[0]["device_units"], rows[0]["user_units"], rows[0]["url_units"]) == (
            3000,
            1200,
            40,
        )

    def test_batch_answers_equal_single_answers(self, env):
        env.write(*sample_tables(devices=200, users=100, urls=10))
        env.publish()
        reader = env.reader()
        requests = [
            (f"d{i:08d}", f"u{i % 150:08d}", f"https://app.example.com/p/{i % 12}")
            for i in range(0, 200, 7)
        ]
        assert reader.lookup_many(requests) == [reader.lookup(*r) for r in requests]

    def test_rerun_of_the_live_source_changes_nothing(self, env):
        env.write(*sample_tables(devices=100, users=10, urls=1))
        first = env.publish()
        again = env.publish()
        assert (again.state, again.version, again.previous_version) == (
            "unchanged",
            first.version,
            first.version,
        )

    def test_stopped_experiment_and_removed_unit_disappear_at_next_publication(self, env):
        assignments, experiments = sample_tables(devices=300, users=50, urls=2)
        env.write(assignments, experiments)
        first = env.publish()
        reader = env.reader()
        assert experiment_pairs(reader.lookup("d00000007"))  # served before
        assert experiment_pairs(reader.lookup(None, "u00000003"))

        stopped = [dict(e) for e in SAMPLE_EXPERIMENTS]
        stopped[1]["status"] = "stopped"  # feed_ranking (user_id) stops
        keep = [r["unit_id"] != "d00000007" for r in assignments.select(["unit_id"]).to_pylist()]
        env.write(
            assignments.filter(pa.array(keep)), sample_tables(1, 1, 1, experiments=stopped)[1]
        )
        second = env.publish()

        assert second.previous_version == first.version
        assert reader.lookup("d00000007") == []
        assert reader.lookup(None, "u00000003") == []
        assert experiment_pairs(reader.lookup("d00000008")) != set()
        # the previous version is kept for rollback, the one before it is unlinked
        client = env.redis()
        ks = KeySpace(env.prefix)
        assert client.hget(ks.meta(first.version), "state") == b"retired"
        env.write(assignments, experiments)
        third = env.publish()
        assert cleanup(env.settings, prefix=env.prefix, keep=1) == []
        assert client.exists(ks.meta(first.version), ks.catalog(first.version)) == 0
        assert list(client.scan_iter(match=f"{env.prefix}:{first.version}:*")) == []
        assert client.hget(ks.meta(second.version), "state") == b"retired"
        assert client.get(ks.live).decode() == third.version

    def test_all_experiments_stopped_publishes_an_empty_version(self, env):
        assignments, _ = sample_tables(devices=50, users=5, urls=1)
        stopped = [dict(e, status="stopped") for e in SAMPLE_EXPERIMENTS]
        env.write(assignments, sample_tables(1, 1, 1, experiments=stopped)[1])
        result = env.publish()
        assert (result.state, result.units, sum(result.excluded_rows.values())) == (
            "live",
            {"device_id": 0, "user_id": 0, "url": 0},
            assignments.num_rows,
        )
        assert env.reader().lookup("d00000001", "u00000001") == []


class TestBadInput:
    @pytest.mark.parametrize(
        ("column", "value", "message"),
        [
            ("unit_type", "email", "unit_type 'email'"),
            ("unit_id", "bad\nid", "contains a control character"),
            ("experiment_id", "ghost", "missing from `experiments`: ['ghost']"),
            ("params", "{not json", "params is not JSON"),
        ],
    )
    def test_bad_row_is_named_and_live_version_untouched(self, env, column, value, message):
        assignments, experiments = sample_tables(devices=20, users=5, urls=1)
        env.write(assignments, experiments)
        live = env.publish().version
        rows = assignments.to_pylist()
        rows[3][column] = value
        env.write(pa.Table.from_pylist(rows, schema=assignments.schema), experiments)

        with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
            env.publish()

        assert env.reader().live_version() == live

    def test_duplicate_unit_experiment_rows_are_refused(self, env):
        assignments, experiments = sample_tables(devices=20, users=5, urls=1)
        env.write(pa.concat_tables([assignments, assignments.slice(0, 1)]), experiments)
        with pytest.raises(
            DataError, match=r"more than one row for one experiment, e\.g\. device_id='d00000000'"
        ):
            env.publish()


class TestInterruptedPublication:
    def test_killed_loader_leaves_live_version_serving_and_rerun_completes(self, env):
        env.write(*sample_tables(devices=500, users=10, urls=1))
        old = env.publish()
        reader = env.reader()
        before = reader.lookup("d00000001")
        # a new, bigger source; a throttled loader gets killed half-way through writing it
        flipped = [dict(e) for e in SAMPLE_EXPERIMENTS]
        flipped[0] = flipped[0] | {"variants": list(reversed(flipped[0]["variants"]))}
        assignments, experiments = sample_tables(8000, 10, 1, experiments=flipped)
        env.write(assignments, experiments)
        proc = subprocess.Popen(
            [sys.executable, "-m", "lookup_loader", "--prefix", env.prefix, "publish",
             "--assignments", env.assignments, "--experiments", env.experiments,
             "--publications", env.publications, "--max-units-per-s", "3000", "--writers", "1"],
            cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        client = env.redis()
        ks = KeySpace(env.prefix)
        writing = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and writing is None:
            for raw in client.zrange(ks.versions, 0, -1):
                ver = raw.decode()
                if ver != old.version and client.hlen(ks.bucket_prefix(ver, "device_id") + "0"):
                    writing = ver
            time.sleep(0.05)
        assert writing is not None, proc.communicate(timeout=5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        assert client.hget(ks.meta(writing), "state") == b"writing"
        assert reader.live_version() == old.version
        assert reader.lookup("d00000001") == before

        rerun = env.publish()

        assert (rerun.version, rerun.state, rerun.previous_version) == (
            writing,
            "live",
            old.version,
        )
        expected = served_pairs(assignments, stopped={"old_banner"})
        got = reader.lookup_many([(f"d{i:08d}", None, None) for i in range(8000)])
        assert [experiment_pairs(a) for a in got] == [
            expected[("device_id", f"d{i:08d}")] for i in range(8000)
        ]


class TestFastPathInvalidation:
    def test_removes_one_unit_from_one_experiment_now_and_survives_republication(self, env):
        assignments, experiments = sample_tables(devices=200, users=50, urls=1)
        env.write(assignments, experiments)
        env.publish()
        reader = env.reader()
        both = reader.lookup("d00000005", "u00000005")
        assert {"checkout_button", "feed_ranking"} <= {e for e, _ in experiment_pairs(both)}

        assert invalidate(
            env.settings, "device_id", "d00000005", "checkout_button", prefix=env.prefix
        )

        after = experiment_pairs(reader.lookup("d00000005", "u00000005"))
        assert {e for e, _ in after} == {"feed_ranking"}
        assert experiment_pairs(reader.lookup("d00000006"))  # other units untouched
        # a new publication of a new snapshot with the same content keeps the removal
        env.write(assignments, experiments)
        republished = env.publish()
        assert republished.tombstones_applied == 1
        assert experiment_pairs(reader.lookup("d00000005")) == set()
        # restore: back with the next publication
        assert restore(env.settings, "device_id", "d00000005", "checkout_button", prefix=env.prefix)
        env.write(assignments, experiments)
        env.publish()
        assert {e for e, _ in experiment_pairs(reader.lookup("d00000005"))} == {"checkout_button"}

    def test_invalidating_an_unknown_assignment_reports_false(self, env):
        env.write(*sample_tables(devices=20, users=5, urls=1))
        env.publish()
        assert not invalidate(
            env.settings, "device_id", "nobody", "checkout_button", prefix=env.prefix
        )
        with pytest.raises(DataError, match="unit_type 'email'"):
            invalidate(env.settings, "email", "x", "checkout_button", prefix=env.prefix)


class TestAuth:
    def test_no_password_is_refused(self, redis_server):
        from strata.stack import redis_client

        with pytest.raises(redis.AuthenticationError):
            redis_client(redis_server, password="").ping()
        no_secret = Settings(
            home=redis_server.home,
            redis_writer_password="wrong-password",
            redis_reader_password="wrong-password",
        )
        with pytest.raises(StackError, match="refused our credentials"):
            RespConnection(no_secret)
        with pytest.raises(StackError, match="refused"):
            LookupClient(no_secret).lookup("d1")

    def test_publish_with_wrong_password_fails_clearly(self, env):
        env.write(*sample_tables(devices=10, users=1, urls=1))
        wrong = Settings(home=env.settings.home, redis_writer_password="nope")
        with pytest.raises(StackError, match="refused our credentials"):
            publish(
                wrong,
                prefix=env.prefix,
                assignments_table=env.assignments,
                experiments_table=env.experiments,
                publications_table=None,
            )


def test_cli_status_and_invalidate(env):
    env.write(*sample_tables(devices=30, users=5, urls=1))
    version = env.publish().version
    run = [sys.executable, "-m", "lookup_loader", "--prefix", env.prefix]
    status = subprocess.run([*run, "status"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert f'"live": "{version}"' in status.stdout
    bad = subprocess.run(
        [*run, "invalidate", "device_id", "a\tb", "checkout_button"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "contains a control character" in bad.stderr


class TestEncoding:
    def test_vectorised_crc32_equals_zlib(self):
        import zlib

        from lookup_loader.loader import crc32_array

        ids = ["a", "d00000001", "héllo wörld", "x" * 512, "plumless", "buckeroo", "ünï"]
        got = crc32_array(pa.array(ids)).tolist()
        assert got == [zlib.crc32(u.encode()) for u in ids]
        assert crc32_array(pa.array(ids).slice(2, 3)).tolist() == got[2:5]
        assert crc32_array(pa.array([], pa.string())).tolist() == []

    def test_units_sharing_a_crc32_are_kept_apart(self, env):
        """'plumless' and 'buckeroo' have the same crc32: same bucket, interleaved after the
        integer sort; each must still get exactly its own assignments."""
        from lookup_loader.loader import crc32_array

        first, second = crc32_array(pa.array(["plumless", "buckeroo"])).tolist()
        assert first == second  # the case under test: the loader buckets them together
        assignments, experiments = sample_tables(devices=50, users=5, urls=1)
        rows = assignments.to_pylist()
        devices = [r for r in rows if r["unit_type"] == "device_id"]
        one = devices[0]
        other = next(r for r in devices if r["experiment_id"] != one["experiment_id"])
        extra = [
            one | {"unit_id": "plumless"},
            other | {"unit_id": "buckeroo"},
            other | {"unit_id": "plumless"},
            one | {"unit_id": "buckeroo", "variant_id": one["variant_id"]},
        ]
        table = pa.Table.from_pylist(rows + extra, schema=assignments.schema)
        env.write(table, experiments)
        env.publish()
        expected = served_pairs(table, stopped={"old_banner"})
        reader = env.reader()
        for uid in ("plumless", "buckeroo"):
            assert experiment_pairs(reader.lookup(uid)) == expected[("device_id", uid)]
