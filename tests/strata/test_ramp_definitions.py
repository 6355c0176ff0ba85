"""Sticky ramps in definitions and the Python reference (issue #16, item 3)."""

from __future__ import annotations

import datetime as dt

import pytest

from strata.assignment import Previous, assign_unit
from strata.definitions import DefinitionError, _experiment_json, bundled_path, load

DAY1 = dt.date(2026, 11, 8)
DAY2 = dt.date(2026, 11, 9)

RAMPED = """
layers:
  - {id: lay, salt: ramp-salt, unit_type: user_id, priority: 100}
experiments:
  - id: ramped
    name: Ramped
    owner: me
    layer: lay
    status: running
    start_date: 2026-11-08
    end_date: 2026-11-30
    slots: [0, 10000]
    variants:
      - {vid: 1, name: control, is_control: true, weight: 90}
      - {vid: 2, name: treatment, weight: 10}
    ramp:
      - date: 2026-11-09
        weights: {control: 50, treatment: 50}
"""


def _defs(tmp_path, text=RAMPED):
    (tmp_path / "d.yaml").write_text(text)
    return load(tmp_path)


def test_a_ramp_gives_the_ranges_of_each_day(tmp_path):
    e = _defs(tmp_path).experiment("ramped")
    assert e.sticky  # the default with a ramp
    assert [e.period(d) for d in (DAY1, DAY2, dt.date(2026, 11, 30))] == [0, 1, 1]
    assert [(v.name, v.start, v.end) for v in e.variants_on(DAY1)] == [
        ("control", 0, 9000),
        ("treatment", 9000, 10000),
    ]
    assert [(v.name, v.start, v.end) for v in e.variants_on(DAY2)] == [
        ("control", 0, 5000),
        ("treatment", 5000, 10000),
    ]
    assert [d for d, _ in e.periods()] == [DAY1, DAY2]


def test_bundled_definitions_are_not_sticky_and_keep_their_version():
    defs = load(bundled_path())
    assert not any(e.sticky or e.ramp for e in defs.experiments)
    assert all("sticky" not in _experiment_json(e) for e in defs.experiments)
    assert all("ramp" not in _experiment_json(e) for e in defs.experiments)


def test_sticky_can_be_switched_off_and_changes_the_version(tmp_path):
    on = _defs(tmp_path)
    off = _defs(tmp_path, RAMPED.replace("    ramp:", "    sticky: false\n    ramp:"))
    assert not off.experiment("ramped").sticky
    assert off.version != on.version


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("date: 2026-11-09", "date: 2026-11-08", "is not inside (2026-11-08, 2026-11-30]"),
        ("date: 2026-11-09", "date: 2026-12-09", "is not inside (2026-11-08, 2026-11-30]"),
        ("{control: 50, treatment: 50}", "{control: 50}", "must name every variant"),
        ("{control: 50, treatment: 50}", "{control: 50, treatment: 0}", "must be > 0"),
    ],
    ids=["on start", "after end", "missing variant", "zero weight"],
)
def test_bad_ramps_are_refused_with_where(tmp_path, old, new, message):
    with pytest.raises(DefinitionError) as err:
        _defs(tmp_path, RAMPED.replace(old, new))
    assert "d.yaml: experiments[0]" in str(err.value)
    assert message in str(err.value)


def test_ramp_dates_must_increase(tmp_path):
    text = RAMPED + ("      - date: 2026-11-09\n        weights: {control: 40, treatment: 60}\n")
    with pytest.raises(DefinitionError, match=r"ramp\[1\]\.date 2026-11-09 is not after"):
        _defs(tmp_path, text)


def test_a_ramp_needs_weighted_variants(tmp_path):
    text = (
        RAMPED.replace("    slots: [0, 10000]\n", "")
        .replace("weight: 90}", "start: 0, end: 9000}")
        .replace("weight: 10}", "start: 9000, end: 10000}")
    )
    with pytest.raises(DefinitionError, match="a ramp needs weighted variants"):
        _defs(tmp_path, text)


def test_a_ramp_step_must_not_overlap_another_experiment_that_day(tmp_path):
    text = RAMPED.replace("slots: [0, 10000]", "slots: [0, 5000]").replace(
        "weights: {control: 50, treatment: 50}",
        "weights: {control: 50, treatment: 50}\n        slots: [0, 6000]",
    )
    text += """
  - id: other
    name: Other
    owner: me
    layer: lay
    status: running
    start_date: 2026-11-08
    end_date: 2026-11-30
    slots: [5000, 10000]
    variants:
      - {vid: 3, name: control, is_control: true, weight: 1}
      - {vid: 4, name: treatment, weight: 1}
"""
    with pytest.raises(DefinitionError) as err:
        _defs(tmp_path, text)
    problems = err.value.problems
    assert all("from 2026-11-09" in p for p in problems), problems  # not the base day
    assert any("experiments[0].ramp[0]" in p and "overlaps" in p for p in problems)
    # the same layout without the overlap is valid
    _defs(tmp_path, text.replace("slots: [0, 6000]", "slots: [0, 5000]"))


def _assign(defs, uid, day, previous=None, ctx=None):
    rows = assign_unit(defs, "user_id", uid, ctx or {}, as_of=day, previous=previous)
    return rows[0] if rows else None


def test_sticky_units_keep_their_variant_and_new_units_split_by_the_new_weights(tmp_path):
    defs = _defs(tmp_path)
    old = [f"u{i:07d}" for i in range(20_000)]
    new = [f"n{i:07d}" for i in range(20_000)]
    day1 = {u: _assign(defs, u, DAY1) for u in old}
    assert all(a is not None and a.first_assigned_date == DAY1 for a in day1.values())
    share1 = sum(a.variant_name == "treatment" for a in day1.values()) / len(old)
    assert abs(share1 - 0.10) < 0.01
    prev = {
        u: {"ramped": Previous(a.variant_id, a.slot, a.first_assigned_date)}
        for u, a in day1.items()
    }
    kept = [_assign(defs, u, DAY2, prev[u]) for u in old]
    assert [(a.variant_id, a.slot, a.first_assigned_date, a.ramp_period) for a in kept] == [
        (a.variant_id, a.slot, DAY1, 0) for a in day1.values()
    ]
    fresh = [_assign(defs, u, DAY2) for u in new]
    assert all(a.first_assigned_date == DAY2 and a.ramp_period == 1 for a in fresh)
    share2 = sum(a.variant_name == "treatment" for a in fresh) / len(new)
    assert abs(share2 - 0.50) < 0.01
    # without stickiness the old units move to the new ranges: ~44% of them would switch
    non_sticky = _defs(tmp_path, RAMPED.replace("    ramp:", "    sticky: false\n    ramp:"))
    moved = sum(_assign(non_sticky, u, DAY2, prev[u]).variant_id != day1[u].variant_id for u in old)
    assert abs(moved / len(old) - 0.40) < 0.02  # control slots [5000, 9000) become treatment


def test_a_sticky_unit_leaves_when_targeting_no_longer_matches(tmp_path):
    text = RAMPED.replace(
        "    slots: [0, 10000]",
        "    slots: [0, 10000]\n    targeting: {type: field, field: country, op: eq, values: [US]}",
    )
    defs = _defs(tmp_path, text)
    uid = next(
        u for u in (f"u{i}" for i in range(1000)) if _assign(defs, u, DAY1, ctx={"country": "US"})
    )
    a = _assign(defs, uid, DAY1, ctx={"country": "US"})
    prev = {"ramped": Previous(a.variant_id, a.slot, DAY1)}
    assert _assign(defs, uid, DAY2, prev, {"country": "US"}).variant_id == a.variant_id
    assert _assign(defs, uid, DAY2, prev, {"country": "DE"}) is None


def test_a_kept_unit_is_in_no_other_experiment_of_its_layer(tmp_path):
    """``ramped`` shrinks from [0, 5000) to [0, 2500) on day 2 while ``other`` grows from
    [5000, 10000) to [2500, 10000): a unit kept in ``ramped`` with a slot in [2500, 5000) stays
    out of ``other``; a new unit there joins ``other``."""
    text = RAMPED.replace("slots: [0, 10000]", "slots: [0, 5000]").replace(
        "weights: {control: 50, treatment: 50}",
        "weights: {control: 50, treatment: 50}\n        slots: [0, 2500]",
    )
    text += """
  - id: other
    name: Other
    owner: me
    layer: lay
    status: running
    start_date: 2026-11-08
    end_date: 2026-11-30
    slots: [5000, 10000]
    variants:
      - {vid: 3, name: control, is_control: true, weight: 1}
      - {vid: 4, name: treatment, weight: 1}
    ramp:
      - date: 2026-11-09
        weights: {control: 1, treatment: 1}
        slots: [2500, 10000]
"""
    defs = _defs(tmp_path, text)
    units = [f"u{i}" for i in range(3000)]
    middle = [u for u in units if 2500 <= _assign(defs, u, DAY2, ctx={}).slot < 5000]
    assert middle
    assert all(_assign(defs, u, DAY2).experiment_id == "other" for u in middle)
    for u in middle:
        a = _assign(defs, u, DAY1)
        assert a.experiment_id == "ramped"
        prev = {"ramped": Previous(a.variant_id, a.slot, DAY1)}
        rows = assign_unit(defs, "user_id", u, {}, as_of=DAY2, previous=prev)
        assert [(r.experiment_id, r.variant_id) for r in rows] == [("ramped", a.variant_id)]
