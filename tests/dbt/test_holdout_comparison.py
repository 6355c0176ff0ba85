"""A domain holdout end to end (issue #16, item 4): assignment job -> dbt -> the nightly
evaluation the ``evaluate_experiments`` DAG runs (``plan_night`` + ``evaluate_night``).

Domain ``shop`` holds out 20% of its users (tests/strata/test_holdouts.py's definitions:
experiments ``a`` in the domain, ``b`` in a nested one, ``c`` outside). On 3,000 synthetic users
over three days: the held-out users are in neither ``a`` nor ``b`` (``c`` still has some), and
the comparison ``holdout_shop`` (holdout = control vs the rest of the domain, on the primary
metric ``conversion``) lands in ``results`` with its SRM row and its exposed units.
"""

from __future__ import annotations

import datetime as dt

import pytest

from spark_jobs.assign_experiments import run
from spark_jobs.generate_synthetic import build_all
from spark_jobs.ingest_exposure_logs import ensure_tables
from strata import contracts
from strata.definitions import load
from strata.synthetic import GeneratorConfig
from tests.dbt import test_goal_aggregates as base
from tests.strata.test_holdouts import TEXT

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 1)
CFG = GeneratorConfig(users=3_000, days=3, seed=5, effects=())
HOLDOUT, REST = 9901, 9902


def test_holdout_comparison_through_dbt_and_the_nightly_evaluation(spark, settings, tmp_path):
    from strata.stack import iceberg_catalog
    from strata.stats.nightly import evaluate_night, plan_night
    from strata.stats.results import SRM_METRIC_ID, read_results

    table = settings.table
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "d.yaml").write_text(TEXT)
    defs = load(tmp_path / "defs")
    for name, frame in build_all(spark, CFG).items():
        frame.writeTo(table(name)).using("iceberg").createOrReplace()
    for name in (contracts.ASSIGNMENTS, contracts.EXPERIMENTS, contracts.RESULTS):
        spark.sql(f"DROP TABLE IF EXISTS {table(name)}")
    ensure_tables(spark, table)  # no LOG events: app starts expose
    run(spark, settings, defs, DAY)

    rows = spark.table(table(contracts.ASSIGNMENTS)).toPandas()
    comparison = rows[rows["experiment_id"] == "holdout_shop"]
    held = set(comparison.loc[comparison["variant_id"] == HOLDOUT, "unit_id"])
    assert 0.17 < len(held) / len(comparison) < 0.23  # 20% of the domain
    in_domain = set(rows.loc[rows["experiment_id"].isin(["a", "b"]), "unit_id"])
    assert in_domain
    assert not held & in_domain
    assert held & set(rows.loc[rows["experiment_id"] == "c", "unit_id"])  # outside: unaffected

    base._build(settings, tmp_path, "--full-refresh")
    catalog = iceberg_catalog(settings)
    plan = plan_night(catalog)
    assert "holdout_shop" in plan.experiment_ids
    night = evaluate_night(catalog, plan.experiment_ids, plan.analysis_date)
    assert night.rows > 0

    results = read_results(catalog, "holdout_shop")
    now = results[(results["analysis_date"] == plan.analysis_date) & results["dimension"].isna()]
    conversion = now[(now["metric_id"] == "conversion") & (now["statistic"] == "rel_diff")]
    assert conversion["comparison"].tolist() == [f"{REST} vs {HOLDOUT}"]
    assert conversion["decision"].iloc[0] in ("inconclusive", "win", "loss")
    srm = now[now["metric_id"] == SRM_METRIC_ID]
    assert srm["decision"].tolist() == ["passed"]
    exposed = (
        spark.table(table(contracts.UNITS_EXPOSED))
        .where("experiment_id = 'holdout_shop'")
        .groupBy("variant_id")
        .count()
        .collect()
    )
    counts = now[(now["metric_id"] == "conversion") & (now["statistic"] == "count")]
    assert {int(v): c for v, c in zip(counts["variant"], counts["point"], strict=True)} == {
        r.variant_id: r["count"] for r in exposed
    }
    held_exposed = {
        r.unit_id
        for r in spark.table(table(contracts.UNITS_EXPOSED))
        .where(f"experiment_id = 'holdout_shop' AND variant_id = {HOLDOUT}")
        .collect()
    }
    assert held_exposed
    assert held_exposed <= held
