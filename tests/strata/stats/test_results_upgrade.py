"""Upgrades of the results table (issue #15 item 7): a table written by the previous version is
appended to in place — same table, same field ids, old rows kept — and a table missing columns is
evolved in place (``strata.stack.evolve_schema``), never dropped and recreated. pyiceberg only."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from strata.stack import evolve_schema
from strata.stats import evaluate
from strata.stats.results import (
    BAYES_STATISTICS,
    RESULTS_SCHEMA,
    SCHEMA_VERSION,
    read_results,
    results_frame,
    write_results,
)
from tests.strata.stats.test_results import aggregates, experiment_record

NAMESPACE = "stats_results_upgrade_test"
OLD_DAY = date(2026, 3, 9)
NEW_DAY = OLD_DAY + timedelta(days=1)

#: The results schema of the previous version (commit 8fb0729, before the ``reason`` column of the
#: recommendation; the same as before the Bayesian rows, 8b79d0b), copied here so the test keeps
#: meaning "a table that version wrote" when RESULTS_SCHEMA moves on.
PREVIOUS_RESULTS_SCHEMA = pa.schema(
    [
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("analysis_date", pa.date32(), nullable=False),
        pa.field("window", pa.string(), nullable=False),
        pa.field("metric_id", pa.string(), nullable=False),
        pa.field("metric_name", pa.string()),
        pa.field("role", pa.string()),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("comparison", pa.string()),
        pa.field("statistic", pa.string(), nullable=False),
        pa.field("point", pa.float64()),
        pa.field("lower", pa.float64()),
        pa.field("upper", pa.float64()),
        pa.field("p_value", pa.float64()),
        pa.field("p_value_adjusted", pa.float64()),
        pa.field("decision", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("input_snapshots", pa.string(), nullable=False),
        pa.field("evaluated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("schema_version", pa.string(), nullable=False),
    ]
)
#: An older layout still: no adjusted p-values, no schema version.
OLDER_RESULTS_SCHEMA = pa.schema(
    [f for f in PREVIOUS_RESULTS_SCHEMA if f.name not in ("p_value_adjusted", "schema_version")]
)
BAYES = {"bayes_rel_diff", "prob_beat_control", "expected_loss_treatment", "expected_loss_control"}
#: Rows added with the ``reason`` column (issue #15 item 3).
RECOMMENDATION = {"recommendation", "guardrail"}


@pytest.fixture(scope="module")
def catalog(settings):
    from strata.stack import iceberg_catalog

    cat = iceberg_catalog(settings)
    cat.create_namespace_if_not_exists(NAMESPACE)
    return cat


def frame(exp_id: str, day: date, run_id: str) -> pd.DataFrame:
    goals, cross = aggregates(5, [exp_id])
    ev = evaluate(
        goals.drop(columns="as_of_date"), [experiment_record(exp_id)],
        cross=cross.drop(columns="as_of_date"), analysis_date=day,
    )  # fmt: skip
    return results_frame(ev, run_id, {"t": 1})


def test_absolute_scale_names_its_effect_row():
    from strata.stats import EvaluationConfig

    goals, cross = aggregates(5, ["exp_abs"])
    ev = evaluate(
        goals.drop(columns="as_of_date"), [experiment_record("exp_abs")],
        cross=cross.drop(columns="as_of_date"), analysis_date=NEW_DAY,
        config=EvaluationConfig(bayes_scale="absolute"),
    )  # fmt: skip
    rows = results_frame(ev, "r", {})
    stats = set(rows["statistic"])
    assert "bayes_abs_diff" in stats
    assert "bayes_rel_diff" not in stats
    effect = rows[rows["statistic"] == "bayes_abs_diff"].set_index("metric_id")["point"]
    freq = rows[rows["statistic"] == "abs_diff"].set_index("metric_id")["point"]
    assert effect.to_dict() == freq.to_dict()  # flat prior: the posterior mean is the estimate


def previous_version_rows(exp_id: str, schema: pa.Schema) -> pa.Table:
    """What a previous version wrote: no Bayesian or recommendation rows, only its columns."""
    old = frame(exp_id, OLD_DAY, "old-run")
    old = old[~old["statistic"].isin(BAYES | RECOMMENDATION)]
    return pa.Table.from_pandas(old[schema.names], schema=schema, preserve_index=False)


def field_ids(table) -> dict[str, int]:
    return {f.name: f.field_id for f in table.schema().fields}


def test_bayesian_statistics_are_the_documented_rows():
    rows = frame("exp_rows", NEW_DAY, "r")
    assert set(BAYES_STATISTICS) == BAYES
    treat = rows[rows["variant"] == "1002"]
    assert set(treat["statistic"]) >= BAYES
    assert not BAYES & set(rows.loc[rows["variant"] == "1001", "statistic"])  # treatments only
    cri = treat[treat["statistic"] == "bayes_rel_diff"].iloc[0]
    assert cri["lower"] < cri["point"] < cri["upper"]
    p = treat[treat["statistic"] == "prob_beat_control"]["point"]
    assert ((p > 0) & (p < 1)).all()


def test_table_of_the_previous_version_is_appended_to_in_place(catalog):
    ident = f"{NAMESPACE}.results_prev"
    old_table = catalog.create_table(ident, schema=PREVIOUS_RESULTS_SCHEMA)
    old_table.append(previous_version_rows("exp_up", PREVIOUS_RESULTS_SCHEMA))
    uuid, ids = old_table.metadata.table_uuid, field_ids(old_table)
    n_old = len(read_results(catalog, table="results_prev", namespace=NAMESPACE))

    write_results(catalog, frame("exp_up", NEW_DAY, "new-run"), "results_prev", NAMESPACE)
    table = catalog.load_table(ident)
    assert table.metadata.table_uuid == uuid  # the same table, not dropped and recreated
    after = field_ids(table)
    assert {k: after[k] for k in ids} == ids  # existing columns keep their field ids
    # the columns added since: reason (recommendations) and dimension, segment (segments)
    assert set(after) - set(ids) == {"reason", "dimension", "segment"}
    assert not table.schema().find_field("reason").required
    stored = read_results(catalog, table="results_prev", namespace=NAMESPACE)
    old = stored[stored["run_id"] == "old-run"]
    new = stored[stored["run_id"] == "new-run"]
    assert len(old) == n_old > 0  # old rows kept
    assert set(old["analysis_date"]) == {OLD_DAY}
    assert old["reason"].isna().all()  # rows written before the column read it as null
    assert old["dimension"].isna().all()
    assert old["segment"].isna().all()
    assert not (BAYES | RECOMMENDATION) & set(old["statistic"])
    assert set(new["statistic"]) >= BAYES | RECOMMENDATION  # new rows present
    top = new[new["metric_id"] == "__recommendation__"]
    assert len(top) == 1
    assert top["decision"].iloc[0] in {"ship", "dont_ship", "keep_running", "invalid"}
    assert top["reason"].notna().all()
    assert new.loc[new["statistic"] == "rel_diff", "reason"].isna().all()
    # a second run of the new version: nothing left to add, the table reads back whole
    write_results(catalog, frame("exp_up", NEW_DAY, "new-run-2"), "results_prev", NAMESPACE)
    assert field_ids(catalog.load_table(ident)) == after
    again = read_results(catalog, table="results_prev", namespace=NAMESPACE)
    assert len(again[again["run_id"] == "old-run"]) == n_old


def test_table_missing_columns_is_evolved_in_place(catalog):
    ident = f"{NAMESPACE}.results_older"
    old_table = catalog.create_table(ident, schema=OLDER_RESULTS_SCHEMA)
    old_table.append(previous_version_rows("exp_old", OLDER_RESULTS_SCHEMA))
    uuid, ids = old_table.metadata.table_uuid, field_ids(old_table)

    write_results(catalog, frame("exp_old", NEW_DAY, "new-run"), "results_older", NAMESPACE)
    table = catalog.load_table(ident)
    assert table.metadata.table_uuid == uuid
    after = field_ids(table)
    assert {k: after[k] for k in ids} == ids  # existing columns keep their field ids
    assert set(after) == set(RESULTS_SCHEMA.names)
    assert not table.schema().find_field("schema_version").required  # old rows have none
    stored = read_results(catalog, table="results_older", namespace=NAMESPACE)
    old = stored[stored["run_id"] == "old-run"]
    new = stored[stored["run_id"] == "new-run"]
    assert len(old) > 0
    assert old["schema_version"].isna().all()
    assert old["p_value_adjusted"].isna().all()
    assert (new["schema_version"] == SCHEMA_VERSION).all()
    assert new.loc[new["statistic"] == "rel_diff", "p_value_adjusted"].notna().all()
    assert set(new["statistic"]) >= BAYES


def test_evolve_schema_adds_only_what_is_missing(catalog):
    table = catalog.create_table(f"{NAMESPACE}.generic", schema=pa.schema([("a", pa.int64())]))
    table.append(pa.table({"a": [1, 2]}))
    schema_id = table.schema().schema_id
    assert evolve_schema(table, pa.schema([("a", pa.int64())])) == []
    assert table.schema().schema_id == schema_id  # no commit when nothing is missing
    wanted = pa.schema([pa.field("b", pa.string(), nullable=False), ("a", pa.int64())])
    assert evolve_schema(table, wanted) == ["b"]
    assert [f.name for f in table.schema().fields] == ["a", "b"]
    assert not table.schema().find_field("b").required
    table.append(pa.table({"a": [3], "b": ["x"]}))
    got = table.scan().to_pandas().sort_values("a")
    assert got["b"].tolist()[:2] == [None, None]
    assert got["b"].tolist()[2] == "x"
    assert evolve_schema(table, wanted) == []


def test_evolve_schema_with_a_stale_table_reloads_instead_of_failing(catalog):
    ident = f"{NAMESPACE}.race"
    catalog.create_table(ident, schema=pa.schema([("a", pa.int64())]))
    first, stale = catalog.load_table(ident), catalog.load_table(ident)
    wanted = pa.schema([("a", pa.int64()), ("b", pa.string()), ("c", pa.float64())])
    assert evolve_schema(first, wanted) == ["b", "c"]
    assert evolve_schema(stale, wanted) == []  # lost the race: reloaded, nothing left to add
    assert [f.name for f in stale.schema().fields] == ["a", "b", "c"]
