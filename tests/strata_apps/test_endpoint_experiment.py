"""Seed 002's evaluation API (``POST /experiment``) and the endpoint's Prometheus metrics.

In process (FastAPI's TestClient, server exceptions re-raised), real Redis with a published
sample version; online evaluation uses seed 002's example layers written as definitions.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lookup_loader.loader import publish
from lookup_loader.sample import sample_tables, write_tables
from strata.bucketing import slot
from strata.config import Settings
from strata.definitions import load
from strata.lookup import RETRY_AFTER_S, LookupClient
from strata_apps.endpoint import MAX_BODY_BYTES, create_app

START, END = dt.date(2026, 11, 8), dt.date(2026, 11, 21)
DAY = dt.date(2026, 11, 15)
SEED_USER = "user_12345"
#: Seed 002's request, verbatim.
SEED_REQUEST = {
    "services": ["ranker_svc"],
    "context": {"user_id": SEED_USER, "country": "US", "age": 25},
}
#: Seed 002's response example, verbatim.
SEED_RESULTS = {
    "ranker_svc": {
        "parameters": {"algorithm": "gbdt", "timeout_ms": 150, "model_version": "v2.1"},
        "vids": [1001, 1002],
        "matched_layers": ["layer_1", "layer_2"],
    }
}


def _salt(prefix: str, upper: bool) -> str:
    """A salt that puts seed 002's user in the upper (or lower) half of the slots."""
    return next(
        s for k in range(1000) if ((slot(s := f"{prefix}-{k}", SEED_USER) >= 5000) == upper)
    )


def seed002_yaml() -> str:
    """layer_1 (priority 100) and layer_2 (priority 200, seed 002's targeting rule) of service
    ranker_svc; salts chosen so seed 002's user gets vid 1001 and vid 1002, its example."""
    return f"""
layers:
  - {{id: layer_1, salt: {_salt("l1", True)}, unit_type: user_id, priority: 100,
     service: ranker_svc}}
  - {{id: layer_2, salt: {_salt("l2", False)}, unit_type: user_id, priority: 200,
     service: ranker_svc}}
experiments:
  - id: ranker_base
    name: Ranker base
    owner: test
    layer: layer_1
    status: running
    start_date: {START}
    end_date: {END}
    variants:
      - {{vid: 1000, name: control, is_control: true, start: 0, end: 5000,
         params: {{algorithm: baseline, timeout_ms: 100, model_version: v2.0}}}}
      - {{vid: 1001, name: slower, start: 5000, end: 10000,
         params: {{algorithm: baseline, timeout_ms: 150, model_version: v2.1}}}}
  - id: ranker_model
    name: Ranker model
    owner: test
    layer: layer_2
    status: running
    start_date: {START}
    end_date: {END}
    targeting:
      type: and
      children:
        - {{type: field, field: country, op: eq, values: [US]}}
        - {{type: field, field: age, op: gte, values: [18]}}
    variants:
      - {{vid: 1002, name: gbdt, start: 0, end: 5000, params: {{algorithm: gbdt}}}}
      - {{vid: 1003, name: control, is_control: true, start: 5000, end: 10000,
         params: {{}}}}
"""


@pytest.fixture(scope="module")
def seed002(tmp_path_factory):
    path = tmp_path_factory.mktemp("seed002") / "defs.yaml"
    path.write_text(seed002_yaml())
    return load(path)


@pytest.fixture(scope="module")
def published(redis_server):
    tag = uuid.uuid4().hex[:8]
    prefix = f"x{tag}"
    names = {"assignments_table": f"lx_{tag}_a", "experiments_table": f"lx_{tag}_e"}
    write_tables(
        redis_server,
        *sample_tables(devices=50, users=50, urls=5),
        assignments_table=names["assignments_table"],
        experiments_table_name=names["experiments_table"],
    )
    result = publish(redis_server, prefix=prefix, publications_table=None, **names)
    return redis_server, prefix, result.version


def client_for(published, seed002, day=DAY) -> TestClient:
    settings, prefix, _ = published
    app = create_app(settings, prefix=prefix, definitions=seed002, today=lambda: day)
    return TestClient(app)


@pytest.fixture(scope="module")
def client(published, seed002):
    return client_for(published, seed002)


class TestSeed002:
    def test_answers_the_seed_example(self, client, published):
        r = client.post("/experiment", json=SEED_REQUEST)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["results"] == SEED_RESULTS
        assert body["sources"] == {"user_id": "online"}  # not in the lookup table
        assert body["version"] == published[2]

    def test_targeting_decides_online(self, client):
        minor = {"services": ["ranker_svc"], "context": {"user_id": SEED_USER, "age": 16,
                                                          "country": "US"}}  # fmt: skip
        got = client.post("/experiment", json=minor).json()["results"]["ranker_svc"]
        assert got == {
            "parameters": {"algorithm": "baseline", "timeout_ms": 150, "model_version": "v2.1"},
            "vids": [1001],
            "matched_layers": ["layer_1"],
        }

    def test_unknown_services_and_duplicates(self, client):
        body = {"services": ["other", "ranker_svc", "other"], "context": SEED_REQUEST["context"]}
        got = client.post("/experiment", json=body).json()["results"]
        assert list(got) == ["other", "ranker_svc"]
        assert got["other"] == {"parameters": {}, "vids": [], "matched_layers": []}

    @pytest.mark.parametrize(
        ("day", "served"),
        [(START - dt.timedelta(days=1), False), (START, True), (END, True),
         (END + dt.timedelta(days=1), False)],
    )  # fmt: skip
    def test_online_evaluation_honours_the_window(self, published, seed002, day, served):
        r = client_for(published, seed002, day).post("/experiment", json=SEED_REQUEST)
        assert r.status_code == 200
        vids = r.json()["results"]["ranker_svc"]["vids"]
        assert vids == ([1001, 1002] if served else [])

    def test_a_known_unit_is_answered_from_the_lookup_table(self, client, published):
        """The batch assignment wins over online evaluation: the same merge as the lookup's
        configUpdate, the definitions (seed 002's layers) not consulted for that unit."""
        settings, prefix, _ = published
        context = {"user_id": "u00000002", "device_id": "d00000002", "country": "US", "age": 30}
        r = client.post("/experiment", json={"services": ["checkout", "ranker_svc"],
                                             "context": context})  # fmt: skip
        body = r.json()
        assert body["sources"] == {"user_id": "lookup", "device_id": "lookup"}
        actions = LookupClient(settings, prefix=prefix).lookup("d00000002", "u00000002")
        updates = {a["data"]["service"]: a["data"]["params"] for a in actions
                   if a["type"] == "configUpdate"}  # fmt: skip
        assert body["results"]["checkout"]["parameters"] == updates["checkout"]
        assert body["results"]["checkout"]["matched_layers"] == ["feed", "checkout"]
        assert body["results"]["ranker_svc"]["vids"] == []  # seed 002's layers: online only

    def test_known_and_unknown_units_mix(self, client):
        context = {"user_id": SEED_USER, "device_id": "d00000002", "country": "US", "age": 25}
        body = client.post("/experiment", json={"services": ["ranker_svc", "checkout"],
                                                "context": context}).json()  # fmt: skip
        assert body["sources"] == {"user_id": "online", "device_id": "lookup"}
        assert body["results"]["ranker_svc"] == SEED_RESULTS["ranker_svc"]
        assert body["results"]["checkout"]["matched_layers"] == ["checkout"]


BAD = [
    (b"not json", 400, "INVALID_REQUEST"),
    (b"{}", 400, "INVALID_REQUEST"),
    (b'{"services": [], "context": {"user_id": "u"}}', 400, "INVALID_REQUEST"),
    (b'{"services": "ranker_svc", "context": {"user_id": "u"}}', 400, "INVALID_REQUEST"),
    (b'{"services": ["bad service"], "context": {"user_id": "u"}}', 400, "INVALID_REQUEST"),
    (b'{"services": ["s"], "context": {"user_id": "u"}, "x": 1}', 400, "INVALID_REQUEST"),
    (b'{"services": ["s"], "context": {"user_id": "u", "geo": {"c": "US"}}}', 400,
     "INVALID_REQUEST"),
    (b'{"services": ["s"], "context": {"user_id": "u", "tags": ["a"]}}', 400, "INVALID_REQUEST"),
    (b'{"services": ["s"], "context": {"user_id": 12345}}', 400, "INVALID_UNIT"),
    (b'{"services": ["s"], "context": {"user_id": "u\\u0000"}}', 400, "INVALID_UNIT"),
    (b'{"services": ["s"], "context": {"url": "http://[::1"}}', 400, "INVALID_UNIT"),
    (b'{"services": ["s"], "context": {"country": "US"}}', 400, "NO_UNIT"),
    (b'{"services": ["s"], "context": {"bad key": 1, "user_id": "u"}}', 400, "INVALID_REQUEST"),
    (json.dumps({"services": ["s"], "context": {f"f{i}": i for i in range(65)}}).encode(), 400,
     "INVALID_REQUEST"),
    (b" " * (MAX_BODY_BYTES + 1), 413, "BODY_TOO_LARGE"),
]  # fmt: skip


class TestBadInput:
    @pytest.mark.parametrize(("body", "status", "code"), BAD)
    def test_is_a_4xx_with_a_reason(self, client, body, status, code):
        r = client.post("/experiment", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code
        assert error["message"]

    def test_redis_unreachable_is_a_503_with_retry_after(self, redis_server, seed002):
        settings = Settings(home=redis_server.home, redis_url="redis://127.0.0.1:9/0")
        app = create_app(settings, prefix="none", definitions=seed002, today=lambda: DAY)
        r = TestClient(app).post("/experiment", json=SEED_REQUEST)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "LOOKUP_UNAVAILABLE"
        assert r.headers["retry-after"] == str(RETRY_AFTER_S["unreachable"])


def scrape(client) -> dict:
    """{family name: {(sample name, sorted labels): value}} of ``GET /metrics``."""
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")  # Prometheus text
    out: dict = {}
    for family in text_string_to_metric_families(r.text):
        out[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value
                            for s in family.samples}  # fmt: skip
    return out


class TestMetrics:
    FAMILIES: ClassVar[dict[str, str]] = {
        "strata_endpoint_requests": "counter",
        "strata_endpoint_request_duration_seconds": "histogram",
        "strata_endpoint_lookups": "counter",
        "strata_endpoint_live_version": "gauge",
    }

    def test_families_parse_and_a_request_increments_them(self, published, seed002):
        client = client_for(published, seed002)
        client.post("/experiment", json=SEED_REQUEST)  # every family has a sample
        before = scrape(client)
        assert set(self.FAMILIES) <= set(before)
        r = client.get("/metrics")
        types = {f.name: f.type for f in text_string_to_metric_families(r.text)}
        assert {k: types[k] for k in self.FAMILIES} == self.FAMILIES

        client.post("/experiment", json=SEED_REQUEST)
        client.post("/experiment", content=b"{}", headers={"content-type": "application/json"})
        register = {"request": {"did": "d00000002", "ext": {"userid": "u00000002"}}}
        assert client.post("/v1/device/register/d00000002", json=register).status_code == 200
        after = scrape(client)

        def delta(family, sample, **labels):
            key = (sample, tuple(sorted(labels.items())))
            return after[family].get(key, 0) - before[family].get(key, 0)

        req = "strata_endpoint_requests"
        assert delta(req, f"{req}_total", route="/experiment", status="200") == 1
        assert delta(req, f"{req}_total", route="/experiment", status="400") == 1
        reg = "/v1/device/register/{device_id}"
        assert delta(req, f"{req}_total", route=reg, status="200") == 1
        lat = "strata_endpoint_request_duration_seconds"
        assert delta(lat, f"{lat}_count", route="/experiment") == 2
        assert delta(lat, f"{lat}_bucket", route="/experiment", le="+Inf") == 2
        lk = "strata_endpoint_lookups"
        assert delta(lk, f"{lk}_total", route="/experiment", outcome="online") == 1
        assert delta(lk, f"{lk}_total", route=reg, outcome="hit") == 1
        live = after["strata_endpoint_live_version"]
        assert live == {("strata_endpoint_live_version", (("version", published[2]),)): 1.0}

    def test_paths_are_bounded_labels(self, client):
        client.post("/no/such/path/123", json={})
        routes = {dict(k[1]).get("route") for k in scrape(client)["strata_endpoint_requests"]}
        assert "/no/such/path/123" not in routes
        assert "other" in routes
