"""Seed 003's experiment types and targeting fields on ``POST /experiment``: url experiments by
page pattern, random (per-request) experiments, channel and region targeting.

In process (FastAPI's TestClient), real Redis with a published sample version; online evaluation
uses ``tests/data/experiment_types``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from pathlib import Path

import pytest
import scipy.stats
from fastapi.testclient import TestClient

from lookup_loader.loader import publish
from lookup_loader.sample import sample_tables, write_tables
from strata.bucketing import slot
from strata.definitions import load
from strata.lookup import LookupClient
from strata_apps.endpoint import create_app
from strata_apps.endpoint_metrics import random_served_counts, random_split

TYPES = Path(__file__).parents[1] / "data" / "experiment_types"
DAY = dt.date(2026, 11, 15)
CART = "https://shop.example.com/cart?step=2"
SERVICES = ["web_svc", "banner_svc", "app_svc", "reg_svc"]


@pytest.fixture(scope="module")
def defs():
    return load(TYPES)


@pytest.fixture(scope="module")
def published(redis_server):
    tag = uuid.uuid4().hex[:8]
    prefix = f"t{tag}"
    names = {"assignments_table": f"lt_{tag}_a", "experiments_table": f"lt_{tag}_e"}
    write_tables(
        redis_server,
        *sample_tables(devices=50, users=50, urls=5),
        assignments_table=names["assignments_table"],
        experiments_table_name=names["experiments_table"],
    )
    publish(redis_server, prefix=prefix, publications_table=None, **names)
    return redis_server, prefix


def client_for(published, defs, day=DAY) -> TestClient:
    settings, prefix = published
    return TestClient(create_app(settings, prefix=prefix, definitions=defs, today=lambda: day))


@pytest.fixture(scope="module")
def client(published, defs):
    # One portal thread for the module (a client per request thread would each hold a
    # connection: the reader's connections are per thread).
    with client_for(published, defs) as c:
        yield c


def post(client, context, services=SERVICES):
    r = client.post("/experiment", json={"services": services, "context": context})
    assert r.status_code == 200, r.text
    return r.json()


def vids(body, service):
    return body["results"][service]["vids"]


class TestUrlExperiments:
    def test_a_matching_page_is_assigned_by_the_slot_of_its_normal_form(self, client):
        body = post(client, {"url": CART})
        expected = 502 if slot("pages-1", CART) >= 5000 else 501
        assert vids(body, "web_svc") == [expected]
        assert body["sources"] == {"url": "online", "random": "online"}
        # another spelling of the same page: the same unit, the same variant
        other = post(client, {"url": "HTTPS://Shop.Example.com:443/cart?step=2#total"})
        assert vids(other, "web_svc") == [expected]

    def test_a_page_outside_the_pattern_gets_nothing(self, client):
        assert vids(post(client, {"url": "https://shop.example.com/home"}), "web_svc") == []

    def test_pages_split_between_variants(self, client):
        got = {vids(post(client, {"url": f"https://shop.example.com/cart/{i}"}), "web_svc")[0]
               for i in range(40)}  # fmt: skip
        assert got == {501, 502}

    def test_with_a_lookup_held_user(self, client):
        body = post(client, {"user_id": "u00000002", "url": CART})
        assert body["sources"]["user_id"] == "lookup"
        assert len(vids(body, "web_svc")) == 1

    def test_nothing_is_served_outside_the_window(self, published, defs):
        for day in (dt.date(2026, 11, 7), dt.date(2026, 11, 22)):
            with client_for(published, defs, day) as c:
                body = post(c, {"url": CART, "user_id": "u-x", "channel": "app", "region": "eu"})
            assert all(v["vids"] == [] for v in body["results"].values()), (day, body)


class TestRandomExperiments:
    def test_no_unit_is_needed_and_draws_differ_across_requests(self, client):
        seen = Counter(tuple(vids(post(client, {}, ["banner_svc"]), "banner_svc"))
                       for _ in range(200))  # fmt: skip
        assert set(seen) == {(601,), (602,)}
        assert 60 < seen[(602,)] < 140  # 50/50: 200 draws, about 5 standard deviations

    def test_a_unit_does_not_fix_the_draw(self, client):
        seen = {tuple(vids(post(client, {"user_id": "u-1"}, ["banner_svc"]), "banner_svc"))
                for _ in range(60)}  # fmt: skip
        assert seen == {(601,), (602,)}

    def test_nothing_is_written_for_them(self, client, published):
        from strata.stack import redis_client

        settings, prefix = published
        before = sorted(redis_client(settings).scan_iter(match=f"{prefix}*"))
        post(client, {}, ["banner_svc"])
        assert sorted(redis_client(settings).scan_iter(match=f"{prefix}*")) == before


class TestChannelAndRegion:
    def user(self, salt, upper=True):
        return next(f"q{i}" for i in range(1000) if (slot(salt, f"q{i}") >= 5000) == upper)

    def test_channel_targets_online(self, client):
        uid = self.user("chan-1")
        assert vids(post(client, {"user_id": uid, "channel": "app"}), "app_svc") == [702]
        assert vids(post(client, {"user_id": uid, "channel": "web"}), "app_svc") == []
        assert vids(post(client, {"user_id": uid}), "app_svc") == []

    def test_channel_is_evaluated_for_a_user_the_lookup_holds(self, client):
        body = post(client, {"user_id": "u00000002", "channel": "ios"})
        assert body["sources"]["user_id"] == "lookup"
        assert len(vids(body, "app_svc")) == 1

    def test_region_given_or_derived_from_country(self, client):
        uid = self.user("reg-1")
        assert vids(post(client, {"user_id": uid, "region": "eu"}), "reg_svc") == [802]
        assert vids(post(client, {"user_id": uid, "country": "CZ"}), "reg_svc") == [802]
        assert vids(post(client, {"user_id": uid, "country": "US"}), "reg_svc") == []
        assert vids(post(client, {"user_id": uid, "country": "CZ", "region": "na"}),
                    "reg_svc") == []  # fmt: skip

    @pytest.mark.parametrize(
        ("context", "loc"),
        [
            ({"user_id": "u", "channel": 3}, "body.context.channel"),
            ({"user_id": "u", "channel": True}, "body.context.channel"),
            ({"user_id": "u", "region": 1.5}, "body.context.region"),
            ({"user_id": "u", "region": "e\u0000u"}, "body.context.region"),
            ({"user_id": "u", "channel": "web\n"}, "body.context.channel"),
        ],
    )
    def test_bad_types_are_a_400_naming_the_field(self, client, context, loc):
        r = client.post("/experiment", json={"services": ["s"], "context": context})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "INVALID_FIELD"
        assert loc.removeprefix("body.") in error["message"]
        assert [e["loc"] for e in error["errors"]] == [loc]


def register(client, did="d00000002", userid="u00000002", url=CART, channel="app"):
    body = {"request": {"did": did, "channel": channel, "ext": {"userid": userid, "url": url}}}
    r = client.post(f"/v1/device/register/{did}", json=body)
    assert r.status_code == 200, r.text
    return r.json()["result"]["actions"]


def exposures(settings) -> list[dict]:
    files = sorted(settings.exposure_spool_path.glob("date=*/*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


class TestDeviceRegister:
    """The device-register route serves the online-only experiments too (url by ``ext.url``,
    channel by ``request.channel``, random drawn), merged with the lookup's, and logs the url and
    channel ones as exposures, never the random ones."""

    def test_url_channel_and_random_beside_the_lookup_actions(self, client, published):
        settings, prefix = published
        before = exposures(settings)
        actions = register(client)
        ids = {a["data"]["id"] for a in actions if a["type"] == "experiment"}
        stored = {a["data"]["id"] for a in LookupClient(settings, prefix=prefix).lookup(
            "d00000002", "u00000002", CART) if a["type"] == "experiment"}  # fmt: skip
        assert stored  # the sample user and device are in the lookup table
        assert ids == stored | {"cart_copy", "banner_color", "app_nav"}
        updates = {a["data"]["service"] for a in actions if a["type"] == "configUpdate"}
        assert {"web_svc", "banner_svc", "app_svc"} <= updates
        logged = {p["experimentId"] for e in exposures(settings) if e not in before
                  for p in e["edata"]["params"]}  # fmt: skip
        assert logged == ids - {"banner_color"}

    def test_the_url_variant_is_the_slot_of_the_normal_form(self, client):
        expected = 502 if slot("pages-1", CART) >= 5000 else 501
        for url in (CART, "HTTPS://Shop.Example.com:443/cart?step=2#x"):
            cart = [a for a in register(client, url=url) if a["data"].get("id") == "cart_copy"]
            assert [a["data"]["variantId"] for a in cart] == [expected]

    def test_no_url_no_channel_no_online_experiment_but_random(self, client):
        actions = register(client, url="", channel="")
        ids = {a["data"]["id"] for a in actions if a["type"] == "experiment"}
        assert "cart_copy" not in ids
        assert "app_nav" not in ids
        assert "banner_color" in ids

    def test_random_requests_are_counted_per_variant_and_split_by_the_shares(self, published, defs):
        with client_for(published, defs) as c:  # its own app: its own metrics registry
            for i in range(400):
                register(c, did=f"d{i:08d}", url="", channel="")
            text = c.get("/metrics").text
        counts = random_served_counts(text)
        assert set(counts) == {("banner_color", 601), ("banner_color", 602)}
        assert sum(counts.values()) == 400  # one draw per request, all served
        row = random_split(text, defs, DAY).set_index("exp_id").loc["banner_color"]
        assert row["requests"] == 400
        assert row["expected_share"] == {601: 0.5, 602: 0.5}
        # The check itself, recomputed from the counts (whether it passes is random: the draws
        # are not seeded, and a correct draw fails at the SRM alpha, 0.1% of runs).
        expected = scipy.stats.chisquare([counts[("banner_color", v)] for v in (601, 602)])
        assert row["p_value"] == pytest.approx(expected.pvalue)
        assert row["passed"] == (row["p_value"] > 0.001)

    def test_nothing_is_served_outside_the_window(self, published, defs):
        with client_for(published, defs, dt.date(2026, 11, 22)) as c:
            ids = {a["data"]["id"] for a in register(c) if a["type"] == "experiment"}
        assert not ids & {"cart_copy", "banner_color", "app_nav"}
