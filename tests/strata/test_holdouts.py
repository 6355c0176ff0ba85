"""Domain holdouts (issue #16, item 4): a share of a domain's units in none of its experiments."""

from __future__ import annotations

import datetime as dt

import pytest

from strata.assignment import assign_unit, held_out, holdout_assignments
from strata.bucketing import slot
from strata.definitions import DefinitionError, bundled_path, load

DAY = dt.date(2026, 11, 8)
HELD = """
domains:
  - id: shop
    salt: top-split
    slots: [0, 10000]
    holdout: {percent: 20, salt: shop-holdout, start_date: 2026-11-01, end_date: 2027-04-30,
              holdout_vid: 9901, rest_vid: 9902}
  - {id: inner, parent: shop, salt: inner-split, slots: [0, 10000]}
layers:
  - {id: in_shop, domain: shop, salt: shop-layer, unit_type: user_id, priority: 100}
  - {id: in_inner, domain: inner, salt: inner-layer, unit_type: user_id, priority: 200}
  - {id: outside, salt: global-layer, unit_type: user_id, priority: 300}
experiments:
"""


def _exp(eid, layer, vid):
    return f"""
  - id: {eid}
    name: {eid}
    owner: me
    layer: {layer}
    status: running
    start_date: 2026-11-01
    end_date: 2026-11-30
    slots: [0, 10000]
    variants:
      - {{vid: {vid}, name: control, is_control: true, weight: 1}}
      - {{vid: {vid + 1}, name: treatment, weight: 1}}
    metrics:
      - {{id: conversion, name: Conversion, role: primary, nominator: count(user.unit.purchase),
         denominator: count(user.global.exposure)}}
      - {{id: rev_{eid}, name: Revenue, role: secondary, nominator: value(user.unit.purchase),
         denominator: count(user.global.exposure)}}
"""


TEXT = HELD + _exp("a", "in_shop", 1) + _exp("b", "in_inner", 3) + _exp("c", "outside", 5)


@pytest.fixture
def defs(tmp_path):
    (tmp_path / "d.yaml").write_text(TEXT)
    return load(tmp_path)


def test_held_out_units_are_in_no_experiment_of_the_domain(defs):
    units = [f"u{i:07d}" for i in range(20_000)]
    held = [u for u in units if held_out(defs, "inner", u)]
    assert abs(len(held) / len(units) - 0.20) < 0.01
    assert all(slot("shop-holdout", u) < 2000 for u in held)
    for u in units[:5000]:
        got = {a.experiment_id for a in assign_unit(defs, "user_id", u, {}, as_of=DAY)}
        # the global layer (outside the domain) still assigns every unit
        assert got == ({"c"} if held_out(defs, "shop", u) else {"a", "b", "c"})


def test_a_holdout_needs_its_own_salt(tmp_path):
    (tmp_path / "d.yaml").write_text(TEXT.replace("salt: shop-holdout", "salt: shop-layer"))
    with pytest.raises(DefinitionError, match=r"domains\[0\]\.holdout\.salt: 'shop-layer' is"):
        load(tmp_path)


def test_percent_is_checked(tmp_path):
    (tmp_path / "d.yaml").write_text(TEXT.replace("percent: 20", "percent: 100"))
    with pytest.raises(DefinitionError, match=r"domains\[0\]\.holdout\.percent"):
        load(tmp_path)


def test_no_holdout_keeps_the_bundled_version_and_rows():
    defs = load(bundled_path())
    assert all(d.holdout_salt is None for d in defs.domains)
    assert not any(held_out(defs, d.id, "u00000042") for d in defs.domains)


def test_the_comparison_rows_cover_the_domain_with_the_holdout_as_control(defs):
    (h,) = defs.holdouts
    assert (h.experiment_id, h.slots, h.holdout_vid, h.rest_vid) == (
        "holdout_shop",
        2000,
        9901,
        9902,
    )
    assert [m.id for m in h.metrics] == ["conversion"]  # primary metrics of a and b, once
    rows = [holdout_assignments(defs, "user_id", f"u{i:07d}", as_of=DAY) for i in range(5000)]
    assert all(len(r) == 1 for r in rows)  # the domain holds every unit
    for (a,) in rows:
        assert a.is_control == held_out(defs, "shop", a.unit_id)
        assert (a.variant_name, a.variant_id) == (
            ("holdout", 9901) if a.is_control else ("rest", 9902)
        )
    assert holdout_assignments(defs, "device_id", "d1", as_of=DAY) == []
    assert holdout_assignments(defs, "user_id", "u1", as_of=dt.date(2027, 5, 1)) == []


def test_a_comparison_needs_all_its_fields_and_unique_vids(tmp_path):
    (tmp_path / "d.yaml").write_text(TEXT.replace(", rest_vid: 9902", ""))
    with pytest.raises(DefinitionError, match="needs start_date, end_date, holdout_vid and rest"):
        load(tmp_path)
    (tmp_path / "d.yaml").write_text(TEXT.replace("rest_vid: 9902", "rest_vid: 3"))
    with pytest.raises(DefinitionError, match=r"holdout\.rest_vid: vid 3 is already used"):
        load(tmp_path)
