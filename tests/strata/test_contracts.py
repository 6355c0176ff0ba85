"""strata.contracts: one home per contract, and the goals catalogue every stage follows."""

from __future__ import annotations

import typing

import pytest

from strata import contracts
from strata.contracts import GoalsError

SHARE = "  - name: share\n    description: The page was shared.\n    synthetic: {rate: 0.05}\n"


@pytest.fixture
def catalogue(tmp_path, monkeypatch):
    """A copy of the bundled catalogue with one more goal, in use through STRATA_GOALS_FILE."""
    path = tmp_path / "goals.yaml"
    path.write_text(contracts.GOALS_FILE.read_text() + SHARE)
    monkeypatch.setenv(contracts.GOALS_FILE_ENV, str(path))
    return path


def test_bundled_catalogue():
    assert contracts.goal_names() == ("session_start", "click", "add_to_cart", "purchase", "invite")
    assert contracts.value_goals() == ("purchase",)
    purchase = contracts.goals()[3]
    assert (purchase.has_value, purchase.reject_reason) == (True, "invalid_purchase_value")
    assert contracts.dbt_vars() == {
        "goals": ["session_start", "click", "add_to_cart", "purchase", "invite"],
        "value_goals": ["purchase"],
        "unit_types": ["device_id", "user_id", "url"],
        "segment_dimensions": ["country", "platform", "app_version_major", "visitor", "plan"],
    }


def test_one_edit_adds_a_goal_everywhere(catalogue):
    from expectations.suites import raw_events
    from strata.synthetic import GeneratorConfig, rate_goals

    assert contracts.dbt_vars()["goals"][-1] == "share"
    assert rate_goals() == (("invite", 0.1), ("share", 0.05))
    assert GeneratorConfig().extra_goals == (("invite", 0.1), ("share", 0.05))
    names = [
        e.value_set for e in raw_events().expectations if e.expectation_type.endswith("in_set")
    ]
    assert names == [["session_start", "click", "add_to_cart", "purchase", "invite", "share"]]


def test_value_goals_each_get_their_checks(tmp_path, monkeypatch):
    from expectations.suites import raw_events

    path = tmp_path / "goals.yaml"
    path.write_text(contracts.GOALS_FILE.read_text() + "  - name: refund\n    value: true\n")
    monkeypatch.setenv(contracts.GOALS_FILE_ENV, str(path))
    assert contracts.dbt_vars()["value_goals"] == ["purchase", "refund"]
    conditions = [
        e.row_condition.pass_through_filter for e in raw_events().expectations if e.row_condition
    ]
    assert conditions == ["event_name = 'purchase'", "event_name = 'refund'"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  - name: exposure\n", "reserved"),
        ("  - name: pre_click\n", "reserved"),
        ("  - name: Share\n", "lower-case identifier"),
        ("  - name: click\n", "declared twice: click"),
        ("  - name: share\n    synthetic: {rate: 1.5}\n", "synthetic must be"),
        ("  - name: share\n    synthetic: sometimes\n", "synthetic must be"),
        ("  - name: share\n    synthetic: 5\n", "synthetic must be"),
        ("  - name: share\n    value: true\n    synthetic: {rate: 0.1}\n", "no amounts"),
        ("  - name: share\n    value: yes please\n", "true or false"),
        ("  - name: share\n    colour: red\n", "unknown field"),
    ],
)
def test_bad_catalogues_say_what_is_wrong(tmp_path, entry, message):
    path = tmp_path / "goals.yaml"
    path.write_text(contracts.GOALS_FILE.read_text() + entry)
    with pytest.raises(GoalsError, match=message):
        contracts.goals(path)


def test_funnel_is_only_for_the_funnel_goals(tmp_path):
    from strata.synthetic import rate_goals

    path = tmp_path / "goals.yaml"
    path.write_text(contracts.GOALS_FILE.read_text() + "  - name: share\n    synthetic: funnel\n")
    with pytest.raises(ValueError, match="rate"):
        rate_goals(contracts.goals(path))


def test_statuses_assigned_and_served():
    from strata.definitions import ExperimentModel

    assert contracts.STATUSES == ("draft", "running", "paused", "stopped", "shipped")
    assert typing.get_args(ExperimentModel.model_fields["status"].annotation) == contracts.STATUSES
    assert [s for s in contracts.STATUSES if contracts.is_served(s)] == ["running"]
    assert contracts.ASSIGNED_STATUSES == contracts.SERVED_STATUSES == ("running",)
    # a status Strata does not know is not served
    assert not contracts.is_served("archived")
    assert not contracts.is_served(None)
    assert contracts.is_served("RUNNING")


def test_stages_use_the_same_unit_types_and_tables():
    from expectations.suites import SUITES
    from spark_jobs.generate_synthetic import TABLES
    from strata.keyspace import UNIT_CODES

    assert tuple(UNIT_CODES) == contracts.UNIT_ID_TYPES
    assert set(SUITES) == {contracts.RAW_EVENTS, contracts.ASSIGNMENTS, contracts.GOAL_AGGREGATES}
    assert TABLES == ("orgs", "users", "devices", "raw_events")


def test_dbt_names_the_tables_of_the_contracts():
    """dbt sources keep their table names in YAML (readable, and the Cosmos manifest does not
    depend on vars); this pins them, and the dbt models Strata reads back, to strata.contracts."""
    from pathlib import Path

    import yaml

    project = Path(__file__).resolve().parents[2] / "dbt_project"
    sources = {
        table["name"]
        for path in project.glob("models/**/_*__sources.yml")
        for source in yaml.safe_load(path.read_text())["sources"]
        for table in source["tables"]
    }
    assert sources == {
        contracts.RAW_EVENTS,
        contracts.USERS,
        contracts.DEVICES,
        contracts.ORGS,
        contracts.ASSIGNMENTS,
        contracts.EXPERIMENTS,
        contracts.EXPOSURE_LOGS,
    }
    models = {p.stem for p in project.glob("models/**/*.sql")}
    assert set(contracts.DBT_TABLES) <= models
