"""Generate the synthetic users, orgs, devices and raw events into Iceberg, natively in Spark.

Every random draw is a hash of (seed, tag, row keys) — never ``rand()`` — so the output is the same
for a seed whatever the partitioning, the number of cores or the cluster. Planted effects and mess
rates come from :mod:`strata.synthetic`. Besides the session funnel (session_start, click,
add_to_cart, purchase), every goal of the goals catalogue declared ``synthetic: {rate: p}`` happens
once in a session with probability ``p``: its draws have tags of their own, so adding such a goal
adds its rows and leaves every other row as it was.

    spark-submit spark_jobs/generate_synthetic.py --users 100000 --days 14 --seed 7
    strata generate --users 100000 --days 14 --seed 7          # same thing, from the CLI
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from typing import TYPE_CHECKING

from strata.contracts import DEVICES, ORGS, RAW_EVENTS, SYNTHETIC_TABLES, USERS
from strata.synthetic import (
    COUNTRIES,
    ORG_PLANS,
    PLATFORMS,
    PURCHASE_VALUE_MU,
    PURCHASE_VALUE_SIGMA,
    GeneratorConfig,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

TABLES = SYNTHETIC_TABLES
_TWO_53 = float(2**53)


# --- deterministic randomness ----------------------------------------------------------------


def _uniform(seed: int, tag: str, *keys: Column | str) -> Column:
    """A uniform draw in [0, 1) that depends only on (seed, tag, keys)."""
    from pyspark.sql import functions as F

    h = F.xxhash64(F.lit(seed), F.lit(tag), *keys)
    return F.pmod(h, F.lit(2**53)).cast("double") / F.lit(_TWO_53)


def _pick(u: Column, values: tuple[str, ...], weights: tuple[float, ...]) -> Column:
    """Categorical draw: the value whose cumulative weight bracket holds ``u``."""
    from pyspark.sql import functions as F

    total, cum, expr = sum(weights), 0.0, None
    for value, weight in zip(values[:-1], weights[:-1], strict=True):
        cum += weight / total
        expr = F.when(u < cum, value) if expr is None else expr.when(u < cum, value)
    return F.lit(values[-1]) if expr is None else expr.otherwise(values[-1])


def _normal(u1: Column, u2: Column) -> Column:
    """Standard normal by Box-Muller from two uniforms."""
    from pyspark.sql import functions as F

    return F.sqrt(-2.0 * F.log(1.0 - u1)) * F.cos(2.0 * math.pi * u2)


def _geometric(u: Column, mean: Column | float) -> Column:
    """Count with the given mean (geometric on {0, 1, ...}), by inversion."""
    from pyspark.sql import functions as F

    m = F.lit(mean) if isinstance(mean, float) else mean
    return F.floor(F.log(1.0 - u) / F.log(m / (1.0 + m))).cast("int")


def slot(salt: str, unit_id: Column) -> Column:
    """The assignment slot of DESIGN.md, natively: pmod(xxhash64(salt ':' id), 10000)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(F.concat(F.lit(f"{salt}:"), unit_id)), F.lit(10000))


# --- dimension tables ------------------------------------------------------------------------


def build_orgs(spark: SparkSession, cfg: GeneratorConfig) -> DataFrame:
    from pyspark.sql import functions as F

    idx = F.col("id")
    return spark.range(cfg.orgs).select(
        F.format_string("o%07d", idx).alias("org_id"),
        _pick(_uniform(cfg.seed, "org.plan", idx), ORG_PLANS, (0.6, 0.3, 0.1)).alias("plan"),
        _pick(_uniform(cfg.seed, "org.country", idx), COUNTRIES, (4, 2, 2, 1, 2, 1, 1, 1)).alias(
            "country"
        ),
        (F.floor(_uniform(cfg.seed, "org.seats", idx) * 500) + 1).cast("int").alias("seats"),
        F.date_sub(
            F.lit(cfg.start_date), F.floor(_uniform(cfg.seed, "org.age", idx) * 2000).cast("int")
        ).alias("created_on"),
    )


def build_users(spark: SparkSession, cfg: GeneratorConfig) -> DataFrame:
    from pyspark.sql import functions as F

    idx = F.col("id")
    u = lambda tag: _uniform(cfg.seed, tag, idx)  # noqa: E731
    return spark.range(cfg.users).select(
        F.format_string("u%08d", idx).alias("user_id"),
        F.format_string("o%07d", F.pmod(F.xxhash64(F.lit(cfg.seed), idx), F.lit(cfg.orgs))).alias(
            "org_id"
        ),
        _pick(u("user.country"), COUNTRIES, (4, 2, 2, 1, 2, 1, 1, 1)).alias("country"),
        _pick(u("user.language"), ("en", "de", "fr", "pt", "ja", "cs"), (6, 1, 1, 1, 1, 0.5)).alias(
            "language"
        ),
        (F.floor(u("user.age") * 60) + 16).cast("int").alias("age"),
        F.date_sub(F.lit(cfg.start_date), F.floor(u("user.signup") * 1500).cast("int")).alias(
            "signup_date"
        ),
        (u("user.premium") < 0.12).alias("is_premium"),
        # Heterogeneous activity: lognormal with mean 1 (sigma 0.6).
        F.exp(_normal(u("user.act1"), u("user.act2")) * 0.6 - 0.18).alias("activity"),
    )


def build_devices(users: DataFrame, cfg: GeneratorConfig) -> DataFrame:
    from pyspark.sql import functions as F

    uid = F.col("user_id")
    n_devices = (F.floor(_uniform(cfg.seed, "dev.n", uid) * 2.2) + 1).cast("int")  # 1..3
    per_user = users.select(
        "user_id", "activity", F.explode(F.sequence(F.lit(1), n_devices)).alias("n")
    )
    key = F.concat(uid, F.lit("#"), F.col("n").cast("string"))
    u = lambda tag: _uniform(cfg.seed, tag, key)  # noqa: E731
    major = _pick(u("dev.major"), ("1", "2", "3"), (0.2, 0.5, 0.3))
    minor = F.floor(u("dev.minor") * 10).cast("string")
    patch = F.floor(u("dev.patch") * 10).cast("string")
    pre = F.when(
        u("dev.pre") < 0.05,
        F.concat(F.lit("-beta."), (F.floor(u("dev.pre_n") * 5) + 1).cast("string")),
    ).otherwise(F.lit(""))
    platform = _pick(u("dev.platform"), PLATFORMS, (0.45, 0.4, 0.15))
    return per_user.select(
        F.substring(F.sha2(F.concat(F.lit(f"{cfg.seed}:"), key), 256), 1, 16).alias("device_id"),
        "user_id",
        platform.alias("platform"),
        F.concat(major, F.lit("."), minor, F.lit("."), patch, pre).alias("app_version"),
        F.concat(
            F.when(platform == "ios", "17.").when(platform == "android", "14.").otherwise("0."),
            F.floor(u("dev.os") * 6).cast("string"),
        ).alias("os_version"),
        F.date_sub(F.lit(cfg.start_date), F.floor(u("dev.seen") * 700).cast("int")).alias(
            "first_seen_on"
        ),
        "activity",
    )


# --- events ----------------------------------------------------------------------------------


def _effect_multiplier(cfg: GeneratorConfig, goal: str) -> Column:
    """Product of the planted multipliers for ``goal`` that apply to the row's units and day."""
    from pyspark.sql import functions as F

    mult = F.lit(1.0)
    for e in cfg.effects:
        if e.goal != goal:
            continue
        s = slot(e.salt, F.col(e.unit_type))
        hit = (s >= e.slot_start) & (s < e.slot_end) & (F.col("day") >= e.from_day)
        if e.segment is not None:  # a segment-only effect (columns of the device-day rows)
            hit = hit & (F.col(e.segment[0]) == F.lit(e.segment[1]))
        mult = mult * F.when(hit, F.lit(e.multiplier)).otherwise(F.lit(1.0))
    return mult


def build_clean_events(devices: DataFrame, users: DataFrame, cfg: GeneratorConfig) -> DataFrame:
    """Sessions per active device-day and the events in them, with planted effects."""
    from pyspark.sql import functions as F

    seed = cfg.seed
    dd = devices.join(users.select("user_id", "country"), "user_id").select(
        "device_id",
        "user_id",
        "platform",
        "country",
        "activity",
        F.explode(F.sequence(F.lit(0), F.lit(cfg.days - 1))).alias("day"),
    )
    dkey = F.concat(F.col("device_id"), F.lit("#"), F.col("day").cast("string"))
    active = _uniform(seed, "ev.active", dkey) < F.lit(cfg.daily_active_rate) * F.col("activity")
    sessions = (
        dd.where(active)
        .withColumn("n_sessions", _geometric(_uniform(seed, "ev.nsess", dkey), 0.5) + 1)
        .select("*", F.explode(F.sequence(F.lit(1), F.col("n_sessions"))).alias("session"))
        .drop("n_sessions")
    )
    skey = F.concat(dkey, F.lit("#"), F.col("session").cast("string"))
    day_start = F.to_timestamp(F.date_add(F.lit(cfg.start_date), F.col("day")))
    sessions = sessions.select(
        "*",
        (F.unix_timestamp(day_start) + F.floor(_uniform(seed, "ev.t", skey) * 80000)).alias("t0"),
        _geometric(
            _uniform(seed, "ev.clicks", skey),
            F.lit(cfg.clicks_per_session) * _effect_multiplier(cfg, "click"),
        ).alias("n_clicks"),
        (
            _uniform(seed, "ev.cart", skey)
            < F.lit(cfg.add_to_cart_rate) * _effect_multiplier(cfg, "add_to_cart")
        ).alias("has_cart"),
        (
            _uniform(seed, "ev.buy", skey)
            < F.lit(cfg.purchase_rate) * _effect_multiplier(cfg, "purchase")
        ).alias("buys"),
        (
            F.exp(
                PURCHASE_VALUE_MU
                + PURCHASE_VALUE_SIGMA
                * _normal(_uniform(seed, "ev.v1", skey), _uniform(seed, "ev.v2", skey))
            )
            * _effect_multiplier(cfg, "purchase_value")
        ).alias("purchase_value"),
        *(
            (
                _uniform(seed, f"ev.goal.{name}", skey)
                < F.lit(rate) * _effect_multiplier(cfg, name)
            ).alias(f"has_goal_{name}")
            for name, rate in cfg.extra_goals
        ),
    )
    # One row per event: (name, index within session, offset in seconds, value).
    kinds = F.concat(
        F.array(F.struct(F.lit("session_start").alias("name"), F.lit(0).alias("i"))),
        F.transform(
            F.sequence(F.lit(1), F.greatest(F.col("n_clicks"), F.lit(1))),
            lambda i: F.struct(F.lit("click").alias("name"), i.alias("i")),
        ),
        F.array(F.struct(F.lit("add_to_cart").alias("name"), F.lit(0).alias("i"))),
        F.array(F.struct(F.lit("purchase").alias("name"), F.lit(0).alias("i"))),
        *(
            F.array(F.struct(F.lit(name).alias("name"), F.lit(0).alias("i")))
            for name, _ in cfg.extra_goals
        ),
    )
    keep = (
        ((F.col("k.name") == "click") & (F.col("n_clicks") > 0))
        | (F.col("k.name") == "session_start")
        | ((F.col("k.name") == "add_to_cart") & F.col("has_cart"))
        | ((F.col("k.name") == "purchase") & F.col("has_cart") & F.col("buys"))
    )
    for name, _ in cfg.extra_goals:
        keep = keep | ((F.col("k.name") == name) & F.col(f"has_goal_{name}"))
    ev = sessions.select("*", F.explode(kinds).alias("k")).where(keep)
    ekey = F.concat(skey, F.lit("#"), F.col("k.name"), F.col("k.i").cast("string"))
    offset = (
        F.when(F.col("k.name") == "session_start", 0)
        .when(F.col("k.name") == "click", F.col("k.i") * 20)
        .when(F.col("k.name") == "add_to_cart", F.col("n_clicks") * 20 + 30)
        .otherwise(F.col("n_clicks") * 20 + 90)
    )
    if cfg.extra_goals:  # a minute after the session's clicks
        extra = F.col("k.name").isin([name for name, _ in cfg.extra_goals])
        offset = F.when(extra, F.col("n_clicks") * 20 + 60).otherwise(offset)
    event_at = F.timestamp_seconds(F.col("t0") + offset)
    delay = F.floor(F.exp(_uniform(seed, "ev.delay", ekey) * 6.0))  # 1 s .. ~7 min
    # A share of web traffic is logged out: no user id on the event.
    logged_out = (F.col("platform") == "web") & (_uniform(seed, "ev.anon", ekey) < 0.05)
    return ev.select(
        F.md5(F.concat(F.lit(f"{seed}:"), ekey)).alias("event_id"),
        F.col("k.name").alias("event_name"),
        event_at.alias("event_at"),
        (event_at + F.make_interval(secs=delay.cast("decimal(18,6)"))).alias("arrived_at"),
        "device_id",
        F.when(logged_out, F.lit(None).cast("string")).otherwise(F.col("user_id")).alias("user_id"),
        "platform",
        "country",
        F.when(F.col("k.name") == "purchase", F.round(F.col("purchase_value"), 2))
        .otherwise(F.lit(None).cast("double"))
        .alias("value"),
    )


def add_mess(clean: DataFrame, cfg: GeneratorConfig) -> DataFrame:
    """Late arrivals, duplicates, events from unknown units and malformed rows, at fixed rates."""
    from pyspark.sql import functions as F

    seed, m = cfg.seed, cfg.mess
    eid = F.col("event_id")
    u = lambda tag: _uniform(seed, tag, eid)  # noqa: E731

    late_hours = F.floor(u("mess.late_h") * 71) + 1
    events = clean.withColumn(
        "arrived_at",
        F.when(
            u("mess.late") < m.late, F.col("event_at") + F.make_interval(hours=late_hours)
        ).otherwise(F.col("arrived_at")),
    )
    # Unknown units: a device id that is not in `devices` (a foreign id from another app).
    events = events.withColumn(
        "device_id",
        F.when(
            u("mess.unknown") < m.unknown_unit,
            F.concat(F.lit("zz"), F.substring(F.md5(eid), 1, 14)),
        ).otherwise(F.col("device_id")),
    )
    # Malformed rows: four kinds, equally likely.
    bad, kind = u("mess.bad") < m.malformed, F.floor(u("mess.bad_kind") * 4)
    events = events.select(
        F.when(bad & (kind == 0), F.lit(None).cast("string")).otherwise(eid).alias("event_id"),
        F.when(bad & (kind == 1), F.lit("purchse"))
        .when(bad & (kind == 2), F.lit("purchase"))  # a purchase with a negative amount
        .otherwise(F.col("event_name"))
        .alias("event_name"),
        F.when(bad & (kind == 3), F.col("event_at") + F.make_interval(days=F.lit(400)))
        .otherwise(F.col("event_at"))
        .alias("event_at"),
        "arrived_at",
        "device_id",
        "user_id",
        "platform",
        "country",
        F.when(bad & (kind == 2), F.lit(-1.0) * F.coalesce(F.col("value"), F.lit(9.99)))
        .otherwise(F.col("value"))
        .alias("value"),
    )
    # Duplicates: the same event delivered again a few minutes later (client retry).
    dups = events.where(
        F.col("event_id").isNotNull()
        & (_uniform(seed, "mess.dup", F.col("event_id")) < m.duplicate)
    ).withColumn("arrived_at", F.col("arrived_at") + F.expr("INTERVAL 3 MINUTES"))
    return events.unionByName(dups)


# --- job -------------------------------------------------------------------------------------


def build_all(spark: SparkSession, cfg: GeneratorConfig) -> dict[str, DataFrame]:
    """All four tables as DataFrames (nothing written)."""
    users = build_users(spark, cfg)
    devices = build_devices(users, cfg)
    events = add_mess(build_clean_events(devices, users, cfg), cfg)
    return {
        ORGS: build_orgs(spark, cfg),
        USERS: users.drop("activity"),
        DEVICES: devices.drop("activity"),
        RAW_EVENTS: events,
    }


def write_tables(spark: SparkSession, cfg: GeneratorConfig, table) -> dict[str, int]:
    """Replace each table atomically (one Iceberg commit per table) and return row counts."""
    from pyspark.sql import functions as F

    counts = {}
    for name, df in build_all(spark, cfg).items():
        if name == RAW_EVENTS:
            df = df.sortWithinPartitions("event_at")
        writer = df.writeTo(table(name)).using("iceberg").tableProperty("format-version", "2")
        for key, value in cfg.as_properties().items():
            writer = writer.tableProperty(key, value)
        if name == RAW_EVENTS:
            writer = writer.partitionedBy(F.days("event_at"))
        writer.createOrReplace()
        counts[name] = spark.table(table(name)).count()
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    from strata.config import get_settings
    from strata.stack import spark_session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=GeneratorConfig.users)
    parser.add_argument("--days", type=int, default=GeneratorConfig.days)
    parser.add_argument("--seed", type=int, default=GeneratorConfig.seed)
    parser.add_argument(
        "--start-date", type=dt.date.fromisoformat, default=GeneratorConfig.start_date
    )
    args = parser.parse_args(argv)
    cfg = GeneratorConfig(
        users=args.users, days=args.days, seed=args.seed, start_date=args.start_date
    )
    settings = get_settings()
    counts = write_tables(spark_session(settings, "strata-generate"), cfg, settings.table)
    for name, n in counts.items():
        print(f"{settings.table(name)}: {n:,} rows")
    return counts


if __name__ == "__main__":
    main()
