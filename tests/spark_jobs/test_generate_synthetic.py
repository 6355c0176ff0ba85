"""The synthetic generator: deterministic for a seed, and it plants the mess it promises."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pyspark.sql import functions as F

from spark_jobs.generate_synthetic import build_all, write_tables
from strata.synthetic import EVENT_NAMES, GeneratorConfig

CFG = GeneratorConfig(users=4000, days=6, seed=11)


@pytest.fixture(scope="module")
def tables(spark):
    return {name: df.cache() for name, df in build_all(spark, CFG).items()}


def _rows(df):
    return sorted(tuple(r) for r in df.collect())


class TestDeterminism:
    def test_same_seed_same_rows_whatever_the_partitioning(self, spark, tables):
        again = build_all(spark, CFG)
        for name in ("users", "devices"):
            assert _rows(again[name].repartition(7)) == _rows(tables[name]), name
        a, b = tables["raw_events"], again["raw_events"].repartition(3)
        assert a.count() == b.count()
        assert a.exceptAll(b).count() == 0
        assert b.exceptAll(a).count() == 0

    def test_other_seed_other_rows(self, spark, tables):
        other = build_all(spark, GeneratorConfig(users=4000, days=6, seed=12))["users"]
        assert _rows(other) != _rows(tables["users"])


class TestShapes:
    def test_dimension_tables(self, tables):
        users, devices, orgs = tables["users"], tables["devices"], tables["orgs"]
        assert users.count() == 4000
        assert orgs.count() == 200
        assert users.select("user_id").distinct().count() == 4000
        assert devices.select("device_id").distinct().count() == devices.count()
        assert 1.5 < devices.count() / 4000 < 2.5
        assert devices.join(users, "user_id", "left_anti").count() == 0
        assert users.join(orgs, "org_id", "left_anti").count() == 0
        versions = [r.app_version for r in devices.select("app_version").collect()]
        assert any("-beta." in v for v in versions)
        import semver

        assert all(semver.Version.is_valid(v) for v in versions)

    def test_events_have_every_name_and_values_only_on_purchases(self, tables):
        ev = tables["raw_events"]
        names = {r.event_name for r in ev.select("event_name").distinct().collect()}
        assert set(EVENT_NAMES) <= names
        assert ev.where((F.col("event_name") == "purchase") & F.col("value").isNull()).count() == 0
        assert ev.where((F.col("event_name") == "click") & F.col("value").isNotNull()).count() == 0


class TestPlantedMess:
    def test_duplicates(self, tables):
        ev = tables["raw_events"].where(F.col("event_id").isNotNull())
        n = ev.count()
        dup_rows = n - ev.select("event_id").distinct().count()
        assert 0.005 < dup_rows / n < 0.015

    def test_late_arrivals(self, tables):
        ev = tables["raw_events"]
        late = ev.where(F.col("arrived_at") > F.col("event_at") + F.expr("INTERVAL 1 HOUR")).count()
        assert 0.01 < late / ev.count() < 0.03

    def test_unknown_units(self, tables):
        unknown = tables["raw_events"].join(tables["devices"], "device_id", "left_anti").count()
        assert 0.002 < unknown / tables["raw_events"].count() < 0.01

    def test_every_kind_of_malformed_row(self, tables):
        ev = tables["raw_events"]
        assert ev.where(F.col("event_id").isNull()).count() > 0
        assert ev.where(F.col("event_name") == "purchse").count() > 0
        assert ev.where(F.col("value") < 0).count() > 0
        assert (
            ev.where(F.col("event_at") > F.col("arrived_at") + F.expr("INTERVAL 1 DAY")).count() > 0
        )


def test_planted_effect_moves_the_treated_units(spark):
    """Clicks per session rise by the planted 8% in feed_ranking's treatment range."""
    cfg = GeneratorConfig(users=20_000, days=14, seed=3)
    ev = build_all(spark, cfg)["raw_events"]
    effect = next(e for e in cfg.effects if e.experiment_id == "feed_ranking")
    from spark_jobs.generate_synthetic import slot as spark_slot

    s = spark_slot(effect.salt, F.col("device_id"))
    arm = F.when((s >= effect.slot_start) & (s < effect.slot_end), "treatment").when(
        s < effect.slot_start, "control"
    )
    day = F.datediff(F.col("event_at"), F.lit(cfg.start_date))
    per_arm = {
        r.arm: r.clicks / r.sessions
        for r in ev.where(day >= effect.from_day)
        .select(arm.alias("arm"), "event_name")
        .where(F.col("arm").isNotNull())
        .groupBy("arm")
        .agg(
            F.sum((F.col("event_name") == "click").cast("int")).alias("clicks"),
            F.sum((F.col("event_name") == "session_start").cast("int")).alias("sessions"),
        )
        .collect()
    }
    assert 1.03 < per_arm["treatment"] / per_arm["control"] < 1.13


def test_a_rate_goal_of_the_catalogue_adds_its_events_and_changes_no_other_row(spark, tables):
    """A goal declared `synthetic: {rate: p}` comes once per session with probability p; its
    draws have tags of their own, so every row of the catalogue without it is still there."""
    goals = (*CFG.extra_goals, ("share", 0.2))  # the catalogue's rate goals (invite), and share
    ev = build_all(spark, replace(CFG, extra_goals=goals))["raw_events"].cache()
    base = tables["raw_events"]
    assert base.exceptAll(ev).count() == 0
    added = ev.exceptAll(base)
    shares = added.where(F.col("event_name") == "share")
    assert shares.count() >= 0.98 * added.count()  # the rest: shares the mess made malformed
    assert shares.where(F.col("value").isNotNull()).count() == 0
    sessions = base.where(F.col("event_name") == "session_start").count()
    assert 0.17 < shares.count() / sessions < 0.23


def test_write_tables_replaces_atomically_and_records_the_seed(spark, settings):
    cfg = GeneratorConfig(users=300, days=2, seed=5)
    first = write_tables(spark, cfg, settings.table)
    second = write_tables(spark, cfg, settings.table)
    assert first == second  # a re-run replaces, never appends
    props = dict(spark.sql(f"SHOW TBLPROPERTIES {settings.table('users')}").collect())
    assert props["strata.generator.seed"] == "5"
