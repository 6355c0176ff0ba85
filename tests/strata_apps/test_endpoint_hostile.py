"""The device-register endpoint against a hostile network (issue 12, items 6 and 9).

In process (the app called through ASGI with raw scopes, real Redis): malformed urls are 400s,
malformed headers are 400s, nothing is a 500, every 503 carries ``Retry-After``, and a
derandomised hypothesis fuzz of urls, headers and bodies (10,000 cases) sees no 5xx; nor does
one of seed 002's `POST /experiment` bodies (3,000 cases), against the bundled definitions plus
seed 003's types (a url layer with a page pattern, a random layer, channel and region rules).

As deployed (``scripts/endpoint.sh``: nginx in front of uvicorn, real Redis, 127.0.0.1): 200
half-sent requests, slow bodies and slowloris dribblers are closed after the timeout while a
normal client is served meanwhile; requests past the limit and an app that does not answer get
503 with ``Retry-After``; ``start`` refuses a port another process holds instead of reporting it
ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from lookup_loader.loader import publish
from lookup_loader.sample import sample_tables, write_tables
from strata.config import Settings
from strata.definitions import bundled_path, load
from strata_apps.endpoint import MAX_BODY_BYTES, create_app

ROOT = Path(__file__).resolve().parents[2]
URL = "https://app.example.com/p/3"
REGISTER = "/v1/device/register/"


class Asgi:
    """Calls an ASGI app with a raw scope: headers and paths exactly as given, no client library
    in between to refuse or repair them. A failure that escapes the app with no response sent is
    what uvicorn would answer: a 500."""

    def __init__(self, app) -> None:
        self.app = app
        self.runner = asyncio.Runner()

    def close(self) -> None:
        self.runner.close()

    def post(self, path: bytes | str, body: bytes = b"", headers=None, chunks: int = 1):
        raw_path = path.encode("latin-1") if isinstance(path, str) else path
        if headers is None:
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode())]  # fmt: skip
        return self.runner.run(self._call(raw_path, body, headers, chunks))

    async def _call(self, raw_path: bytes, body: bytes, headers, chunks: int):
        from urllib.parse import unquote_to_bytes

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "root_path": "", "query_string": b"",
            "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"), "raw_path": raw_path,
            "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8090),
        }  # fmt: skip
        size = max(1, -(-len(body) // max(chunks, 1)))
        parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        messages = [
            {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
            for i, part in enumerate(parts)
        ]
        sent: dict = {"status": None, "headers": {}, "body": b""}

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                sent["headers"] = {k.lower(): v for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                sent["body"] += message.get("body", b"")

        try:
            await self.app(scope, receive, send)
        except Exception:  # re-raised after a response (ServerErrorMiddleware logs it so)
            if sent["status"] is None:
                sent["status"] = 500
        return sent


@pytest.fixture(scope="module")
def published(redis_server):
    """A sample lookup version published under a fresh prefix on the test Redis."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"h{tag}"
    names = {"assignments_table": f"lh_{tag}_a", "experiments_table": f"lh_{tag}_e"}
    write_tables(
        redis_server,
        *sample_tables(devices=300, users=100, urls=10),
        assignments_table=names["assignments_table"],
        experiments_table_name=names["experiments_table"],
    )
    publish(redis_server, prefix=prefix, publications_table=None, **names)
    return redis_server, prefix


@pytest.fixture(scope="module")
def asgi(published):
    settings, prefix = published
    driver = Asgi(create_app(settings, prefix=prefix))
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def asgi_types(published, tmp_path_factory):
    """The app with the bundled definitions plus seed 003's types (url, random, channel, region
    experiments: ``tests/data/experiment_types``), all live on today's date of 2026-11-15."""
    import datetime as dt

    folder = tmp_path_factory.mktemp("types")
    for f in [*bundled_path().glob("*.yaml"), ROOT / "tests/data/experiment_types/types.yaml"]:
        shutil.copy(f, folder / f.name)
    settings, prefix = published
    app = create_app(settings, prefix=prefix, definitions=load(folder),
                     today=lambda: dt.date(2026, 11, 15))  # fmt: skip
    driver = Asgi(app)
    yield driver
    driver.close()


def envelope(url=None, userid="u00000002", did="d00000002", **extra) -> dict:
    ext = {"userid": userid} | ({"url": url} if url is not None else {})
    return {"params": {"msgid": "m-1"}, "request": {"did": did, "ext": ext}} | extra


def post_json(asgi: Asgi, body, device: str = "d00000002"):
    return asgi.post(REGISTER + device, json.dumps(body).encode())


def assert_envelope_error(sent, status: int, err: str, loc: str | None = None) -> dict:
    assert sent["status"] == status, sent
    payload = json.loads(sent["body"])
    assert (payload["params"]["status"], payload["params"]["err"]) == ("failed", err)
    if loc:
        assert loc in [e["loc"] for e in payload["result"]["errors"]]
    return payload


#: Urls that raised inside urllib.parse (a 500) or passed as a lookup key on the old code.
MALFORMED_URLS = [
    "http://[::1",  # unclosed IPv6 bracket: ValueError("Invalid IPv6 URL")
    "https://[::1/cart",
    "http://example.com\uff0fcart",  # a full-width solidus in the host
    "http://ex\uff03ample.com/",  # a full-width number sign in the host
    "http://\uff45xample.com/",  # a full-width "e": the same host spelled two ways
    "http://example.com:99999/",  # port out of range
    "http://example.com:port/",  # port not a number
    "http://[zz]/",  # brackets around something that is no IP address
    "http://:80/",  # no host
    "https://exa mple.com/",  # a space
]


class TestMalformedUrl:
    @pytest.mark.parametrize("url", MALFORMED_URLS)
    def test_is_a_400_naming_the_field(self, asgi, url):
        sent = post_json(asgi, envelope(url))
        payload = assert_envelope_error(sent, 400, "INVALID_URL", "body.request.ext.url")
        assert payload["params"]["errmsg"].startswith("request.ext.url must be an absolute")

    @pytest.mark.parametrize(
        "url", ["https://app.example.com/p/3", "HTTPS://App.Example.com/p/3#top",
                "http://[::1]:8080/x", "https://exämple.com/ä?q=1"],
    )  # fmt: skip
    def test_well_formed_urls_are_served(self, asgi, url):
        sent = post_json(asgi, envelope(url))
        assert sent["status"] == 200, sent
        assert json.loads(sent["body"])["params"]["status"] == "successful"


class TestMalformedHeaders:
    @pytest.mark.parametrize("length", ["\xb2", "\xb9", "12a", "-1", " 5", "1" * 40, ""])
    def test_content_length_that_is_no_ascii_number_is_a_400(self, asgi, length):
        body = json.dumps(envelope()).encode()
        sent = asgi.post(REGISTER + "d1", body, [(b"content-length", length.encode("latin-1"))])
        assert_envelope_error(sent, 400, "INVALID_REQUEST")


class TestNoServerError:
    def test_an_unexpected_failure_is_a_503_with_retry_after(self, published, monkeypatch):
        from strata.lookup import LookupClient

        def broken(*_args, **_kwargs):
            raise RuntimeError("a bug nobody has found yet")

        monkeypatch.setattr(LookupClient, "answer", broken)
        settings, prefix = published
        driver = Asgi(create_app(settings, prefix=prefix))
        try:
            sent = post_json(driver, envelope(URL))
        finally:
            driver.close()
        payload = assert_envelope_error(sent, 503, "UNAVAILABLE")
        assert sent["headers"][b"retry-after"] == b"1"
        assert "RuntimeError" in payload["params"]["errmsg"]
        assert "nobody" not in payload["params"]["errmsg"]  # no internals in the answer

    def test_redis_unreachable_is_a_503_with_retry_after(self, redis_server):
        settings = Settings(home=redis_server.home, redis_url="redis://127.0.0.1:9/0")
        driver = Asgi(create_app(settings, prefix="none"))
        try:
            sent = post_json(driver, envelope())
        finally:
            driver.close()
        assert_envelope_error(sent, 503, "LOOKUP_UNAVAILABLE")
        from strata.lookup import RETRY_AFTER_S

        # the wait the lookup client suggests for an unreachable server
        assert sent["headers"][b"retry-after"] == str(RETRY_AFTER_S["unreachable"]).encode()


# --------------------------------------------------------------------------------------------
# Fuzz: urls, headers and bodies; 4,000 + 3,000 + 3,000 derandomised cases, no 5xx; seed 002's
# POST /experiment: 3,000 bodies
# --------------------------------------------------------------------------------------------

FUZZ = {"urls": 4000, "headers": 3000, "bodies": 3000, "experiment": 3000}
_FUZZ_SETTINGS = {"deadline": None, "derandomize": True, "database": None,
                  "suppress_health_check": list(HealthCheck)}  # fmt: skip

_TRICKY = "[]:@/?#%.\\ \t\n\x00\u3000\uff0f\uff03\uff1a\uff20\uff3b\uff3d\uff45\u2024\u200bé☃"
HOSTISH = st.text(alphabet=st.sampled_from("abcxyz019.-" + _TRICKY), max_size=24)
URLS = st.one_of(
    st.builds(
        lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
        st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "http:/", "//", "", "http:"]),
        HOSTISH | st.builds("[{}]".format, HOSTISH) | st.builds("[{}".format, HOSTISH),
        st.sampled_from(["", ":", ":80", ":65536", ":-1", ":８０", ":99999999999999999999"]),
        st.text(max_size=20),
    ),
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=600),
)


def check_no_server_error(sent) -> None:
    assert sent["status"] < 500, sent
    if sent["status"] in (400, 413):  # the app's refusals are seed 004's envelope (404: routing)
        assert json.loads(sent["body"])["params"]["status"] == "failed", sent


def run_counted(test, calls: list, n: int) -> None:
    """Run a @given test and check hypothesis really ran ``n`` cases (each appends to calls)."""
    test()
    assert len(calls) >= n, f"hypothesis ran {len(calls)} cases, not {n}"


@pytest.mark.slow  # ~12 s on a quiet machine, ~90 s at load average 13
class TestFuzz:
    def test_urls(self, asgi_types):
        """ext.url, userid and channel of every shape, on the app with seed 003's url, channel and
        random experiments (served online by the register route)."""
        asgi, calls = asgi_types, []

        @hsettings(max_examples=FUZZ["urls"], **_FUZZ_SETTINGS)
        @given(url=URLS, userid=st.none() | st.text(max_size=30),
               channel=st.sampled_from(["", "app", "web"]) | st.text(max_size=12))  # fmt: skip
        @example(url="http://[::1", userid=None, channel="app")
        @example(url="http://example.com\uff0fcart", userid=None, channel="")
        @example(url="http://\uff45xample.com/", userid="u1", channel="ios")
        @example(url="http://example.com:99999/", userid=None, channel="")
        @example(url="HTTPS://SHOP.example.com:443/cart#x", userid="u1", channel="app")
        def case(url, userid, channel):
            calls.append(1)
            body = envelope(url, userid=userid)
            body["request"]["channel"] = channel
            check_no_server_error(post_json(asgi, body))

        run_counted(case, calls, FUZZ["urls"])

    def test_headers(self, asgi):
        calls = []
        names = st.sampled_from([b"content-length", b"content-type", b"transfer-encoding",
                                 b"host", b"expect", b"connection", b"x-forwarded-for", b"cookie",
                                 b"content-encoding", b"\xff\x00"])  # fmt: skip
        values = st.binary(max_size=40) | st.sampled_from(
            [b"\xb2", b"\xd9\xa3", b"-1", b"99999999999999999999", b"0", b"chunked", b"gzip",
             b"application/json; charset=latin-1", b"100-continue", b""]
        )  # fmt: skip

        @hsettings(max_examples=FUZZ["headers"], **_FUZZ_SETTINGS)
        @given(
            headers=st.lists(st.tuples(names, values), max_size=6),
            path=st.binary(max_size=40),
            chunks=st.integers(1, 4),
        )
        @example(headers=[(b"content-length", b"\xb2")], path=b"d1", chunks=1)
        @example(headers=[(b"content-length", b"1"), (b"content-length", b"99")], path=b"d1",
                 chunks=2)  # fmt: skip
        def case(headers, path, chunks):
            calls.append(1)
            body = json.dumps(envelope(URL)).encode()
            check_no_server_error(asgi.post(REGISTER.encode() + path, body, headers, chunks))

        run_counted(case, calls, FUZZ["headers"])

    def test_bodies(self, asgi):
        calls = []
        json_values = st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        )
        fields = st.sampled_from(["did", "ext", "uaspec", "dspec", "channel", "fcmToken"])
        mutated = st.builds(
            lambda field, value, top: json.dumps(
                {"request": {field: value}} | top, allow_nan=True
            ).encode(),
            fields, json_values, st.dictionaries(st.sampled_from(["id", "params", "ts"]),
                                                 json_values, max_size=2),
        )  # fmt: skip
        bodies = mutated | st.binary(max_size=400) | st.sampled_from(
            [b"[" * 100_000, b'{"request":' * 20_000, b'{"request":{"dspec":{"a":1e999999}}}',
             b'{"request":{"did":"\\ud800"}}', b"\xef\xbb\xbf{}", b"\x00" * MAX_BODY_BYTES,
             b"x" * (MAX_BODY_BYTES + 1)]
        )  # fmt: skip

        @hsettings(max_examples=FUZZ["bodies"], **_FUZZ_SETTINGS)
        @given(body=bodies, chunks=st.integers(1, 3))
        @example(body=b"[" * 100_000, chunks=1)
        @example(body=b'{"request":{"ext":{"url":"http://[::1"}}}', chunks=2)
        def case(body, chunks):
            calls.append(1)
            headers = [(b"content-type", b"application/json")]
            check_no_server_error(asgi.post(REGISTER + "d00000002", body, headers, chunks))

        run_counted(case, calls, FUZZ["bodies"])

    def test_experiment_bodies(self, asgi_types):
        """Seed 002's ``POST /experiment``: services and contexts of every JSON shape, units of
        every type (urls from the url strategy), seed 003's channel and region of every type,
        raw bytes: 200 or a 4xx with a reason."""
        asgi = asgi_types
        calls = []
        scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
        json_values = st.recursive(
            scalars,
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        )
        keys = st.sampled_from(["user_id", "device_id", "url", "age", "country", "app_version",
                                "is_premium", "org_plan", "channel", "region", "random"]
                               ) | st.text(max_size=10)  # fmt: skip
        units = st.sampled_from(["u00000002", "d00000002", "user_12345", "", URL, "app", "eu",
                                 "https://shop.example.com/cart?x=1", "DE"]) | URLS  # fmt: skip
        contexts = st.dictionaries(keys, scalars | units | json_values, max_size=6)
        services = st.lists(st.sampled_from(["checkout", "feed", "ranker_svc", ""])
                            | st.text(max_size=12), max_size=4) | json_values  # fmt: skip
        shaped = st.builds(
            lambda svc, ctx, top: json.dumps(
                {"services": svc, "context": ctx} | top, allow_nan=True
            ).encode(),
            services, contexts | json_values,
            st.dictionaries(st.sampled_from(["x", "services"]), json_values, max_size=1),
        )  # fmt: skip
        bodies = shaped | st.binary(max_size=400) | st.sampled_from(
            [b"[" * 100_000, b'{"context":' * 20_000, b'{"services":["s"],"context":'
             b'{"user_id":"u","n":1e999999}}', b'{"services":["s"],"context":{"user_id":'
             b'"\\ud800"}}', b"\x00" * MAX_BODY_BYTES, b"x" * (MAX_BODY_BYTES + 1)]
        )  # fmt: skip

        @hsettings(max_examples=FUZZ["experiment"], **_FUZZ_SETTINGS)
        @given(body=bodies, chunks=st.integers(1, 3))
        @example(body=b'{"services":["s"],"context":{"url":"http://[::1"}}', chunks=2)
        @example(body=b'{"services":["s"],"context":{"user_id":"u","age":NaN}}', chunks=1)
        @example(body=b'{"services":["s"],"context":{"user_id":"u","v":"1.0.0-"}}', chunks=1)
        @example(body=b'{"services":["web_svc"],"context":{}}', chunks=1)
        @example(body=b'{"services":["s"],"context":{"channel":[1],"region":{}}}', chunks=1)
        @example(body=b'{"services":["s"],"context":{"channel":7,"url":"http://a/cart"}}', chunks=1)
        @example(body=b'{"services":["s"],"context":{"region":"\\u0000","country":"DE"}}', chunks=1)
        def case(body, chunks):
            calls.append(1)
            headers = [(b"content-type", b"application/json")]
            sent = asgi.post("/experiment", body, headers, chunks)
            assert sent["status"] in (200, 400, 413), sent
            payload = json.loads(sent["body"])
            assert ("results" in payload) if sent["status"] == 200 else payload["error"]["message"]

        run_counted(case, calls, FUZZ["experiment"])


# --------------------------------------------------------------------------------------------
# The server as deployed (scripts/endpoint.sh: nginx in front of uvicorn) on 127.0.0.1
# --------------------------------------------------------------------------------------------

FRONT_PORT = int(os.environ["STRATA_ENDPOINT_PORT"]) + 3  # the test endpoint port + 3
BUSY_PORT = FRONT_PORT + 1
TIMEOUT_S = 3  # header, body and app timeouts of the test server
MAX_REQUESTS = 16
SCRIPT = ROOT / "scripts" / "endpoint.sh"


@pytest.fixture(scope="module")
def front(published):
    """scripts/endpoint.sh's server with short timeouts and a small request limit."""
    settings, prefix = published
    env = os.environ | {
        "STRATA_ENDPOINT_PORT": str(FRONT_PORT), "STRATA_LOOKUP_PREFIX": prefix,
        "STRATA_ENDPOINT_HEADER_TIMEOUT": str(TIMEOUT_S),
        "STRATA_ENDPOINT_BODY_TIMEOUT": str(TIMEOUT_S),
        "STRATA_ENDPOINT_APP_TIMEOUT": str(TIMEOUT_S),
        "STRATA_ENDPOINT_MAX_REQUESTS": str(MAX_REQUESTS),
    }  # fmt: skip
    subprocess.run([SCRIPT, "start"], check=True, capture_output=True, env=env)
    pid = int((settings.home / "endpoint" / f"endpoint-{FRONT_PORT}.pid").read_text())
    try:
        yield pid
    finally:
        subprocess.run([SCRIPT, "stop"], check=True, capture_output=True, env=env)


def raw_post(body: bytes, device: str = "d00000002") -> bytes:
    head = (f"POST {REGISTER}{device} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


def normal_request(timeout: float = 5.0) -> tuple[int, dict, bytes, float]:
    """(status, headers, body, seconds) of one complete request on a fresh connection."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", FRONT_PORT, timeout=timeout)
    try:
        conn.request("POST", REGISTER + "d00000002", json.dumps(envelope(URL)),
                     {"Content-Type": "application/json"})  # fmt: skip
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read(), time.monotonic() - started)  # fmt: skip
    finally:
        conn.close()


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither closed nor answered the connection (nothing to read)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def closed_by(sock: socket.socket, deadline: float) -> bool:
    """Read until the server closes (True) or ``deadline`` passes (False); answers are read."""
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:  # reset: nginx's reset_timedout_connection
        return True


class TestSlowClients:
    HALF_HEADERS, SLOW_BODIES, DRIBBLERS = 200, 8, 5

    def test_half_sent_requests_are_closed_and_others_served_meanwhile(self, front):
        request = raw_post(json.dumps(envelope(URL)).encode())
        socks: list[socket.socket] = []
        dribblers: list[socket.socket] = []
        stop = threading.Event()
        try:
            started = time.monotonic()
            for i in range(self.HALF_HEADERS + self.SLOW_BODIES + self.DRIBBLERS):
                sock = socket.create_connection(("127.0.0.1", FRONT_PORT), timeout=5)
                if i < self.HALF_HEADERS:  # the request line and part of the headers
                    sock.sendall(request[: request.index(b"Content-Type")])
                elif i < self.HALF_HEADERS + self.SLOW_BODIES:  # all headers, 10 body bytes
                    sock.sendall(request[: request.index(b"\r\n\r\n") + 14])
                else:
                    dribblers.append(sock)
                socks.append(sock)

            def dribble() -> None:  # slowloris: one more header byte every 0.25 s
                for k in range(len(request)):
                    for sock in dribblers:
                        with contextlib.suppress(OSError):
                            sock.send(request[k : k + 1])
                    if stop.wait(0.25):
                        return

            threading.Thread(target=dribble, daemon=True).start()
            served = [normal_request() for _ in range(20)]
            served_by = time.monotonic() - started
            open_then = sum(still_open(s) for s in socks)
            deadline = started + TIMEOUT_S + 3
            closed = sum(closed_by(s, deadline) for s in socks)
            closed_after = time.monotonic() - started
        finally:
            stop.set()
            for sock in socks:
                sock.close()
        assert [s[0] for s in served] == [200] * 20
        assert served_by < TIMEOUT_S, f"normal requests took {served_by:.2f} s"
        assert open_then == len(socks)  # they were served while every slow client was held
        assert closed == len(socks), f"{len(socks) - closed} slow connections still open"
        assert TIMEOUT_S - 0.5 < closed_after < TIMEOUT_S + 3

    def test_requests_past_the_limit_get_503_with_retry_after(self, front):
        request = raw_post(json.dumps(envelope(URL)).encode())
        socks = []
        try:
            for _ in range(MAX_REQUESTS):  # each holds a request in flight (body not sent)
                sock = socket.create_connection(("127.0.0.1", FRONT_PORT), timeout=5)
                sock.sendall(request[: request.index(b"\r\n\r\n") + 4])
                socks.append(sock)
            time.sleep(0.2)  # nginx has read their headers
            status, headers, body, _ = normal_request()
            assert status == 503
            assert headers["retry-after"] == "1"
            assert json.loads(body)["params"]["err"] == "OVERLOADED"
        finally:
            for sock in socks:
                sock.close()
        time.sleep(0.2)  # closed by the client: the slots are free again
        assert normal_request()[0] == 200

    def test_an_app_that_does_not_answer_is_a_503_with_retry_after(self, front):
        os.kill(front, signal.SIGSTOP)  # the server process (uvicorn); nginx, its child, runs on
        try:
            status, headers, body, seconds = normal_request(timeout=TIMEOUT_S + 5)
        finally:
            os.kill(front, signal.SIGCONT)
        assert (status, headers["retry-after"]) == (503, "1")
        assert json.loads(body)["params"]["err"] == "UNAVAILABLE"
        assert seconds < TIMEOUT_S + 2
        assert normal_request()[0] == 200


class TestWireFuzz:
    """Raw bytes on the wire to nginx (what the in-process fuzz cannot reach): 500 cases."""

    def test_no_request_line_headers_or_body_gives_a_5xx(self, front):
        token = st.binary(min_size=1, max_size=12) | st.sampled_from(
            [b"POST", b"GET", b"PUT", b"X" * 300, b"/v1/device/register/d1", b"%00", b"%zz",
             b"/../../etc/passwd", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"\xff\xfe"]
        )  # fmt: skip
        header = st.tuples(
            st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Host", b"Expect",
                             b"X-Forwarded-For", b"\x00", b"A" * 9000]),
            st.binary(max_size=30) | st.sampled_from([b"chunked", b"100-continue", b"-1",
                                                      b"\xb2", b"1, 2", b"9" * 30]),
        )  # fmt: skip
        calls = []

        @hsettings(max_examples=500, **_FUZZ_SETTINGS)
        @given(
            line=st.lists(token, min_size=1, max_size=3).map(b" ".join),
            headers=st.lists(header, max_size=4),
            body=st.binary(max_size=64),
        )
        @example(line=b"POST /v1/device/register/%00 HTTP/1.1", headers=[], body=b"{}")
        @example(line=b"POST /v1/device/register/d1 HTTP/1.1",
                 headers=[(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")],
                 body=b"0\r\n\r\n")  # fmt: skip
        def case(line, headers, body):
            calls.append(1)
            lines = [line, b"Host: t", *(k + b": " + v for k, v in headers),
                     b"Connection: close", b"Content-Length: %d" % len(body)]  # fmt: skip
            answer = b""
            with socket.create_connection(("127.0.0.1", FRONT_PORT), timeout=10) as sock:
                with contextlib.suppress(OSError):  # nginx may close before reading it all
                    sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
                with contextlib.suppress(OSError):
                    while chunk := sock.recv(65536):
                        answer += chunk
            if answer:  # nothing at all is nginx closing on garbage: no 5xx either
                status = answer.split(b"\r\n", 1)[0].split(b" ")
                assert status[0].startswith(b"HTTP/1."), answer[:200]
                assert int(status[1]) < 500, answer[:300]

        run_counted(case, calls, 500)


#: Another server on the port, answering every GET with 200 (an old endpoint, say).
IMPOSTOR = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""


class TestStartScript:
    def test_another_process_on_the_port_is_an_error_not_ready(self, published):
        settings, prefix = published
        other = subprocess.Popen(
            [sys.executable, "-c", IMPOSTOR, str(BUSY_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        env = os.environ | {"STRATA_ENDPOINT_PORT": str(BUSY_PORT), "STRATA_LOOKUP_PREFIX": prefix}
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the impostor answers /healthz
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://127.0.0.1:{BUSY_PORT}/healthz", timeout=1)
                    break
                time.sleep(0.1)
            started = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, env=env)
            status = subprocess.run([SCRIPT, "status"], capture_output=True, text=True, env=env)
        finally:
            subprocess.run([SCRIPT, "stop"], capture_output=True, env=env)
            other.terminate()
            other.wait(10)
        assert started.returncode == 1, started.stdout
        assert "ready" not in started.stdout
        assert f"{BUSY_PORT} is in use by another process" in started.stderr
        assert status.returncode == 3
        assert not (settings.home / "endpoint" / f"endpoint-{BUSY_PORT}.pid").exists()


def test_nginx_and_the_app_refuse_the_same_body_size():
    from strata_apps import endpoint_server
    from strata_apps.endpoint import MAX_BODY_BYTES as APP_LIMIT

    assert endpoint_server.MAX_BODY_BYTES == APP_LIMIT
    conf = endpoint_server.nginx_conf(
        Path("/r"), "127.0.0.1", 1, Path("/r/a.sock"), endpoint_server.Limits()
    )
    assert f"client_max_body_size {APP_LIMIT};" in conf
