"""The assignment job: native Spark == Python reference on every unit; tables; reproducible runs."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import functions as F

from spark_jobs.assign_experiments import (
    ASSIGNMENT_FIELDS,
    ASSIGNMENTS_SCHEMA,
    EXPERIMENTS_SCHEMA,
    main,
    outside_window,
    run,
    run_identity,
    transform,
    unit_contexts,
)
from spark_jobs.generate_synthetic import build_all
from strata.assignment import assign_unit
from strata.definitions import bundled_path, load
from strata.synthetic import GeneratorConfig

CFG = GeneratorConfig(users=40_000, days=1, seed=5)
#: The demo's first day: every running bundled experiment is inside its window (assigned).
DAY = dt.date(2026, 11, 8)
KEY = ["unit_type", "unit_id", *[n for n, _ in ASSIGNMENT_FIELDS]]


@pytest.fixture(scope="module")
def inputs(spark, settings):
    """users / orgs / devices of 40k synthetic users (~120k units) written to Iceberg."""
    tables = build_all(spark, CFG)
    for name in ("users", "orgs", "devices"):
        tables[name].writeTo(settings.table(name)).using("iceberg").createOrReplace()
    return {n: spark.table(settings.table(n)).cache() for n in ("users", "orgs", "devices")}


@pytest.fixture(scope="module")
def defs():
    return load(bundled_path())


def test_spark_matches_the_python_reference_on_every_unit(inputs, defs):
    units = unit_contexts(inputs["users"], inputs["orgs"], inputs["devices"])
    got = transform(units, defs, "run", dt.datetime(2026, 11, 8), DAY).select(*KEY).collect()
    spark_rows = {tuple(r) for r in got}
    assert len(spark_rows) == len(got)  # no duplicate rows

    python_rows, n_units = set(), 0
    for unit_type, df in units.items():
        for row in df.toLocalIterator():
            ctx = row.asDict()
            n_units += 1
            python_rows |= {
                a.key() for a in assign_unit(defs, unit_type, ctx[unit_type], ctx, as_of=DAY)
            }
    assert n_units >= 100_000
    assert spark_rows == python_rows
    experiments = {r[2] for r in spark_rows}
    assert experiments == {e.id for e in defs.experiments if e.assigned}


def many_experiments_yaml(layers: int, per_layer: int) -> str:
    """``per_layer`` experiments in each of ``layers`` user layers, every one with its own rule
    (a threshold on the user's age): more than a CASE WHEN per variant could compile."""
    out = ["layers:"]
    out += [
        f"  - {{id: l{i}, salt: many-{i}, unit_type: user_id, priority: {i}}}"
        for i in range(layers)
    ]
    out.append("experiments:")
    width, vid = 9000 // per_layer, 1
    for i in range(layers):
        for j in range(per_layer):
            start, mid, end = j * width, j * width + width // 2, (j + 1) * width
            rule = (
                f"{{type: field, field: age, op: gte, values: [{18 + (i * per_layer + j) % 40}]}}"
            )
            out += [
                f"  - {{id: e{i}_{j}, name: e{i}_{j}, owner: t, layer: l{i}, status: running,",
                "     start_date: 2026-11-08, end_date: 2026-11-14,",
                f"     targeting: {rule},",
                "     variants: [",
                f"       {{vid: {vid}, name: control, is_control: true, start: {start}, "
                f"end: {mid}, params: {{k: {{v: {vid}}}}}}},",
                f"       {{vid: {vid + 1}, name: treatment, start: {mid}, end: {end}, "
                f"params: {{k: {{v: {vid + 1}}}}}}}]}}",
            ]
            vid += 2
    return "\n".join(out) + "\n"


def test_hundreds_of_experiments_per_layer_match_the_reference(inputs, tmp_path):
    (tmp_path / "many.yaml").write_text(many_experiments_yaml(layers=3, per_layer=150))
    many = load(tmp_path)
    users = unit_contexts(inputs["users"], inputs["orgs"], inputs["devices"])["user_id"]
    users = users.limit(3000).cache()
    got = {
        tuple(r)
        for r in transform({"user_id": users}, many, "run", dt.datetime(2026, 11, 8), DAY)
        .select(*KEY)
        .collect()
    }
    want = {
        a.key()
        for row in users.collect()
        for a in assign_unit(many, "user_id", row["user_id"], row.asDict(), as_of=DAY)
    }
    assert len(want) > 3000  # most users get a variant in most of the 3 layers
    assert got == want


def test_targeting_really_narrows(inputs, defs):
    units = unit_contexts(inputs["users"], inputs["orgs"], inputs["devices"])
    out = transform(units, defs, "run", dt.datetime(2026, 11, 8), DAY)
    devices = out.where(F.col("experiment_id") == "dark_mode").join(
        units["device_id"], F.col("unit_id") == F.col("device_id")
    )
    assert devices.count() > 0
    assert (
        devices.where((F.col("platform") != "ios") | ~F.col("os_version").like("17.%")).count() == 0
    )
    minors = out.where(F.col("experiment_id") == "checkout_button").join(
        units["user_id"].where(F.col("age") < 18), F.col("unit_id") == F.col("user_id")
    )
    assert minors.count() == 0
    # The planted experiments keep most of their traffic (effects stay detectable).
    share = out.where(F.col("experiment_id") == "checkout_button").count() / CFG.users
    assert 0.8 < share < 0.9  # 90% domain x 97% adults


@pytest.mark.parametrize(
    "day",
    [dt.date(2026, 11, 7), dt.date(2026, 11, 14), dt.date(2026, 11, 15), dt.date(2026, 12, 2)],
)
def test_nothing_is_assigned_outside_its_window(inputs, defs, day):
    """start_date and end_date both inclusive: the Spark job and the reference leave out the same
    experiments, and the job reports them."""
    units = unit_contexts(inputs["users"], inputs["orgs"], inputs["devices"])
    out = transform(units, defs, "run", dt.datetime(2026, 11, 8), day)
    got = {r.experiment_id for r in out.select("experiment_id").distinct().collect()}
    live = {e.id for e in defs.experiments if e.assigned_on(day)}
    assert got == live
    for e in defs.experiments:
        if e.id in got:
            assert e.start_date <= day <= e.end_date
    assert set(outside_window(defs, day)) == {e.id for e in defs.experiments if e.assigned} - live
    sample = units["user_id"].limit(300).collect()
    want = {a.key() for r in sample for a in assign_unit(defs, "user_id", r.user_id, r.asDict(),
                                                         as_of=day)}  # fmt: skip
    ids = [r.user_id for r in sample]
    spark_rows = {tuple(r) for r in out.where(F.col("unit_id").isin(ids)).select(*KEY).collect()}
    assert spark_rows == want


def test_run_id_names_the_experiments_a_day_leaves_out():
    snaps = {"users": (1, dt.datetime(2026, 11, 8))}
    before = run_identity("v1", snaps)
    assert run_identity("v1", snaps, {}) == before  # nothing left out: the id from before dates
    assert run_identity("v1", snaps, {"a": "ended"})[0] != before[0]


class TestJob:
    @pytest.fixture(scope="class")
    def first(self, spark, settings, inputs):
        result = main(["--definitions", str(bundled_path()), "--as-of", DAY.isoformat()])
        rows = spark.table(settings.table("assignments")).collect()
        return result, rows

    def test_tables_follow_the_contract(self, spark, settings, first):
        result, rows = first
        table = spark.table(settings.table("assignments"))
        assert table.schema.simpleString() == f"struct<{_ddl(ASSIGNMENTS_SCHEMA)}>"
        parts = spark.sql(f"SELECT * FROM {settings.table('assignments')}.partitions").count()
        assert parts == 2  # user_id and device_id
        assert table.select("run_id").distinct().count() == 1
        ex = spark.table(settings.table("experiments"))
        assert ex.schema.simpleString() == f"struct<{_ddl(EXPERIMENTS_SCHEMA)}>"
        checkout = ex.where(F.col("experiment_id") == "checkout_button").first()
        variants = json.loads(checkout.variants)
        assert [(v["vid"], v["start"], v["end"]) for v in variants] == [
            (1001, 0, 5000),
            (1002, 5000, 10000),
        ]
        assert json.loads(checkout.metrics)[0]["nominator"] == "count(user.unit.purchase)"
        assert checkout.deployment_key == "checkout-button-v2"
        assert ex.count() == 9
        assert result["as_of"] == DAY.isoformat()
        assert result["outside_window"] == {}
        counted = sum(n for *_, n in result["counts"])
        assert counted == len(rows)

    def test_rerun_gives_identical_rows_in_one_new_commit(self, spark, settings, first, defs):
        result, rows = first
        snaps_before = spark.sql(f"SELECT * FROM {settings.table('assignments')}.snapshots").count()
        again = run(spark, settings, defs, DAY)
        snaps_after = spark.sql(f"SELECT * FROM {settings.table('assignments')}.snapshots").count()
        assert snaps_after == snaps_before + 1
        assert (again["run_id"], again["assigned_at"]) == (result["run_id"], result["assigned_at"])
        rerun_rows = spark.table(settings.table("assignments")).collect()
        assert sorted(map(tuple, rerun_rows)) == sorted(map(tuple, rows))

    def test_new_inputs_give_a_new_run_id(self, spark, settings, first, defs, inputs):
        result, _ = first
        spark.sql(
            f"UPDATE {settings.table('orgs')} SET seats = seats + 1 WHERE org_id = 'o0000000'"
        )
        changed = run(spark, settings, defs, DAY)
        assert changed["run_id"] != result["run_id"]
        assert changed["assigned_at"] > result["assigned_at"]

    def test_null_unit_ids_are_refused(self, spark, settings, first, defs):
        users = settings.table("users")
        spark.sql(
            f"INSERT INTO {users} SELECT NULL, org_id, country, language, age, "
            f"signup_date, is_premium FROM {users} LIMIT 1"
        )
        try:
            with pytest.raises(ValueError, match=r"null id .*'user_id': 1"):
                run(spark, settings, defs, DAY)
        finally:
            spark.sql(f"DELETE FROM {users} WHERE user_id IS NULL")


def _ddl(schema: str) -> str:
    return ",".join(":".join(part.strip().split(" ", 1)) for part in _split(schema))


def _split(schema: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in schema:
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


def test_definitions_without_layers_assign_nothing(spark, tmp_path):
    """No layer means no experiment: an empty snapshot of the contract's schema, not an error."""
    (tmp_path / "empty.yaml").write_text("layers: []\nexperiments: []\n")
    empty = load(tmp_path)
    units = {"user_id": spark.createDataFrame([("u-1",)], "unit_id string")}
    out = transform(units, empty, "run", dt.datetime(2026, 11, 8), DAY)
    assert out.count() == 0
    assert (
        out.schema.simpleString()
        == spark.createDataFrame([], ASSIGNMENTS_SCHEMA).schema.simpleString()
    )
