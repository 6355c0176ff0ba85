"""The device-register endpoint against a hostile network (issue 12, items 6 and 9).

In process (the app called through ASGI with raw scopes, real Redis): malformed urls are 400s,
malformed headers are 400s, nothing is a 500, every 503 carries ``Retry-After``, and a
derandomised hypothesis fuzz of urls, headers and bodies (10,000 cases) sees no 5xx.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from lookup_loader.loader import publish
from lookup_loader.sample import sample_tables, write_tables
from strata.config import Settings
from strata.endpoint import MAX_BODY_BYTES, create_app

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
        assert sent["headers"][b"retry-after"] == b"1"


# --------------------------------------------------------------------------------------------
# Fuzz: urls, headers and bodies; 4,000 + 3,000 + 3,000 derandomised cases, no 5xx
# --------------------------------------------------------------------------------------------

FUZZ = {"urls": 4000, "headers": 3000, "bodies": 3000}
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


class TestFuzz:
    def test_urls(self, asgi):
        calls = []

        @hsettings(max_examples=FUZZ["urls"], **_FUZZ_SETTINGS)
        @given(url=URLS, userid=st.none() | st.text(max_size=30))
        @example(url="http://[::1", userid=None)
        @example(url="http://example.com\uff0fcart", userid=None)
        @example(url="http://\uff45xample.com/", userid="u1")
        @example(url="http://example.com:99999/", userid=None)
        def case(url, userid):
            calls.append(1)
            check_no_server_error(post_json(asgi, envelope(url, userid=userid)))

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
