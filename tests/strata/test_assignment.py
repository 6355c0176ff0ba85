"""The Python reference assignment: domains, layer independence, uniformity, parameter merge."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from strata.assignment import (
    Assignment,
    assign_unit,
    deep_merge,
    in_domain,
    merge_order,
    service_view,
)
from strata.bucketing import SLOTS
from strata.definitions import bundled_path, load

UNITS = [f"u{i:08d}" for i in range(100_000)]
#: The demo's first day: every running experiment (bundled and seed 003's) is inside its window.
DAY = dt.date(2026, 11, 8)

# Seed 003's example: layer A splits 20/20/60, layer B 10/10/80, in one overlapping domain.
SEED_003 = """
layers:
  - {id: layer_a, salt: seed003-a, unit_type: user_id, priority: 100}
  - {id: layer_b, salt: seed003-b, unit_type: user_id, priority: 200}
experiments:
"""


def _exp(eid, layer, start, end, vid):
    mid = (start + end) // 2
    return f"""
  - id: {eid}
    name: {eid}
    owner: test
    layer: {layer}
    status: running
    start_date: 2026-11-08
    end_date: 2026-11-14
    variants:
      - {{vid: {vid}, name: control, is_control: true, start: {start}, end: {mid}}}
      - {{vid: {vid + 1}, name: treatment, start: {mid}, end: {end}}}
"""


@pytest.fixture(scope="module")
def seed003(tmp_path_factory):
    text = SEED_003
    for i, (eid, s, e) in enumerate([("a", 0, 2000), ("b", 2000, 4000), ("c", 4000, 10000)]):
        text += _exp(eid, "layer_a", s, e, 10 + 2 * i)
    for i, (eid, s, e) in enumerate([("aa", 0, 1000), ("bb", 1000, 2000), ("cc", 2000, 10000)]):
        text += _exp(eid, "layer_b", s, e, 20 + 2 * i)
    path = tmp_path_factory.mktemp("seed003") / "defs.yaml"
    path.write_text(text)
    return load(path)


@pytest.fixture(scope="module")
def bundled():
    return load(bundled_path())


def test_seed_003_layers_are_independent(seed003):
    """a x aa lands at 2%, a x cc at 16% ...: chi-square on the 3x3 cross-tab of 100k units."""
    table = Counter()
    for uid in UNITS:
        rows = {
            a.layer_id: a.experiment_id for a in assign_unit(seed003, "user_id", uid, {}, as_of=DAY)
        }
        table[rows["layer_a"], rows["layer_b"]] += 1
    a_ids, b_ids = ["a", "b", "c"], ["aa", "bb", "cc"]
    observed = np.array([[table[a, b] for b in b_ids] for a in a_ids])
    assert observed.sum() == len(UNITS)  # every unit is in exactly one experiment per layer
    expected_share = np.outer([0.2, 0.2, 0.6], [0.1, 0.1, 0.8])
    np.testing.assert_allclose(observed / len(UNITS), expected_share, atol=0.004)
    assert observed[0, 0] / len(UNITS) == pytest.approx(0.02, abs=0.002)
    assert observed[0, 2] / len(UNITS) == pytest.approx(0.16, abs=0.004)
    _, p_independent, _, _ = stats.chi2_contingency(observed)
    assert p_independent > 0.001
    # The same test catches dependence: layers sharing a hash would fail it badly.
    dependent = np.array([[2000 * 10, 0, 0], [0, 2000 * 10, 0], [0, 0, 60000]])
    assert stats.chi2_contingency(dependent)[1] < 1e-12


def test_variant_shares_follow_slot_ranges(seed003):
    counts = Counter(
        a.variant_id
        for uid in UNITS[:50_000]
        for a in assign_unit(seed003, "user_id", uid, {}, as_of=DAY)
        if a.layer_id == "layer_a"
    )
    observed = [counts[v] for v in (10, 11, 12, 13, 14, 15)]
    expected = np.array([0.1, 0.1, 0.1, 0.1, 0.3, 0.3]) * 50_000
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_slots_are_uniform(seed003):
    slots = [a.slot for uid in UNITS for a in assign_unit(seed003, "user_id", uid, {}, as_of=DAY)]
    hist = np.bincount(np.array(slots) // 100, minlength=SLOTS // 100)
    assert stats.chisquare(hist).pvalue > 0.001
    assert stats.kstest(np.array(slots) / SLOTS, "uniform").pvalue > 0.001


class TestDomains:
    def test_domains_split_traffic_and_never_overlap(self, bundled):
        sample = UNITS[:20_000]
        main = sum(in_domain(bundled, "main", u) for u in sample)
        labs = sum(in_domain(bundled, "labs", u) for u in sample)
        both = sum(in_domain(bundled, "main", u) and in_domain(bundled, "labs", u) for u in sample)
        assert both == 0
        assert main + labs == len(sample)
        assert main / len(sample) == pytest.approx(0.9, abs=0.01)

    def test_nested_domain_is_inside_its_parent(self, bundled):
        sample = UNITS[:20_000]
        growth = [u for u in sample if in_domain(bundled, "growth", u)]
        assert all(in_domain(bundled, "main", u) for u in growth)
        assert len(growth) / len(sample) == pytest.approx(0.45, abs=0.01)

    def test_units_outside_a_domain_get_none_of_its_experiments(self, bundled):
        ctx = {"age": 40, "org_plan": "free", "country": "US", "is_premium": False}
        for uid in UNITS[:5000]:
            exps = {a.experiment_id for a in assign_unit(bundled, "user_id", uid, ctx, as_of=DAY)}
            if not in_domain(bundled, "main", uid):
                assert exps.isdisjoint({"checkout_button", "upsell_banner", "price_display"})
            else:
                assert {"checkout_button", "upsell_banner"} <= exps


class TestTargetingAndStatus:
    def test_untargeted_units_are_in_no_experiment_of_that_layer(self, bundled):
        for uid in UNITS[:3000]:
            minors = assign_unit(
                bundled, "user_id", uid, {"age": 16, "org_plan": "free"}, as_of=DAY
            )
            assert "checkout_button" not in {a.experiment_id for a in minors}

    def test_draft_experiments_get_nobody(self, bundled):
        assert all(
            a.experiment_id != "holiday_theme"
            for uid in UNITS[:5000]
            for a in assign_unit(bundled, "user_id", uid, {}, as_of=DAY)
        )

    def test_null_unit_id_is_an_error(self, bundled):
        with pytest.raises(ValueError, match="unit_id is None"):
            assign_unit(bundled, "user_id", None, {}, as_of=DAY)


def _a(layer, priority, params, service=None, vid=1):
    return Assignment(
        "user_id", "u", f"e_{layer}", vid, "v", False, layer, "d", priority, service, 0, params
    )


class TestMerge:
    def test_deep_merge_is_recursive_and_does_not_mutate(self):
        base = {"a": {"x": 1, "y": {"z": 1}}, "l": [1, 2]}
        out = deep_merge(base, {"a": {"y": {"w": 2}}, "l": [3]})
        assert out == {"a": {"x": 1, "y": {"z": 1, "w": 2}}, "l": [3]}
        assert base == {"a": {"x": 1, "y": {"z": 1}}, "l": [1, 2]}

    def test_a_scalar_replaces_a_mapping_and_back(self):
        assert deep_merge({"a": {"x": 1}}, {"a": 5}) == {"a": 5}
        assert deep_merge({"a": 5}, {"a": {"x": 1}}) == {"a": {"x": 1}}

    def test_higher_priority_wins_whatever_the_input_order(self):
        rows = [
            _a("hi", 300, '{"t":{"ms":300}}', "svc", 3),
            _a("lo", 100, '{"t":{"ms":100,"algo":"x"}}', "svc", 1),
            _a("other", 200, '{"t":{"ms":999}}', "elsewhere", 2),
            _a("all", 200, '{"flag":true}', None, 4),
        ]
        assert [a.layer_id for a in merge_order(rows)] == ["lo", "all", "other", "hi"]
        view = service_view(rows, ["svc", "elsewhere"])
        assert view["svc"] == {
            "parameters": {"t": {"ms": 300, "algo": "x"}, "flag": True},
            "vids": [1, 4, 3],
            "matched_layers": ["lo", "all", "hi"],
        }
        assert view["elsewhere"]["parameters"] == {"t": {"ms": 999}, "flag": True}
        assert view["elsewhere"]["vids"] == [4, 2]

    def test_bundled_checkout_service_merges_two_layers(self, bundled):
        ctx = {"age": 30, "org_plan": "pro", "country": "US", "is_premium": True}
        for uid in UNITS:
            rows = assign_unit(bundled, "user_id", uid, ctx, as_of=DAY)
            by_exp = {a.experiment_id: a for a in rows}
            up, co = by_exp.get("upsell_banner"), by_exp.get("checkout_button")
            if up and co and up.variant_name == "treatment" and co.variant_name == "treatment":
                break
        else:
            pytest.fail("no unit in both treatments")
        params = service_view(rows, ["checkout"])["checkout"]["parameters"]
        # checkout (priority 300) overrides upsell's (200) button text; upsell's banner stays.
        assert params["button"] == json.loads(co.params)["button"]
        assert params["banner"] == {"enabled": True, "bundle": "premium"}


class TestWindow:
    """Assigned only inside ``[start_date, end_date]`` (both inclusive, UTC days)."""

    @pytest.mark.parametrize(
        ("day", "live"),
        [
            (dt.date(2026, 11, 7), False),  # the day before start_date
            (dt.date(2026, 11, 8), True),  # start_date: inclusive
            (dt.date(2026, 11, 14), True),  # end_date: inclusive
            (dt.date(2026, 11, 15), False),  # the day after end_date
        ],
    )
    def test_seed_003_window_edges(self, seed003, day, live):
        rows = [a for uid in UNITS[:2000] for a in assign_unit(seed003, "user_id", uid, {},
                                                                as_of=day)]  # fmt: skip
        assert bool(rows) is live
        if live:
            assert {a.experiment_id for a in rows} == {"a", "b", "c", "aa", "bb", "cc"}

    def test_bundled_experiments_outside_their_window_get_no_units(self, bundled):
        ctx = {"age": 30, "country": "US", "is_premium": False, "org_plan": "free",
               "org_seats": 10, "signup_date": "2026-01-01"}  # fmt: skip
        for day in (dt.date(2026, 10, 31), DAY, dt.date(2026, 11, 15), dt.date(2026, 12, 2)):
            live = {e.id for e in bundled.experiments if e.assigned_on(day)}
            got = {a.experiment_id for u in UNITS[:3000]
                   for a in assign_unit(bundled, "user_id", u, ctx, as_of=day)}  # fmt: skip
            assert got <= live, day
            for e in bundled.experiments:
                if e.id in got:
                    assert e.start_date <= day <= e.end_date
                    assert e.status == "running"
        # the demo's first day leaves no running experiment out (the demo assigns on that day)
        assert all(e.assigned_on(DAY) for e in bundled.experiments if e.assigned)

    def test_default_is_today_utc(self, seed003, monkeypatch):
        import strata.assignment as assignment

        monkeypatch.setattr(assignment, "utc_today", lambda: dt.date(2026, 12, 2))
        assert assign_unit(seed003, "user_id", "u00000001", {}) == []
        monkeypatch.setattr(assignment, "utc_today", lambda: DAY)
        assert assign_unit(seed003, "user_id", "u00000001", {})
