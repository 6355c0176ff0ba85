"""The reader client against a real redis-server: priority order, merged params, atomic flips."""

from __future__ import annotations

import threading
import time
import uuid

import pyarrow as pa
import pytest

from lookup_loader.loader import publish
from lookup_loader.sample import (
    assignment_rows,
    assignments_schema,
    experiments_table,
    write_tables,
)
from strata.assignment import Assignment, service_view
from strata.errors import DataError
from strata.lookup import LookupClient, NoLiveVersionError


class Env:
    def __init__(self, settings) -> None:
        tag = uuid.uuid4().hex[:8]
        self.settings, self.prefix = settings, f"r{tag}"
        self.names = {"assignments_table": f"lr_{tag}_a", "experiments_table": f"lr_{tag}_e"}

    def write(self, rows: list[dict], experiments: list[dict]) -> None:
        write_tables(
            self.settings,
            pa.Table.from_pylist(rows, schema=assignments_schema()),
            experiments_table(experiments),
            assignments_table=self.names["assignments_table"],
            experiments_table_name=self.names["experiments_table"],
        )

    def publish(self):
        return publish(self.settings, prefix=self.prefix, publications_table=None, **self.names)

    def reader(self) -> LookupClient:
        return LookupClient(self.settings, prefix=self.prefix)


@pytest.fixture
def env(redis_server):
    return Env(redis_server)


def experiment(exp_id, layer, priority, unit_type, service, variants, name=None):
    return {
        "experiment_id": exp_id,
        "name": name or exp_id.title(),
        "layer_id": layer,
        "layer_priority": priority,
        "unit_type": unit_type,
        "service": service,
        "status": "running",
        "deployment_key": f"key-{exp_id}",
        "variants": variants,
    }


def pinned(exp: dict, unit_id: str, variant: int) -> dict:
    """One assignment row with the variant chosen by the test, not by the slot."""
    row = assignment_rows(exp, [unit_id])[0]
    name, params = exp["variants"][variant]
    row |= {"variant_id": variant, "variant_name": name, "is_control": variant == 0}
    row["params"] = assignment_rows({**exp, "variants": [(name, params)]}, [unit_id])[0]["params"]
    return row


class TestPriorityOrder:
    """Seed 004 open question 2: user_id before device_id before url, per experiment and layer."""

    EXP_USER = experiment(
        "exp_user", "L1", 100, "user_id", "svc", [("on", {"a": {"x": 1}, "u": 1})]
    )
    EXP_DEVICE = experiment("exp_device", "L1", 100, "device_id", "svc", [("on", {"d": 1})])
    EXP_URL = experiment("exp_url", "L2", 300, "url", "svc", [("on", {"a": {"y": 2}, "u": 3})])
    BOTH = experiment(
        "both", "L3", 10, "device_id", "svc",
        [("control", {"a": {"x": 0, "z": 9}}), ("treat", {"a": {"x": 5, "z": 8}})],
    )  # fmt: skip
    URL = "https://shop.example.com/cart"

    @pytest.fixture
    def published(self, env):
        rows = [
            pinned(self.EXP_USER, "u1", 0),
            pinned(self.EXP_DEVICE, "d1", 0),
            pinned(self.EXP_URL, self.URL, 0),
            pinned(self.BOTH, "d1", 0),
            pinned(self.BOTH, "u1", 1) | {"unit_type": "user_id"},  # same experiment via user
        ]
        env.write(rows, [self.EXP_USER, self.EXP_DEVICE, self.EXP_URL, self.BOTH])
        env.publish()
        return env.reader()

    def test_all_three_match(self, published):
        actions = published.lookup("d1", "u1", self.URL)

        got = [(a["type"], a["data"].get("id"), a["data"].get("variantId")) for a in actions]
        assert got == [
            ("experiment", "exp_url", 0),  # layer priority 300 first
            ("experiment", "exp_user", 0),  # L1: the user's experiment beats the device's
            ("experiment", "both", 1),  # via user_id, not device_id's variant 0
            ("configUpdate", None, None),
        ]
        # params merged from the lowest layer priority up: both(10) < exp_user(100) < exp_url(300)
        assert actions[-1]["data"] == {
            "service": "svc",
            "params": {"a": {"x": 1, "z": 8, "y": 2}, "u": 3},
        }
        assert actions[0]["data"] | {"params": None} == {
            "id": "exp_url",
            "name": "Exp_Url",
            "startDate": "2026-01-01",
            "endDate": "2099-12-31",
            "key": "key-exp_url",
            "variantId": 0,
            "variantName": "on",
            "params": None,
        }

    def test_device_only(self, published):
        got = [
            (a["data"]["id"], a["data"]["variantId"])
            for a in published.lookup("d1")
            if a["type"] == "experiment"
        ]
        assert got == [("exp_device", 0), ("both", 0)]

    def test_url_is_normalised_and_empty_strings_mean_absent(self, published):
        got = published.lookup("nobody", "", "HTTPS://Shop.Example.COM/cart#reviews")
        assert [a["data"].get("id") for a in got] == ["exp_url", None]

    def test_answers_are_the_callers_own(self, published):
        first = published.lookup("d1")
        first[0]["data"]["params"]["d"] = "mutated by the caller"
        first.append({"type": "junk"})
        assert published.lookup("d1")[0]["data"]["params"] == {"d": 1}
        assert len(published.lookup("d1")) == len(first) - 1

    def test_batch_equals_single(self, published):
        requests = [("d1", "u1", self.URL), ("d1", None, None), ("zz", None, None)]
        assert published.lookup_many(requests) == [published.lookup(*r) for r in requests]

    def test_a_batch_of_many_pipelined_script_calls_equals_single(self, published, monkeypatch):
        """Split into script calls of 2 units (pipelined on one connection), with requests of
        no unit alone in a call: the same answers, each the caller's own, gc as it was."""
        import gc

        import strata.lookup

        monkeypatch.setattr(strata.lookup, "BATCH_UNITS", 2)
        requests = [
            ("d1", "u1", self.URL),
            ("", "", ""),
            (None, None, None),
            ("d1", None, None),
            ("zz", "u1", None),
            ("", None, ""),
        ] * 3
        single = [published.lookup(*r) for r in requests]
        assert published.lookup_many(requests) == single
        answers = published.answer_many(requests)
        assert [a.actions for a in answers] == single
        assert {a.version for a in answers if a.actions} == {published.answer("d1").version}
        batch = published.lookup_many(requests)
        batch[0][0]["data"]["params"]["mutated"] = True
        assert published.lookup_many(requests) == single
        assert gc.isenabled()
        gc.disable()
        try:
            published.lookup_many(requests)
            assert not gc.isenabled(), "a caller's disabled gc stays disabled"
        finally:
            gc.enable()


class TestParamsMerge:
    def test_unscoped_layers_apply_to_every_service_and_layer_id_breaks_ties(self, env):
        exps = [
            experiment("a", "la", 100, "device_id", "checkout", [("on", {"x": 1, "n": {"p": 1}})]),
            experiment("b", "lb", 200, "device_id", None, [("on", {"x": 2, "y": 1})]),
            experiment("c", "lc", 50, "device_id", "search", [("on", {"z": 1, "x": 0})]),
            experiment("d", "ld", 100, "device_id", "checkout", [("on", {"n": {"q": 2}, "w": 1})]),
            experiment("e", "le", 100, "device_id", "checkout", [("on", {"w": 2})]),
        ]
        rows = [pinned(x, "dev", 0) for x in exps]
        env.write(rows, exps)
        env.publish()

        updates = [a["data"] for a in env.reader().lookup("dev") if a["type"] == "configUpdate"]

        assert updates == [
            {"service": None, "params": {"x": 2, "y": 1}},
            # a(100, la) < d(100, ld) < e(100, le) < b(200): e beats d on w, b beats a on x
            {"service": "checkout", "params": {"x": 2, "n": {"p": 1, "q": 2}, "w": 2, "y": 1}},
            {"service": "search", "params": {"z": 1, "x": 2, "y": 1}},
        ]
        # and the same as the assignment engine's reference merge (strata.assignment)
        fields = Assignment.__dataclass_fields__
        given = [Assignment(**{k: r[k] for k in fields if k in r}) for r in rows]
        view = service_view(given, ["checkout", "search"])
        assert {u["service"]: u["params"] for u in updates if u["service"]} == {
            service: v["parameters"] for service, v in view.items()
        }


class TestAnswers:
    def test_nothing_published_is_an_error_not_an_empty_answer(self, env):
        """No live version (never published, or a Redis that lost its data) must not look like
        "no experiments" to a client."""
        with pytest.raises(NoLiveVersionError, match="no lookup version is live") as caught:
            env.reader().lookup("d1", "u1")
        assert (caught.value.reason, caught.value.retry_after) == ("no_live_version", 30)
        with pytest.raises(NoLiveVersionError):
            env.reader().lookup_many([("d1", None, None)])
        assert env.reader().lookup_many([]) == []

    def test_a_live_pointer_without_its_version_is_no_live_version(self, env, redis_server):
        from strata.stack import redis_client

        redis_client(redis_server).set(f"{env.prefix}:live", "0badc0ffee")
        with pytest.raises(NoLiveVersionError, match="0badc0ffee, whose keys are gone"):
            env.reader().lookup("d1")
        with pytest.raises(NoLiveVersionError, match="whose keys are gone"):
            env.reader().serving_version()

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("bad\nid",), "device id 'bad\\\\nid' contains a control character"),
            (("d1", "u" * 600), "user id is longer than 512 bytes"),
            ((42,), "device id must be a non-empty string, got 42"),
        ],
    )
    def test_bad_ids_are_refused_with_the_field_named(self, env, args, message):
        with pytest.raises(DataError, match=message):
            env.reader().lookup(*args)

    def test_batch_requests_must_be_triples(self, env):
        with pytest.raises(ValueError, match=r"request 1 must be \(device_id, user_id, url\)"):
            env.reader().lookup_many([("d1", None, None), ("d2",)])


class TestFlip:
    def test_concurrent_readers_never_see_a_mixed_or_partial_answer(self, env):
        """Two experiments per unit; version A serves variant 0 of both, version B variant 1.

        Any answer mixing the two variants, naming the other version's experiment names, or
        holding fewer than two experiments would be a mixed or half-loaded read.
        """
        units = [f"dev{i:05d}" for i in range(1500)]
        variants = [("v0", {"k": 0}), ("v1", {"k": 1})]

        def source(flavour: int):
            exps = [
                experiment(e, f"layer_{e}", p, "device_id", None, variants, f"{e}@{flavour}")
                for e, p in (("alpha", 20), ("beta", 10))
            ]
            rows = [pinned(x, u, flavour) for x in exps for u in units]
            return rows, exps

        flavour_of_version = {}
        rows, exps = source(0)
        env.write(rows, exps)
        flavour_of_version[env.publish().version] = 0
        sources = {f: source(f) for f in (0, 1)}
        stop = threading.Event()
        bad: list = []
        seen_versions: set[str] = set()
        counts = [0]

        def read(seed: int) -> None:
            reader = env.reader()
            i = seed
            while not stop.is_set():
                i = (i * 7919 + 13) % len(units)
                if i % 5:
                    answers = [reader.answer(units[i])]
                else:
                    answers = reader.answer_many([(u, None, None) for u in units[i : i + 50]])
                if len({a.version for a in answers}) != 1:  # one batch call = one version
                    bad.append([a.version for a in answers])
                for ans in answers:
                    seen_versions.add(ans.version)
                    exp = [a["data"] for a in ans.actions if a["type"] == "experiment"]
                    picks = {(d["variantId"], d["name"].split("@")[1]) for d in exp}
                    expected = flavour_of_version.get(ans.version)
                    wrong = expected is not None and picks != {(expected, str(expected))}
                    if len(exp) != 2 or len(picks) != 1 or wrong:
                        bad.append((ans.version, exp))
                    counts[0] += 1

        threads = [threading.Thread(target=read, args=(s,)) for s in (1, 2, 3)]
        for t in threads:
            t.start()
        try:
            for flip in range(4):
                flavour = 1 - flip % 2
                env.write(*sources[flavour])
                result = env.publish()
                flavour_of_version[result.version] = flavour
                time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert bad == []
        assert counts[0] > 100
        assert len(seen_versions & set(flavour_of_version)) >= 3  # readers ran across the flips


class TestConnection:
    def test_a_killed_connection_or_flushed_script_cache_is_recovered(self, env):
        exp = experiment("alpha", "layer_a", 10, "device_id", None, [("v0", {"k": 0})])
        env.write([pinned(exp, "dev00001", 0)], [exp])
        env.publish()
        reader = env.reader()
        first = reader.lookup("dev00001")
        assert first
        from strata.stack import redis_client

        admin = redis_client(env.settings)  # the reader's own user may not kill or flush
        held = reader._local.conn  # the connection this thread's lookups go through
        held.send_command("CLIENT", "ID")
        assert admin.client_kill_filter(_id=held.read_response()) == 1
        assert reader.lookup("dev00001") == first
        admin.script_flush()
        assert reader.lookup("dev00001") == first

    def test_pipelined_batches_recover_a_killed_connection_or_flushed_script_cache(
        self, env, monkeypatch
    ):
        import strata.lookup

        monkeypatch.setattr(strata.lookup, "BATCH_UNITS", 3)
        exp = experiment("alpha", "layer_a", 10, "device_id", None, [("v0", {"k": 0})])
        units = [f"dev{i:05d}" for i in range(10)]
        env.write([pinned(exp, u, 0) for u in units], [exp])
        env.publish()
        reader = env.reader()
        requests = [(u, None, None) for u in [*units, "nobody"]]
        first = reader.lookup_many(requests)
        assert first == [reader.lookup(*r) for r in requests]
        assert first[0]
        assert not first[-1]
        from strata.stack import redis_client

        admin = redis_client(env.settings)
        held = reader._local.conn
        held.send_command("CLIENT", "ID")
        assert admin.client_kill_filter(_id=held.read_response()) == 1
        assert reader.lookup_many(requests) == first
        admin.script_flush()
        assert reader.lookup_many(requests) == first
        admin.script_flush()
        held = reader._local.conn
        held.send_command("CLIENT", "ID")
        assert admin.client_kill_filter(_id=held.read_response()) == 1
        assert reader.lookup_many(requests) == first  # both at once


ANSWER = [
    {"type": "experiment", "data": {"id": "e", "variantId": 1, "params": {"a": {"b": [1]}}}},
    {"type": "configUpdate", "data": {"service": None, "params": {"x": 2.5, "y": True}}},
]


class TestCopier:
    """Pure: the memo's copies of an answer (``lookup_many``'s per-request copy)."""

    def test_each_copy_is_new_and_equal(self):
        from strata.lookup import copier

        make = copier(ANSWER)
        first, second = make(), make()
        assert first == second == ANSWER
        first[0]["data"]["params"]["a"]["b"].append(2)
        first[1]["data"]["params"]["z"] = 1
        first.append({"type": "junk"})
        assert make() == ANSWER
        assert second == ANSWER

    def test_same_shape_shares_one_compiled_maker(self):
        from strata import lookup

        other = [
            {
                "type": "experiment",
                "data": {"id": "f", "variantId": 0, "params": {"a": {"b": [7]}}},
            },
            {"type": "configUpdate", "data": {"service": "s", "params": {"x": 1, "y": None}}},
        ]
        assert lookup.copier(ANSWER).func is lookup.copier(other).func
        assert lookup.copier(other)() == other

    @pytest.mark.parametrize(
        "value",
        [
            [],
            {},
            "text",
            [
                [
                    [
                        [
                            [
                                [
                                    [
                                        [
                                            [
                                                [
                                                    [
                                                        [
                                                            [
                                                                [
                                                                    [
                                                                        [
                                                                            [
                                                                                [
                                                                                    [
                                                                                        [
                                                                                            [
                                                                                                [
                                                                                                    [
                                                                                                        [
                                                                                                            [
                                                                                                                [
                                                                                                                    [
                                                                                                                        [
                                                                                                                            [
                                                                                                                                [
                                                                                                                                    [
                                                                                                                                        [
                                                                                                                                            [
                                                                                                                                                [
                                                                                                                                                    [
                                                                                                                                                        [
                                                                                                                                                            [
                                                                                                                                                                [
                                                                                                                                                                    [
                                                                                                                                                                        [
                                                                                                                                                                            [
                                                                                                                                                                                "deep"
                                                                                                                                                                            ]
                                                                                                                                                                        ]
                                                                                                                                                                    ]
                                                                                                                                                                ]
                                                                                                                                                            ]
                                                                                                                                                        ]
                                                                                                                                                    ]
                                                                                                                                                ]
                                                                                                                                            ]
                                                                                                                                        ]
                                                                                                                                    ]
                                                                                                                                ]
                                                                                                                            ]
                                                                                                                        ]
                                                                                                                    ]
                                                                                                                ]
                                                                                                            ]
                                                                                                        ]
                                                                                                    ]
                                                                                                ]
                                                                                            ]
                                                                                        ]
                                                                                    ]
                                                                                ]
                                                                            ]
                                                                        ]
                                                                    ]
                                                                ]
                                                            ]
                                                        ]
                                                    ]
                                                ]
                                            ]
                                        ]
                                    ]
                                ]
                            ]
                        ]
                    ]
                ]
            ],
            {"k": ("a", "tuple")},  # not JSON-shaped: copied through marshal
            {1: "int key"},
        ],
    )
    def test_any_value_marshal_can_copy(self, value):
        from strata.lookup import copier

        make = copier(value)
        assert make() == value
        if isinstance(value, list | dict):
            assert make() is not value


class TestBatchParsing:
    """Pure: ``lookup_many``'s inlined request parsing equals ``request_units``."""

    REQUESTS = (
        ("d1", None, None),
        ("d1", "u1", None),
        ("", "u1", ""),
        (None, None, None),
        ("", "", ""),
        ("d1", "u1", "HTTPS://Shop.Example.COM:443/cart#x"),
        ("é" * 128, None, None),  # 256 bytes: within the limit
        ("d" * 200, None, None),  # over 128 characters: checked the long way, still accepted
        ("d2", None, "https://x/p"),
    )

    def test_script_arguments_equal_the_units_of_each_request(self, monkeypatch):
        from strata import lookup
        from strata.keyspace import UNIT_CODES, unit_hash

        for batch_units in (1, 2, 3, 1000):
            monkeypatch.setattr(lookup, "BATCH_UNITS", batch_units)
            chunks = lookup.LookupClient._chunks(self.REQUESTS)
            expected = [lookup.request_units(*r) for r in self.REQUESTS]
            got_counts = [n for counts, args in chunks for n in counts or [1] * (len(args) // 3)]
            assert got_counts == [len(u) for u in expected]
            flat = [a for _, args in chunks for a in args]
            assert flat == [
                x
                for units in expected
                for t, uid in units
                for x in (UNIT_CODES[t], unit_hash(uid), uid)
            ]
            for counts, args in chunks:  # a call holds whole requests, at most BATCH_UNITS units
                assert len(args) <= 3 * max(batch_units, max(counts or [1]))

    @pytest.mark.parametrize(
        ("request_", "message"),
        [
            (("bad\nid", None, None), "device id 'bad\\\\nid' contains a control character"),
            (("d1", "u" * 600, None), "user id is longer than 512 bytes"),
            ((42, None, None), "device id must be a non-empty string, got 42"),
            (("d1", 0, None), "user id must be a non-empty string, got 0"),
            (("d1", "u\x7f", "https://x/"), "user id 'u\\\\x7f' contains a control character"),
            (
                ("d1", None, "https://x/a\nb"),
                "url 'https://x/a\\\\nb' contains a control character",
            ),
            ((None, None, 5), "url must be a non-empty string, got 5"),
            ((None, None, ["https://x/"]), "url must be a non-empty string, got \\['https"),
            ((None, None, "https://x/" + "p" * 600), "url is longer than 512 bytes"),
        ],
    )
    def test_bad_ids_are_refused_like_single_lookups(self, request_, message):
        from strata.lookup import LookupClient, request_units

        with pytest.raises(DataError, match=message):
            request_units(*request_)
        with pytest.raises(DataError, match=message):
            LookupClient._chunks([("ok", None, None), request_])

    def test_plain_id_is_check_unit_ids_fast_case(self):
        from strata.keyspace import MAX_UNIT_ID_BYTES, check_unit_id
        from strata.lookup import _PLAIN_ID

        short = MAX_UNIT_ID_BYTES // 4
        for text in ("a", "é" * short, "x" * short, "😀" * short):
            assert _PLAIN_ID(text)
            assert check_unit_id(text) == text
        for text in ("", "x" * (short + 1), "a\nb", "\x00", "a\x7f", "tab\there"):
            assert not _PLAIN_ID(text)


class TestGcPause:
    def test_thresholds_are_restored_and_older_generations_paused_inside(self):
        import gc

        from strata.lookup import _gc_paused

        before = gc.get_threshold()
        gc.set_threshold(500, 7, 9)
        try:
            with _gc_paused():
                with _gc_paused():  # nested (another thread's batch): the last one out restores
                    assert gc.get_threshold()[0] == 500
                    assert min(gc.get_threshold()[1:]) > 10**6
                assert gc.get_threshold()[0] == 500
                assert min(gc.get_threshold()[1:]) > 10**6
            assert gc.get_threshold() == (500, 7, 9)
            gc.disable()
            with _gc_paused():
                assert gc.get_threshold() == (500, 7, 9), "a disabled collector is left alone"
            assert not gc.isenabled()
        finally:
            gc.enable()
            gc.set_threshold(*before)
