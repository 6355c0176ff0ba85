"""Experiment states (issue 16, item 2): the transition table, ``shipped_variant`` validation,
the check against the recorded state, and what the pure reference serves a shipped experiment."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from strata import contracts
from strata.assignment import assign_unit, service_view
from strata.contracts import STATUSES, TRANSITIONS, is_legal_transition
from strata.definitions import DefinitionError, bundled_path, load
from strata.lifecycle import (
    IllegalTransition,
    RecordedState,
    check_transitions,
    next_states,
    states_from_rows,
    transition_problems,
)

DAY = dt.date(2026, 11, 8)
#: Every legal (from, to) change of status, written out: the table in contracts must match it.
LEGAL = {
    ("draft", "running"),
    ("draft", "stopped"),
    ("running", "paused"),
    ("running", "stopped"),
    ("running", "shipped"),
    ("paused", "running"),
    ("paused", "stopped"),
    ("paused", "shipped"),
    ("stopped", "shipped"),
} | {(s, s) for s in STATUSES}


@pytest.mark.parametrize("was", STATUSES)
@pytest.mark.parametrize("now", STATUSES)
def test_transition_table(was, now):
    assert is_legal_transition(was, now) == ((was, now) in LEGAL)


def test_the_table_names_every_status_and_only_statuses():
    assert set(TRANSITIONS) == set(STATUSES)
    assert all(set(to) <= set(STATUSES) for to in TRANSITIONS.values())
    assert TRANSITIONS["shipped"] == ()  # terminal


def test_new_experiments_and_unknown_recorded_statuses():
    assert [s for s in STATUSES if is_legal_transition(None, s)] == [
        "draft", "running", "stopped", "shipped"
    ]  # fmt: skip
    assert is_legal_transition("RUNNING", "paused")  # the table's spelling is not trusted
    assert is_legal_transition("archived", "archived")  # type: ignore[arg-type]
    assert not is_legal_transition("archived", "running")


def test_served_assigned_and_frozen_statuses():
    assert [s for s in STATUSES if contracts.is_served(s)] == ["running"]
    assert contracts.FROZEN_STATUSES == ("paused", "stopped", "shipped")
    assert contracts.ENDED_STATUSES == ("stopped", "shipped")
    assert contracts.shipped_row_id("x") == "shipped:x"


# --- definitions ------------------------------------------------------------------------------


def _defs_with(tmp_path: Path, old: str, new: str, file: str = "checkout.yaml") -> Path:
    """A copy of the bundled definitions with one edit in ``file``."""
    folder = tmp_path / "defs"
    shutil.copytree(bundled_path(), folder)
    text = (folder / file).read_text()
    assert old in text
    (folder / file).write_text(text.replace(old, new, 1))
    return folder


CHECKOUT_RUNNING = "    layer: checkout\n    status: running\n"


def _status(status: str, extra: str = "") -> str:
    return f"    layer: checkout\n    status: {status}\n{extra}"


@pytest.mark.parametrize("shipped", ["1002", "treatment"])
def test_shipped_names_its_variant_by_vid_or_name(tmp_path, shipped):
    folder = _defs_with(
        tmp_path, CHECKOUT_RUNNING, _status("shipped", f"    shipped_variant: {shipped}\n")
    )
    e = load(folder).experiment("checkout_button")
    assert (e.status, e.shipped_vid, e.shipped_variant.name) == ("shipped", 1002, "treatment")
    assert not e.assigned
    assert e.frozen


@pytest.mark.parametrize(
    ("status", "extra", "message"),
    [
        ("shipped", "", "a shipped experiment names its shipped_variant (vid or name)"),
        ("shipped", "    shipped_variant: 1003\n", "shipped_variant 1003 is not a variant"),
        ("shipped", "    shipped_variant: blue\n", "shipped_variant 'blue' is not a variant"),
        ("running", "    shipped_variant: 1002\n", "shipped_variant is only for status"),
        ("archived", "", "Input should be 'draft', 'running', 'paused', 'stopped' or 'shipped'"),
    ],
    ids=["missing", "unknown-vid", "unknown-name", "not-shipped", "unknown-status"],
)
def test_bad_states_are_validation_errors(tmp_path, status, extra, message):
    folder = _defs_with(tmp_path, CHECKOUT_RUNNING, _status(status, extra))
    with pytest.raises(DefinitionError) as caught:
        load(folder)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("checkout.yaml: experiments[0]")
    assert message in caught.value.problems[0]


def test_shipping_needs_a_launch_layer(tmp_path):
    folder = _defs_with(
        tmp_path, CHECKOUT_RUNNING, _status("shipped", "    shipped_variant: 1002\n")
    )
    traffic = folder / "traffic.yaml"
    traffic.write_text(traffic.read_text().replace("    launch: true\n", ""))
    with pytest.raises(DefinitionError) as caught:
        load(folder)
    assert caught.value.problems == [
        "checkout.yaml: experiments[0].status: a shipped experiment is served through the launch "
        "layer, and the definitions declare none (a layer with launch: true)"
    ]


def test_the_bundled_version_is_unchanged_by_the_new_fields():
    # the demo's definitions are all running or draft: their version (and run ids) stay
    assert load(bundled_path()).version == load(bundled_path()).version
    assert all(e.shipped_vid is None for e in load(bundled_path()).experiments)


# --- against the recorded state ---------------------------------------------------------------


def test_an_illegal_change_names_experiment_states_and_file(tmp_path):
    folder = _defs_with(tmp_path, CHECKOUT_RUNNING, _status("draft"))
    defs = load(folder)
    recorded = {"checkout_button": RecordedState("running", DAY, "abc123")}
    with pytest.raises(IllegalTransition) as caught:
        check_transitions(defs, recorded, "strata.experiments")
    assert caught.value.problems == [
        "checkout.yaml: experiments.checkout_button.status: illegal change running -> draft "
        "(recorded running in strata.experiments by definitions abc123 on 2026-11-08); legal "
        "from running: running, paused, stopped, shipped"
    ]
    assert isinstance(caught.value, DefinitionError)  # a validation error like any other


def test_legal_changes_pass_and_new_experiments_cannot_start_paused(tmp_path):
    defs = load(_defs_with(tmp_path, CHECKOUT_RUNNING, _status("paused")))
    check_transitions(defs, {"checkout_button": RecordedState("running")})
    check_transitions(defs, {"checkout_button": RecordedState("paused")})
    problems = transition_problems(defs, {})
    assert problems == [
        "checkout.yaml: experiments.checkout_button.status: a new experiment cannot start "
        "'paused' (it never ran); declare it draft or running"
    ]
    assert transition_problems(defs, None) == problems  # no table yet: every experiment is new


def test_next_states_keep_the_day_of_an_unchanged_status(tmp_path):
    defs = load(_defs_with(tmp_path, CHECKOUT_RUNNING, _status("stopped")))
    later = DAY + dt.timedelta(days=4)
    was = {
        "checkout_button": RecordedState("running", DAY, "v1"),
        "upsell_banner": RecordedState("running", DAY, "v1"),
    }
    states = next_states(defs, was, later)
    assert states["checkout_button"] == RecordedState("stopped", later, defs.version)
    assert states["upsell_banner"] == RecordedState("running", DAY, "v1")
    assert states["dark_mode"] == RecordedState("running", later, defs.version)  # new


def test_states_from_an_older_table():
    rows = [{"experiment_id": "a", "status": "Running", "definitions_version": "v0"}]
    assert states_from_rows(rows) == {"a": RecordedState("running", None, "v0")}


# --- what a shipped experiment serves (the pure reference) ------------------------------------


CTX = {"age": 30, "country": "US", "is_premium": False, "org_plan": "free", "org_seats": 10}


def test_a_shipped_variant_is_served_to_every_unit_in_the_layer(tmp_path):
    folder = _defs_with(
        tmp_path, CHECKOUT_RUNNING, _status("shipped", "    shipped_variant: treatment\n")
    )
    defs = load(folder)
    main = defs.domain("main")
    in_main, outside, minors = 0, 0, 0
    for i in range(400):
        uid = f"u{i:08d}"
        rows = assign_unit(defs, "user_id", uid, CTX, as_of=DAY)
        shipped = [r for r in rows if r.experiment_id == "shipped:checkout_button"]
        assert not [r for r in rows if r.experiment_id == "checkout_button"]  # not as experiment
        from strata.bucketing import slot

        if main.start <= slot(main.salt, uid) < main.end:
            in_main += 1
            assert [(r.variant_id, r.layer_id, r.layer_priority, r.service) for r in shipped] == [
                (1002, "launch", 100, "checkout")
            ]
            view = service_view(rows, ["checkout"])["checkout"]
            assert view["parameters"]["button"]["color"] == "green"
        else:
            outside += 1
            assert shipped == []
        young = assign_unit(defs, "user_id", uid, {**CTX, "age": 16}, as_of=DAY)
        minors += any(r.experiment_id.startswith("shipped:") for r in young)
    assert in_main > 300
    assert outside > 10
    assert minors == 0  # the experiment's targeting still applies
    # ... and on any day: a launch has no window
    later = assign_unit(defs, "user_id", "u00000042", CTX, as_of=dt.date(2027, 6, 1))
    assert "shipped:checkout_button" in [r.experiment_id for r in later]


def test_a_running_launch_experiment_overrides_shipped_params(tmp_path):
    folder = _defs_with(
        tmp_path,
        "    layer: pricing\n    status: running\n",
        "    layer: pricing\n    status: shipped\n    shipped_variant: control\n",
        "more.yaml",
    )
    defs = load(folder)
    from strata.assignment import Served, merged_services

    rows = [
        Served(100, "launch", None, 9002, {"search": {"engine": "v2"}}),
        Served(100, "launch", "pricing", 4001, {"search": {"engine": "shipped"}}, shipped=True),
    ]
    merged = merged_services(rows, ["pricing"])["pricing"]
    assert merged["parameters"] == {"search": {"engine": "v2"}}
    assert merged["vids"] == [4001, 9002]
    assert defs.experiment("price_display").shipped_vid == 4001


def test_serving_rows_stay_out_of_the_analysis():
    """dbt's staging drops ids with ':' (it cannot import the prefix); no experiment id has one."""
    from strata.definitions import ExperimentModel

    root = Path(__file__).resolve().parents[2]
    sql = (root / "dbt_project/models/staging/strata/stg_strata__assignments.sql").read_text()
    assert "where instr(experiment_id, ':') = 0" in sql
    assert ":" in contracts.SHIPPED_ROW_PREFIX
    assert ":" not in ExperimentModel.model_fields["id"].metadata[0].pattern


def test_post_experiment_serves_shipped_params_online_and_from_the_lookup(tmp_path):
    """The online evaluation route follows the served rule: shipped params, no experiment."""
    from strata.bucketing import slot
    from strata_apps.endpoint import evaluate_services

    defs = load(
        _defs_with(tmp_path, CHECKOUT_RUNNING, _status("shipped", "    shipped_variant: 1002\n"))
    )
    main = defs.domain("main")
    uid = next(
        f"u{i:08d}" for i in range(100) if main.start <= slot(main.salt, f"u{i:08d}") < main.end
    )
    online, sources = evaluate_services([("user_id", uid)], [None], defs, CTX, ["checkout"], DAY)
    assert sources == {"user_id": "online"}
    assert online["checkout"]["parameters"]["button"]["color"] == "green"
    assert 1002 in online["checkout"]["vids"]
    assert "launch" in online["checkout"]["matched_layers"]
    assert 1001 not in online["checkout"]["vids"]  # not the experiment's own assignment

    shipped = {
        "id": "shipped:checkout_button",
        "layer": "launch",
        "priority": 100,
        "service": "checkout",
        "shipped": True,
        "variants": {"1002": {"params": {"button": {"color": "green", "text": "Buy"}}}},
    }
    launch = {"id": "search_v2_launch", "layer": "launch", "priority": 100, "service": None,
              "variants": {"9002": {"params": {"button": {"color": "blue"}}}}}  # fmt: skip
    held, _ = evaluate_services(
        [("user_id", uid)], [[(shipped, 1002), (launch, 9002)]], defs, CTX, ["checkout"], DAY
    )
    # both served (the shipped entry does not take the launch layer); the experiment overrides
    assert held["checkout"]["parameters"]["button"] == {"color": "blue", "text": "Buy"}
    assert held["checkout"]["vids"] == [1002, 9002]


@pytest.mark.parametrize(("status", "free"), [("stopped", True), ("shipped", True),
                                              ("paused", False), ("running", False)])  # fmt: skip
def test_stopped_and_shipped_free_their_slots(tmp_path, status, free):
    extra = "    shipped_variant: 1002\n" if status == "shipped" else ""
    folder = _defs_with(tmp_path, CHECKOUT_RUNNING, _status(status, extra))
    (folder / "next.yaml").write_text(
        "experiments:\n"
        "  - {id: checkout_next, name: Next, owner: t@strata.dev, layer: checkout,\n"
        "     status: running, start_date: 2026-11-15, end_date: 2026-11-30,\n"
        "     variants: [{vid: 1101, name: control, is_control: true, start: 0, end: 100},\n"
        "                {vid: 1102, name: t, start: 100, end: 200}]}\n"
    )
    if free:
        assert load(folder).experiment("checkout_next").status == "running"
    else:
        with pytest.raises(DefinitionError, match="overlaps checkout_button/control"):
            load(folder)
