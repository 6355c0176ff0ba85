"""Seed 003's experiment types (url, random) and targeting fields (channel, region): pure logic."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from strata import contracts
from strata.assignment import (
    assign_random,
    assign_unit,
    draw_slot,
    online_experiments,
    online_only,
    targeting_context,
)
from strata.bucketing import SLOTS, slot
from strata.definitions import bundled_path, load
from strata.keyspace import normalize_url
from strata.rules import evaluate
from strata.stats.errors import DesignError
from strata.stats.results import refuse_per_request
from strata.stats.srm import request_split

TYPES = Path(__file__).parents[1] / "data" / "experiment_types"
DAY = dt.date(2026, 11, 15)


@pytest.fixture(scope="module")
def defs():
    return load(TYPES)


class TestUrlNormalisation:
    @pytest.mark.parametrize(
        ("given", "normal"),
        [
            ("HTTPS://Shop.Example.COM/cart", "https://shop.example.com/cart"),
            ("https://shop.example.com:443/cart", "https://shop.example.com/cart"),
            ("http://shop.example.com:80/cart", "http://shop.example.com/cart"),
            ("http://shop.example.com:443/cart", "http://shop.example.com:443/cart"),
            ("https://shop.example.com:8443/cart", "https://shop.example.com:8443/cart"),
            ("https://shop.example.com/cart#summary", "https://shop.example.com/cart"),
            ("https://shop.example.com/cart?b=2&a=1", "https://shop.example.com/cart?b=2&a=1"),
            ("https://shop.example.com", "https://shop.example.com/"),
            ("  https://shop.example.com/Cart  ", "https://shop.example.com/Cart"),  # path kept
            ("https://[::1]:443/x", "https://[::1]/x"),
        ],
    )
    def test_normal_form(self, given, normal):
        assert normalize_url(given) == normal
        assert normalize_url(normal) == normal  # idempotent

    def test_spellings_of_one_page_are_one_unit(self, defs):
        spellings = [
            "HTTPS://Shop.example.com:443/cart?x=1#top",
            "https://shop.example.com/cart?x=1",
        ]
        got = [assign_unit(defs, "url", u, {"url": u}, as_of=DAY) for u in spellings]
        assert got[0] == got[1]
        assert len(got[0]) == 1
        # the slot formula on the normal form, as DESIGN.md's slot
        assert got[0][0].slot == slot("pages-1", "https://shop.example.com/cart?x=1")


CART_RULE = {"type": "field", "field": "url", "op": "like",
             "values": ["https://shop.example.com/cart*"]}  # fmt: skip


class TestUrlPattern:
    @pytest.mark.parametrize(
        ("url", "hit"),
        [
            ("https://shop.example.com/cart", True),
            ("https://shop.example.com/cart/items?x=1", True),
            ("HTTPS://SHOP.example.com:443/cart#x", True),  # matched in normal form
            ("https://shop.example.com/Cart", False),  # paths are case-sensitive
            ("https://shop.example.com/home", False),
            ("http://shop.example.com/cart", False),
            ("https://evil.example/https://shop.example.com/cart", False),
        ],
    )
    def test_like_on_the_normal_form(self, url, hit):
        assert evaluate(CART_RULE, targeting_context({"url": url})) is hit

    def test_a_url_experiment_applies_only_on_matching_pages(self, defs):
        assert assign_unit(defs, "url", "https://shop.example.com/home", {}, as_of=DAY) == []
        # every cart page is in the experiment: control or treatment by its slot
        pages = [f"https://shop.example.com/cart/{i}" for i in range(200)]
        rows = [
            assign_unit(defs, "url", p, targeting_context({"url": p}), as_of=DAY) for p in pages
        ]
        assert all(len(r) == 1 for r in rows)
        assert {r[0].variant_id for r in rows} == {501, 502}


class TestRandom:
    def test_draw_is_uniform_by_simulation(self, defs):
        rng = random.Random(20261203)
        n = 20_000
        rows = [assign_random(defs, {}, as_of=DAY, slot_of=lambda _s, _u: rng.randrange(SLOTS))
                for _ in range(n)]  # fmt: skip
        treated = sum(r[0].variant_id == 602 for r in rows)
        # 50/50 split: 4 standard deviations of a binomial(20000, 0.5) is about 283
        assert abs(treated - n / 2) < 4 * (n * 0.25) ** 0.5

    def test_the_os_draw_differs_across_requests(self):
        draws = [draw_slot() for _ in range(2000)]
        assert all(0 <= d < SLOTS for d in draws)
        assert len(set(draws)) > 1500  # ~1,820 distinct expected; a hash of one unit gives 1
        # roughly uniform: every tenth of the slots gets draws
        assert {d * 10 // SLOTS for d in draws} == set(range(10))

    def test_random_rows_have_no_unit_and_honour_the_window(self, defs):
        rows = assign_random(defs, {}, as_of=DAY)
        assert [(r.unit_type, r.unit_id, r.experiment_id) for r in rows] == [
            ("random", "", "banner_color")
        ]
        assert assign_random(defs, {}, as_of=dt.date(2026, 11, 22)) == []
        assert assign_random(defs, {}, as_of=dt.date(2026, 11, 7)) == []

    def test_assign_unit_refuses_random(self, defs):
        with pytest.raises(ValueError, match="assign_random"):
            assign_unit(defs, "random", "x", {}, as_of=DAY)

    def test_the_analysis_refuses_random_experiments(self):
        with pytest.raises(DesignError, match=r"banner_color: a random .*not analysable per unit"):
            refuse_per_request([{"experiment_id": "banner_color", "unit_type": "random"}])
        refuse_per_request([{"experiment_id": "e", "unit_type": "user_id"}])


class TestContracts:
    def test_the_request_split_of_a_random_experiment(self):
        shares = {"banner_color": {601: 0.5, 602: 0.5}, "idle": {1: 0.2, 2: 0.8}}
        even = request_split({("banner_color", 601): 510, ("banner_color", 602): 490}, shares)
        assert even["exp_id"].tolist() == ["banner_color"]  # no requests: no row
        assert (even.loc[0, "dof"], bool(even.loc[0, "passed"])) == (1, True)
        skewed = request_split({("banner_color", 601): 600, ("banner_color", 602): 400}, shares)
        assert skewed.loc[0, "chi2"] == pytest.approx(40.0)
        assert not skewed.loc[0, "passed"]
        with pytest.raises(ValueError, match=r"banner_color: requests served variant\(s\) \[603\]"):
            request_split({("banner_color", 603): 1}, shares)

    def test_random_is_a_unit_type_without_an_id(self):
        assert "random" in contracts.UNIT_TYPES
        assert "random" not in contracts.UNIT_ID_TYPES
        assert contracts.dbt_vars()["unit_types"] == ["device_id", "user_id", "url"]

    def test_definitions_accept_the_new_types(self, defs):
        assert {lay.id: lay.unit_type for lay in defs.layers}["rand"] == "random"


class TestOnlineOnly:
    def test_which_experiments_are_online(self, defs):
        assert online_experiments(defs) == {"cart_copy", "banner_color", "app_nav"}
        assert not online_only(defs, "eu_offer")  # region has a batch source (country)

    def test_bundled_definitions_have_none(self):
        assert online_experiments(load(bundled_path())) == frozenset()


class TestChannelAndRegion:
    def test_channel_rule(self, defs):
        uid = next(f"u{i}" for i in range(100) if slot("chan-1", f"u{i}") >= 5000)
        ctx = {"channel": "app"}
        assert [a.variant_id for a in assign_unit(defs, "user_id", uid, ctx, as_of=DAY)] == [702]
        assert assign_unit(defs, "user_id", uid, {"channel": "web"}, as_of=DAY) == []
        assert assign_unit(defs, "user_id", uid, {}, as_of=DAY) == []

    @pytest.mark.parametrize(
        ("context", "region"),
        [
            ({"country": "DE"}, "eu"),
            ({"country": "US"}, "na"),
            ({"country": "JP"}, "apac"),
            ({"country": "ZZ"}, None),  # unknown country: no region
            ({"country": 7}, None),
            ({"country": "DE", "region": "custom"}, "custom"),  # an explicit region wins
            ({}, None),
        ],
    )
    def test_region_from_country(self, context, region):
        assert targeting_context(context).get("region") == region

    def test_region_rule(self, defs):
        ids = [f"u{i}" for i in range(50)]
        de = [assign_unit(defs, "user_id", u, targeting_context({"country": "DE"}), as_of=DAY)
              for u in ids]  # fmt: skip
        us = [assign_unit(defs, "user_id", u, targeting_context({"country": "US"}), as_of=DAY)
              for u in ids]  # fmt: skip
        assert all(r and r[0].experiment_id == "eu_offer" for r in de)
        assert not any(us)

    def test_every_country_the_generator_draws_has_a_region(self):
        from strata.synthetic import COUNTRIES

        assert set(COUNTRIES) <= set(contracts.REGION_OF_COUNTRY)
