"""The nightly evaluation in the core (``strata evaluate`` and the Airflow DAG both call it):
the plan refuses what is not there with one line, and the evaluation writes every asked date."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pytest

from strata.stats import read_results
from strata.stats.nightly import NightPlan, NothingToEvaluate, evaluate_night, plan_night
from tests.strata.stats.test_results import DAY, aggregates, experiment_record

NAMESPACE = "stats_nightly_test"
DAYS = [DAY - timedelta(days=2), DAY - timedelta(days=1), DAY]


def put(catalog, name: str, frame: pd.DataFrame) -> None:
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    catalog.create_table_if_not_exists(f"{NAMESPACE}.{name}", schema=arrow.schema).overwrite(arrow)


@pytest.fixture(scope="module")
def catalog(settings):
    """exp_a and exp_b with aggregates on three days; exp_c known, never exposed."""
    from strata.stack import iceberg_catalog

    cat = iceberg_catalog(settings)
    cat.create_namespace_if_not_exists(NAMESPACE)
    records = [experiment_record(e) for e in ("exp_a", "exp_b", "exp_c")]
    put(cat, "experiments", pd.DataFrame(records))
    goals, cross = aggregates(5, ["exp_a", "exp_b"])
    put(cat, "goal_aggregates", pd.concat([goals.assign(as_of_date=d) for d in DAYS]))
    put(cat, "goal_cross_aggregates", pd.concat([cross.assign(as_of_date=d) for d in DAYS]))
    return cat


def test_plan_defaults_to_every_experiment_at_the_newest_date(catalog):
    plan = plan_night(catalog, namespace=NAMESPACE)
    assert plan == NightPlan(DAY, ("exp_a", "exp_b"), history=False)
    assert [k["experiment_id"] for k in plan.task_kwargs()] == ["exp_a", "exp_b"]
    assert plan_night(catalog, DAYS[0], ["exp_b", "exp_b"], True, NAMESPACE) == NightPlan(
        DAYS[0], ("exp_b",), history=True
    )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"analysis_date": DAY + timedelta(days=1)}, f"analysis_date {DAY + timedelta(days=1)}: "),
        ({"experiment_ids": ["exp_zz"]}, "unknown experiment(s) ['exp_zz']; known: ['exp_a', "),
        ({"experiment_ids": ["exp_c"]}, f"experiment(s) ['exp_c']: no goal aggregates on {DAY}"),
    ],
    ids=["date-without-data", "unknown-experiment", "not-exposed"],
)
def test_plan_refuses_with_one_line(catalog, kwargs, reason):
    with pytest.raises(NothingToEvaluate) as caught:
        plan_night(catalog, namespace=NAMESPACE, **kwargs)
    assert str(caught.value).startswith(reason)


def test_evaluate_one_date_or_the_whole_history(catalog):
    night = evaluate_night(catalog, ["exp_a", "exp_b"], DAY, namespace=NAMESPACE)
    assert (night.analysis_date, night.dates) == (DAY, 1)
    assert night.evaluated_dates == (DAY,)
    assert [s.analysis_date for s in night.settlements] == [DAY]  # no segment rows: 0 tests
    assert night.settlements[0].tests == night.settlements[0].changed == 0
    stored = read_results(catalog, namespace=NAMESPACE)
    assert len(stored) == night.rows > 0
    assert set(stored["analysis_date"]) == {DAY}
    assert set(map(tuple, night.verdicts()[["exp_id", "variant"]].to_numpy())) == {
        ("exp_a", "1002"), ("exp_b", "1002")
    }  # fmt: skip
    recs = night.recommendations()
    assert recs["exp_id"].tolist() == ["exp_a", "exp_b"]
    assert set(recs["recommendation"]) <= {"ship", "dont_ship", "keep_running", "invalid"}
    top = stored[stored["metric_id"] == "__recommendation__"].set_index("experiment_id")
    assert top.loc[recs["exp_id"], "decision"].tolist() == recs["recommendation"].tolist()
    assert top.loc[recs["exp_id"], "reason"].tolist() == recs["reason"].tolist()
    assert night.recommendation_lines()[0].startswith("recommend exp_a: ")

    again = evaluate_night(catalog, ["exp_a"], DAY, history=True, namespace=NAMESPACE)
    assert (again.analysis_date, again.dates) == (DAY, 3)
    assert again.evaluated_dates == tuple(DAYS)
    assert [s.analysis_date for s in again.settlements] == DAYS
    stored = read_results(catalog, namespace=NAMESPACE)
    by_exp = stored.groupby("experiment_id")["analysis_date"].unique()
    assert sorted(by_exp["exp_a"]) == DAYS
    assert list(by_exp["exp_b"]) == [DAY]
    assert again.rows == 3 * len(stored[stored["experiment_id"] == "exp_b"])


def test_the_cli_runs_the_same_plan_and_evaluation(catalog, monkeypatch, capsys):
    from strata.config import get_settings
    from strata_apps.cli import main

    monkeypatch.setenv("STRATA_NAMESPACE", NAMESPACE)
    get_settings.cache_clear()
    try:
        assert main(["evaluate", "exp_b", "--history"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"evaluated 1 experiments as of {DAY}: ")
        assert "over 3 dates" in out
        assert "exp_b" in out
        assert "\nrecommend exp_b: " in out
        assert main(["evaluate", "exp_zz"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("nothing to evaluate: unknown experiment(s) ['exp_zz']")
    finally:
        get_settings.cache_clear()


ENDED_NAMESPACE = "stats_nightly_ended_test"


@pytest.fixture(scope="module")
def ended_catalog(settings):
    """exp_a stopped on DAYS[1] (its final date), exp_b shipped on DAY, exp_c running."""
    from strata.stack import iceberg_catalog

    cat = iceberg_catalog(settings)
    cat.create_namespace_if_not_exists(ENDED_NAMESPACE)
    records = [
        {**experiment_record(e), "status": status, "status_since": since}
        for e, status, since in (
            ("exp_a", "stopped", DAYS[1]),
            ("exp_b", "shipped", DAY),
            ("exp_c", "running", DAYS[0]),
        )
    ]
    goals, cross = aggregates(5, ["exp_a", "exp_b", "exp_c"])
    for name, frame in (
        ("experiments", pd.DataFrame(records)),
        ("goal_aggregates", pd.concat([goals.assign(as_of_date=d) for d in DAYS])),
        ("goal_cross_aggregates", pd.concat([cross.assign(as_of_date=d) for d in DAYS])),
    ):
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        ident = f"{ENDED_NAMESPACE}.{name}"
        cat.create_table_if_not_exists(ident, schema=arrow.schema).overwrite(arrow)
    return cat


def test_a_stopped_experiment_is_evaluated_a_last_time_then_no_more(ended_catalog):
    from strata.stats.nightly import final_dates

    cat, ns = ended_catalog, ENDED_NAMESPACE
    assert final_dates(cat, ns) == {"exp_a": DAYS[1], "exp_b": DAY}
    plan = plan_night(cat, namespace=ns)
    # exp_b was shipped today: today is its last evaluation, as usual; exp_a's final is DAYS[1]
    assert plan == NightPlan(DAY, ("exp_b", "exp_c"), finals=(("exp_a", DAYS[1]),))
    assert plan.task_kwargs()[-1] == {
        "experiment_id": "exp_a", "analysis_date": DAYS[1].isoformat(), "history": False
    }  # fmt: skip
    evaluate_night(cat, ["exp_a"], DAYS[1], namespace=ns)
    # its final result is written: the next nights leave it out
    assert plan_night(cat, namespace=ns) == NightPlan(DAY, ("exp_b", "exp_c"))
    stored = read_results(cat, namespace=ns)
    assert set(stored.loc[stored["experiment_id"] == "exp_a", "analysis_date"]) == {DAYS[1]}
    # named, it is evaluated again, still as of its final date (never after it)
    named = plan_night(cat, experiment_ids=["exp_a"], namespace=ns)
    assert named == NightPlan(DAY, (), finals=(("exp_a", DAYS[1]),))
    # the day after: exp_b's analysis has ended too (its result as of DAY is its final one)
    evaluate_night(cat, ["exp_b"], DAY, namespace=ns)
    goals = cat.load_table(f"{ns}.goal_aggregates")
    nxt = DAY + timedelta(days=1)
    extra = goals.scan().to_arrow().to_pandas()
    extra = extra[extra["as_of_date"] == DAY].assign(as_of_date=nxt)
    goals.append(
        pa.Table.from_pandas(extra, schema=goals.schema().as_arrow(), preserve_index=False)
    )
    cross = cat.load_table(f"{ns}.goal_cross_aggregates")
    more = cross.scan().to_arrow().to_pandas()
    more = more[more["as_of_date"] == DAY].assign(as_of_date=nxt)
    cross.append(pa.Table.from_pandas(more, schema=cross.schema().as_arrow(), preserve_index=False))
    assert plan_night(cat, namespace=ns) == NightPlan(nxt, ("exp_c",))
