"""The device-register endpoint as deployed: uvicorn started by scripts/endpoint.sh, real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr

from lookup_loader.loader import publish
from lookup_loader.sample import sample_tables, write_tables
from strata.config import Settings
from strata.lookup import LookupClient
from strata_apps.endpoint import MAX_BODY_BYTES, create_app

ROOT = Path(__file__).resolve().parents[2]
PORT = int(os.environ["STRATA_ENDPOINT_PORT"])  # set by conftest: the test Redis port + 1700
URL = "https://app.example.com/p/3"


@pytest.fixture(scope="module")
def server(redis_server):
    tag = uuid.uuid4().hex[:8]
    prefix = f"e{tag}"
    names = {"assignments_table": f"le_{tag}_a", "experiments_table": f"le_{tag}_e"}
    write_tables(
        redis_server,
        *sample_tables(devices=300, users=100, urls=10),
        assignments_table=names["assignments_table"],
        experiments_table_name=names["experiments_table"],
    )
    publish(redis_server, prefix=prefix, publications_table=None, **names)
    env = os.environ | {"STRATA_ENDPOINT_PORT": str(PORT), "STRATA_LOOKUP_PREFIX": prefix}
    script = ROOT / "scripts" / "endpoint.sh"
    subprocess.run([script, "start"], check=True, capture_output=True, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=10) as client:
            yield client, LookupClient(redis_server, prefix=prefix), redis_server
    finally:
        subprocess.run([script, "stop"], check=True, capture_output=True, env=env)


def envelope(did="d00000002", userid="u00000002", url=URL, msgid="m-1"):
    return {
        "id": "api.device.register",
        "ver": "1.0",
        "ts": "2026-11-23T10:00:00Z",
        "params": {"msgid": msgid},
        "request": {
            "did": did,
            "uaspec": {"agent": "app", "ver": "5.1", "system": "ios", "platform": "ios", "raw": ""},
            "channel": "c1",
            "fcmToken": "",
            "producer": "app.ios",
            "dspec": {"os": "ios 17", "screen": {"w": 1170, "h": 2532}},
            "ext": {"userid": userid, "url": url},
        },
    }


def exposure_lines(home: Path) -> list[dict]:
    files = sorted((home / "landing" / "exposures").glob("date=*/*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


class TestRegister:
    def test_answers_the_seed_envelope_with_the_lookup_actions_and_logs_exposures(self, server):
        client, reader, settings = server
        before = exposure_lines(settings.home)  # other tests may have logged already

        response = client.post("/v1/device/register/d00000002", json=envelope())

        assert response.status_code == 200
        body = response.json()
        assert body["responseCode"] == "OK"
        assert body["params"]["status"] == "successful"
        assert body["params"]["msgid"] == "m-1"
        uuid.UUID(body["params"]["resmsgid"])
        actions = body["result"]["actions"]
        assert actions == reader.lookup("d00000002", "u00000002", URL)
        served = [
            (a["data"]["id"], a["data"]["variantId"]) for a in actions if a["type"] == "experiment"
        ]
        assert {e for e, _ in served} == {"checkout_button", "feed_ranking", "landing_copy"}
        events = [e for e in exposure_lines(settings.home) if e not in before]
        assert [(e["eid"], e["edata"]["type"]) for e in events] == [("LOG", "api_access")] * 3
        assert sorted(
            (p["experimentId"], p["variantId"], p["deviceId"], p["userId"], p["url"])
            for p in (e["edata"]["params"][0] for e in events)
        ) == sorted((x, v, "d00000002", "u00000002", URL) for x, v in served)
        assert all(e["edata"]["params"][0]["title"] == "experiment" for e in events)

    def test_unknown_device_gets_no_actions_and_no_events(self, server):
        client, _, settings = server
        before = len(exposure_lines(settings.home))
        response = client.post("/v1/device/register/nobody", json={"request": {}})
        assert response.status_code == 200
        assert response.json()["result"]["actions"] == []
        assert len(exposure_lines(settings.home)) == before

    def test_health(self, server):
        client, reader, _ = server
        assert client.get("/healthz").json() == {
            "status": "ok",
            "live_version": reader.live_version(),
        }


class TestBadInput:
    @pytest.mark.parametrize(
        ("path", "body", "status", "err", "loc"),
        [
            ("d1", {"request": {"did": 5}}, 400, "INVALID_REQUEST", "body.request.did"),
            ("d1", {"request": {"ext": {"userid": ["u"]}}}, 400, "INVALID_REQUEST",
             "body.request.ext.userid"),
            ("d1", {"request": {}, "surprise": 1}, 400, "INVALID_REQUEST", "body.surprise"),
            ("d1", {"id": "x"}, 400, "INVALID_REQUEST", "body.request"),
            ("d1", [], 400, "INVALID_REQUEST", "body"),
            ("d1", {"request": {"did": "d2"}}, 400, "DEVICE_ID_MISMATCH", "body.request.did"),
            ("bad%20id", {"request": {}}, 400, "INVALID_DEVICE_ID", "path.device_id"),
            ("d1", {"request": {"ext": {"url": "javascript:alert(1)"}}}, 400, "INVALID_URL",
             "body.request.ext.url"),
            ("d1", {"request": {"ext": {"userid": "a\u0000b"}}}, 400, "INVALID_USER_ID",
             "body.request.ext.userid"),
            ("d1", {"request": {"ext": {"userid": "u" * 600}}}, 400, "INVALID_REQUEST",
             "body.request.ext.userid"),
        ],
    )  # fmt: skip
    def test_is_a_clear_client_error(self, server, path, body, status, err, loc):
        response = server[0].post(f"/v1/device/register/{path}", json=body)
        assert response.status_code == status
        payload = response.json()
        assert (payload["responseCode"], payload["params"]["status"], payload["params"]["err"]) == (
            "CLIENT_ERROR",
            "failed",
            err,
        )
        assert loc in [e["loc"] for e in payload["result"]["errors"]]

    def test_malformed_json(self, server):
        response = server[0].post("/v1/device/register/d1", content=b'{"request": {')
        assert response.status_code == 400
        assert "Invalid JSON" in response.json()["params"]["errmsg"]

    def test_huge_bodies_are_refused_declared_or_streamed(self, server):
        client = server[0]
        huge = json.dumps({"request": {"dspec": {"x": "a" * (MAX_BODY_BYTES + 1)}}}).encode()
        declared = client.post("/v1/device/register/d1", content=huge)
        streamed = client.post(
            "/v1/device/register/d1",
            content=(huge[i : i + 4096] for i in range(0, len(huge), 4096)),  # chunked, no length
        )
        assert (declared.status_code, streamed.status_code) == (413, 413)
        assert streamed.json()["params"]["err"] == "BODY_TOO_LARGE"
        assert client.post("/v1/device/register/d1", json=envelope(did="d1")).status_code == 200


FINITE = st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "did": JSON | st.text(max_size=200),
        "ext": st.fixed_dictionaries({}, optional={"userid": JSON, "url": JSON | st.text()}) | JSON,
        "uaspec": JSON,
        "dspec": JSON,
        "channel": JSON,
    },
)


class TestFuzz:
    @hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        device_id=st.text(min_size=1, max_size=300),
        body=st.one_of(
            JSON,
            st.fixed_dictionaries({"request": FIELDS}, optional={"params": JSON, "id": JSON}),
        ),
    )
    def test_no_input_gives_a_server_error(self, server, device_id, body):
        path = "/v1/device/register/" + urllib.parse.quote(device_id, safe="")
        response = server[0].post(path, json=body)
        assert 200 <= response.status_code < 500, response.text
        if response.status_code in (400, 413):
            assert response.json()["params"]["status"] == "failed"

    @hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw=st.binary(max_size=3000))
    def test_raw_bytes_never_give_a_server_error(self, server, raw):
        response = server[0].post("/v1/device/register/d1", content=raw)
        assert response.status_code in (200, 400)


class TestRedisTrouble:
    @pytest.mark.parametrize(
        "change", [{"redis_reader_password": "wrong"}, {"redis_url": "redis://127.0.0.1:9/0"}]
    )
    def test_unreachable_or_refused_redis_is_a_503(self, redis_server, change):
        settings = Settings(home=redis_server.home, **change)
        app = create_app(settings, prefix="none")
        with TestClient(app) as client:  # in-process: this server's Redis is deliberately wrong
            response = client.post("/v1/device/register/d1", json={"request": {}})
            health = client.get("/healthz")
            alive = client.get("/livez")
        reason = "auth" if "redis_reader_password" in change else "unreachable"
        assert_503(response, reason)
        assert_503(health, reason)
        assert (alive.status_code, alive.json()["status"]) == (200, "alive")


def test_exposure_lines_are_byte_for_byte_the_json_of_exposure_event():
    from strata_apps.endpoint import exposure_event, exposure_lines

    served = [("exp_1", 3), ("checkout_button", 0)]
    url = 'https://a.example/p?q=%20é&x="1"'
    text = exposure_lines("d-1", 'u"7\\', url, served, "3f2a", 1763900000123).decode()
    lines = text.splitlines()
    assert len(lines) == 2
    assert text.endswith("\n")
    for line, (exp, variant) in zip(lines, served, strict=True):
        event = exposure_event("d-1", 'u"7\\', url, exp, variant, "3f2a", 1763900000123)
        event["mid"] = json.loads(line)["mid"]
        assert line == json.dumps(event, separators=(",", ":"))
    assert exposure_lines("d-1", "", "", [], "v", 0) == b""


# --- every Redis failure is a 503 with Retry-After, never a 500 nor a silent "no experiments" ---


def served_on(server) -> str:
    """Publish a small version to a test-owned Redis; returns its prefix."""
    tag = uuid.uuid4().hex[:8]
    names = {"assignments_table": f"lx_{tag}_a", "experiments_table": f"lx_{tag}_e"}
    write_tables(
        server.settings,
        *sample_tables(devices=50, users=10, urls=2),
        assignments_table=names["assignments_table"],
        experiments_table_name=names["experiments_table"],
    )
    publish(server.settings, prefix=f"x{tag}", publications_table=None, **names)
    return f"x{tag}"


def ask(http: TestClient):
    return http.post("/v1/device/register/d00000003", json={"request": {}})


def assert_503(response, reason: str, err: str = "LOOKUP_UNAVAILABLE") -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    if response.request.url.path == "/healthz":
        assert (response.json()["status"], response.json()["reason"]) == ("unavailable", reason)
    else:
        body = response.json()
        assert (body["params"]["err"], body["result"]["reason"]) == (err, reason)


class TestRedisFailures:
    """One test per class of Redis failure, each produced by a real redis-server."""

    def test_busy_script(self, private_redis):
        import threading

        server = private_redis()
        server.start()
        prefix = served_on(server)
        admin = server.admin()
        admin.config_set("busy-reply-threshold", 100)  # ms before others get -BUSY
        spin = "local t = redis.call('TIME')[1] while redis.call('TIME')[1] - t < 5 do end"
        runner = threading.Thread(target=lambda: server.admin().eval(spin, 0), daemon=True)
        with TestClient(create_app(server.settings, prefix=prefix)) as http:
            assert ask(http).status_code == 200
            runner.start()
            time.sleep(0.4)
            assert_503(ask(http), "busy")
            assert_503(http.get("/healthz"), "busy")
            admin.script_kill()
            runner.join(timeout=10)
            assert ask(http).status_code == 200

    def test_loading_after_a_restart(self, private_redis):
        # Replaying the dataset is slowed per key so that requests arrive while Redis loads.
        server = private_redis("key-load-delay 100\nloading-process-events-interval-bytes 1024\n")
        server.start()
        prefix = served_on(server)
        admin = server.admin()
        pipe = admin.pipeline(transaction=False)
        for i in range(30_000):
            pipe.set(f"{prefix}:filler:{i}", "x")
        pipe.execute()
        admin.bgrewriteaof()  # the keys go into the RDB preamble, whose load the delay slows
        while (
            admin.info("persistence")["aof_rewrite_in_progress"]
            or admin.info("persistence")["aof_rewrite_scheduled"]
        ):
            time.sleep(0.05)
        server.stop()
        starting = server.start(wait=False)
        try:
            with TestClient(create_app(server.settings, prefix=prefix)) as http:
                seen = []
                while starting.poll() is None and "loading" not in seen:
                    response = ask(http)
                    if response.status_code == 503:
                        seen.append(response.json()["result"]["reason"])
                        assert_503(response, seen[-1])
                    time.sleep(0.02)
                assert "loading" in seen, seen
                assert_503(http.get("/healthz"), "loading")
                starting.wait(timeout=60)
                assert ask(http).status_code == 200
        finally:
            starting.wait(timeout=60)

    def test_timeout_of_a_stalled_server(self, private_redis):
        import signal

        server = private_redis()
        server.start()
        prefix = served_on(server)
        pid = int(server.pidfile.read_text())
        with TestClient(create_app(server.settings, prefix=prefix)) as http:
            assert ask(http).status_code == 200
            os.kill(pid, signal.SIGSTOP)  # alive, accepting connections, answering nothing
            try:
                assert_503(ask(http), "timeout")
            finally:
                os.kill(pid, signal.SIGCONT)
            assert ask(http).status_code == 200

    def test_connection_refused(self, private_redis):
        server = private_redis()
        server.start()
        prefix = served_on(server)
        with TestClient(create_app(server.settings, prefix=prefix)) as http:
            assert ask(http).status_code == 200
            server.stop()
            assert_503(ask(http), "unreachable")
            assert_503(http.get("/healthz"), "unreachable")

    def test_permission_refused(self, private_redis):
        server = private_redis()
        server.start()
        prefix = served_on(server)
        server.admin().acl_setuser("nobody", enabled=True, passwords=["+nobody-pw"],
                                   commands=["-@all"])  # fmt: skip
        settings = server.settings.model_copy(
            update={"redis_reader_user": "nobody", "redis_reader_password": SecretStr("nobody-pw")}
        )
        with TestClient(create_app(settings, prefix=prefix)) as http:
            assert_503(ask(http), "no_permission")

    def test_replica_without_its_master(self, private_redis):
        server = private_redis()
        server.start()
        prefix = served_on(server)
        admin = server.admin()
        with TestClient(create_app(server.settings, prefix=prefix)) as http:
            assert ask(http).status_code == 200
            admin.config_set("replica-serve-stale-data", "no")
            admin.replicaof("127.0.0.1", server.port + 7)  # nothing listens there
            try:
                assert_503(ask(http), "master_down")
            finally:
                admin.replicaof("NO", "ONE")
            assert ask(http).status_code == 200

    def test_any_other_error_reply(self, private_redis):
        server = private_redis()
        server.start()
        prefix = served_on(server)
        admin = server.admin()
        live = admin.get(f"{prefix}:live").decode()
        with TestClient(create_app(server.settings, prefix=prefix)) as http:
            admin.rename(f"{prefix}:ver:{live}", f"{prefix}:saved")
            admin.set(f"{prefix}:ver:{live}", "not a hash")  # the script's HMGET: WRONGTYPE
            try:
                assert_503(ask(http), "error")
            finally:
                admin.rename(f"{prefix}:saved", f"{prefix}:ver:{live}")
            assert ask(http).status_code == 200

    def test_out_of_memory_does_not_stop_reads(self, private_redis):
        """OOM refuses writes only: the read-only lookup keeps answering (the loader's side of
        OOM is tested in tests/lookup_loader/test_faults.py)."""
        server = private_redis()
        server.start()
        prefix = served_on(server)
        admin = server.admin()
        with TestClient(create_app(server.settings, prefix=prefix)) as http:
            before = ask(http).json()["result"]["actions"]
            admin.config_set("maxmemory", 1)
            try:
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    admin.set(f"{prefix}:probe", "x")
                response = ask(http)
            finally:
                admin.config_set("maxmemory", 0)
            assert (response.status_code, response.json()["result"]["actions"]) == (200, before)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"BUSY Redis is busy running a script. You can only call SCRIPT KILL", "busy"),
        (b"LOADING Redis is loading the dataset in memory", "loading"),
        (b"OOM command not allowed when used memory > 'maxmemory'.", "out_of_memory"),
        (b"READONLY You can't write against a read only replica.", "read_only"),
        (b"MASTERDOWN Link with MASTER is down", "master_down"),
        (b"NOPERM this user has no permissions to run the 'evalsha' command", "no_permission"),
        (b"WRONGPASS invalid username-password pair or user is disabled.", "auth"),
        (b"NOAUTH Authentication required.", "auth"),
        (b"ERR Error running script (call to f_1): @user_script:5: -OOM command not allowed",
         "out_of_memory"),
        (b"WRONGTYPE Operation against a key holding the wrong kind of value", "error"),
    ],
)  # fmt: skip
def test_every_error_reply_has_a_reason_and_a_retry_after(reply, reason):
    """Error replies as redis-py's own parser turns them into exceptions."""
    from redis._parsers import _RESP2Parser

    from strata.lookup import RETRY_AFTER_S, redis_failure, unavailable

    exc = _RESP2Parser(socket_read_size=65536).parse_error(reply.decode())
    assert redis_failure(exc) == reason
    assert unavailable(exc).retry_after == RETRY_AFTER_S[reason] >= 1
