"""Assign units to experiments natively in Spark and write the Iceberg ``assignments`` table.

Reads validated definitions (:mod:`strata.definitions`) and the Iceberg ``users`` / ``orgs`` /
``devices`` tables, builds one targeting context per unit (user fields, ``org_*`` fields of the
user's org, and for devices also the device fields), and assigns every unit in one pass: domain
split, per-layer slot ``pmod(xxhash64(concat(salt, ':', unit_id)), 10000)``, variant by slot range,
targeting compiled to native Column expressions (:func:`strata.rules.to_column`) — no Python UDF.
The semantics are those of the pure-Python reference :mod:`strata.assignment`.

Only experiments inside their window on the run's day get units: ``--as-of`` (default today UTC;
the Airflow task passes its run's day, the demo the synthetic data's first day) must lie in
``[start_date, end_date]``, both inclusive. Experiments outside it are reported, not assigned.

Online-only experiments (:func:`strata.assignment.online_only`) are skipped cleanly and reported:
``url`` layers (no unit table: the endpoint assigns a page online with the same slot formula),
``random`` layers (a fresh draw per request, never written anywhere) and experiments whose
targeting reads a request-only field (``channel``, ``url``). Unit contexts carry ``region``,
derived from ``country`` (``strata.contracts.REGION_OF_COUNTRY``) unless a table has its own.

States (README "Experiment states"): each declared status is first checked against the one the
current ``experiments`` table records (:mod:`strata.lifecycle`); an illegal change raises
:class:`strata.lifecycle.IllegalTransition` before anything is written. Paused, stopped and shipped
experiments get no new unit: their rows are carried over from the current ``assignments``
snapshot (:func:`kept_rows`), for the analysis; a shipped one also gets its serving rows
(:func:`shipped_units`). ``experiments`` records ``status_since`` and ``status_version``.

Writes ``assignments`` (one row per unit and experiment, partitioned by unit_type) and
``experiments`` (one row per experiment), each replaced in one atomic Iceberg commit.
Re-runs are reproducible: ``run_id`` hashes the definitions version and the input snapshot ids,
and ``assigned_at`` is the commit time of the newest input snapshot, so the same definitions and
the same input snapshots give identical rows (a day that leaves a running experiment out of its
window adds those experiments to the ``run_id`` key).

    spark-submit spark_jobs/assign_experiments.py --definitions include/definitions
    strata assign --definitions include/definitions --as-of 2026-11-08   # from the CLI
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import struct
from typing import TYPE_CHECKING, Any

from strata.assignment import online_experiments, online_only
from strata.bucketing import SLOTS
from strata.contracts import (
    ASSIGNMENTS,
    DEVICES,
    EXPERIMENTS,
    ORGS,
    PER_REQUEST_UNIT_TYPES,
    REGION_OF_COUNTRY,
    SHIPPED,
    UNIT_TABLES,
    USERS,
    shipped_row_id,
    utc_today,
)
from strata.definitions import (
    Definitions,
    ExperimentDefinition,
    Holdout,
    Layer,
    VariantDefinition,
    bundled_path,
    canonical_json,
    holdout_record,
    load,
    metrics_json,
    ramp_json,
    variants_json,
)
from strata.lifecycle import RecordedState, check_transitions, next_states, states_from_rows
from strata.rules import (
    SEMVER_KEY_IDS,
    predicates,
    semver_ids,
    to_column,
    type_mismatches,
    with_semver_keys,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from strata.config import Settings

#: Input tables the unit contexts are built from.
INPUT_TABLES = UNIT_TABLES
ASSIGNMENTS_TABLE = ASSIGNMENTS
EXPERIMENTS_TABLE = EXPERIMENTS

ASSIGNMENT_FIELDS = (
    ("experiment_id", "string"),
    ("variant_id", "int"),
    ("variant_name", "string"),
    ("is_control", "boolean"),
    ("layer_id", "string"),
    ("domain_id", "string"),
    ("layer_priority", "int"),
    ("service", "string"),
    ("slot", "int"),
    ("params", "string"),
    ("first_assigned_date", "date"),
    ("ramp_period", "int"),
)
ASSIGNMENTS_SCHEMA = (
    "unit_type string, unit_id string, "
    + ", ".join(f"{n} {t}" for n, t in ASSIGNMENT_FIELDS)
    + ", definitions_version string, run_id string, assigned_at timestamp"
)
EXPERIMENTS_SCHEMA = (
    "experiment_id string, name string, owner string, description string, layer_id string, "
    "domain_id string, unit_type string, status string, start_date date, end_date date, "
    "deployment_key string, platforms array<string>, variants string, metrics string, "
    "definitions_version string, status_since date, status_version string, sticky boolean, "
    "ramp string"
)


# --- unit contexts ---------------------------------------------------------------------------


def unit_contexts(users: DataFrame, orgs: DataFrame, devices: DataFrame) -> dict[str, DataFrame]:
    """One row per unit with every field targeting rules may use, per unit type.

    user_id units: the user's columns plus ``org_plan``, ``org_country``, ``org_seats``,
    ``org_created_on``; device_id units: additionally the device's columns. Dates become ISO
    strings so rules can compare them as strings.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def iso_dates(df: DataFrame) -> DataFrame:
        return df.select(
            *[
                F.date_format(F.col(f.name), "yyyy-MM-dd").alias(f.name)
                if isinstance(f.dataType, T.DateType)
                else F.col(f.name)
                for f in df.schema.fields
            ]
        )

    org_cols = [F.col(c).alias(f"org_{c}") for c in orgs.columns if c != "org_id"]
    org_ctx = orgs.select("org_id", *org_cols)
    user_ctx = iso_dates(users.join(org_ctx, "org_id", "left"))
    device_ctx = iso_dates(devices).join(
        user_ctx.drop(*[c for c in user_ctx.columns if c in devices.columns and c != "user_id"]),
        "user_id",
        "left",
    )
    return {"user_id": with_region(user_ctx), "device_id": with_region(device_ctx)}


def with_region(units: DataFrame) -> DataFrame:
    """``units`` plus ``region`` from ``country`` (:data:`strata.contracts.REGION_OF_COUNTRY`, the
    map online evaluation uses) unless it has a region column, or no country, already."""
    from pyspark.sql import functions as F

    if "region" in units.columns or "country" not in units.columns:
        return units
    region: Any = None
    for country, name in REGION_OF_COUNTRY.items():
        hit = F.col("country") == F.lit(country)
        region = F.when(hit, F.lit(name)) if region is None else region.when(hit, F.lit(name))
    return units.withColumn("region", region)


# --- the native assignment -------------------------------------------------------------------


def slot_column(salt: str, unit_id: Column) -> Column:
    """DESIGN.md's slot: pmod(xxhash64(concat(salt, ':', unit_id)), 10000)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(F.concat(F.lit(f"{salt}:"), unit_id)), F.lit(SLOTS)).cast("int")


def variant_fields(e: ExperimentDefinition, lay: Layer, v: VariantDefinition) -> tuple[Any, ...]:
    """A variant's ASSIGNMENT_FIELDS from experiment_id to params, slot excepted."""
    return (
        e.id,
        v.vid,
        v.name,
        v.is_control,
        lay.id,
        lay.domain,
        lay.priority,
        lay.service,
        v.params_json,
    )


def int_array(spark: SparkSession, values: list[int]) -> Column:
    """A constant ``array<int>`` (no nulls) held as a primitive ``int[]`` (Catalyst's
    ``UnsafeArrayData``) in one literal.

    A folded ``array(...)`` or ``cast(split(...))`` literal is a ``GenericArrayData`` of boxed
    Integers: each ``element_at`` then chases a pointer (measured at 1M units x 10 layers: 1.1 s
    of JVM CPU for the lookups alone, as much as hashing the slots; this form: none measurable),
    and the task binary holds ~10 bytes per element in Java serialization (42 MB at 100 layers).
    PySpark has no primitive-array literal: this builds one from the packed bytes with a few JVM
    calls, through Catalyst's (internal, unchanged since Spark 2.x) ``UnsafeArrayData`` and
    ``Literal`` constructors.
    """
    from pyspark.sql.column import Column as PyColumn

    jvm = spark.sparkContext._jvm
    assert jvm is not None
    packed = bytearray(struct.pack(f"={len(values)}i", *values))  # native order, as Platform reads
    data = jvm.org.apache.spark.sql.catalyst.expressions.UnsafeArrayData.fromPrimitiveArray(
        packed, jvm.org.apache.spark.unsafe.Platform.BYTE_ARRAY_OFFSET, len(values), 4
    )
    types = jvm.org.apache.spark.sql.types.DataTypes
    literal = jvm.org.apache.spark.sql.catalyst.expressions.Literal(
        data, types.createArrayType(types.IntegerType, False)
    )
    return PyColumn(jvm.org.apache.spark.sql.Column(literal))


def constant_array(values: list[Any], dtype: str) -> Column:
    """A constant ``array<dtype>`` from one JSON literal, folded by Spark into one array literal
    (a Column per element costs one JVM call each: 18,000 for 1,000 experiments' fields)."""
    from pyspark.sql import functions as F

    return F.from_json(F.lit(json.dumps(values)), f"array<{dtype}>")


def assign_units(
    units: DataFrame,
    unit_type: str,
    defs: Definitions,
    as_of: dt.date | None = None,
    stages: dict[str, DataFrame] | None = None,
) -> DataFrame:
    """Assignment rows (``unit_type``, ``unit_id`` + ASSIGNMENT_FIELDS) for units of one type,
    on the day ``as_of`` (default today UTC): only experiments inside their window get units.

    ``units`` has the unit id column named ``unit_type`` plus the context columns. ``stages``,
    when given, receives partial plans for ``bench_assign.py --breakdown``: ``keys`` (the units
    with their semver keys), ``slots`` (unit, layer, slot of the rows in the layer's domain and
    in a variant's range: hashing, no keys, no rules) and ``targeted`` (the same after the
    rules: everything but the output fields).

    The plan, per unit: its semver sort keys (once per field), whether it is in each domain (the
    domain and holdout slots hashed once per salt), then one row per layer with the layer's slot
    (``posexplode`` of the layer slots), kept when the unit is in the layer's domain, the slot
    falls in a variant's range and that experiment's rule matches. The variant of a (layer, slot)
    comes from a constant primitive array indexed by ``layer * SLOTS + slot``, its rule from one
    indexed by variant, and only that rule is evaluated (a CASE over the distinct rules), so the
    generated code grows with the distinct rules, not with the layers or experiments (code per
    layer, or a CASE WHEN per variant, outgrew Java's 64 KB method limit and ran interpreted).
    Ranges in a layer are disjoint (validated), so a slot has at most one candidate. Each output
    field is then looked up once per output row by variant index in a constant array of that
    field's values.
    """
    from pyspark.sql import functions as F

    day = as_of or utc_today()
    online = online_experiments(defs)  # url / random layers, rules on request-only fields

    def batch(e: ExperimentDefinition) -> bool:
        return e.assigned_on(day) and e.id not in online

    layers = [
        lay
        for lay in defs.layers
        if lay.unit_type == unit_type and any(batch(e) for e in defs.layer_experiments(lay.id))
    ]
    spark = units.sparkSession
    if not layers:
        return spark.createDataFrame([], ASSIGNMENTS_SCHEMA).select(
            "unit_type", "unit_id", *[n for n, _ in ASSIGNMENT_FIELDS]
        )
    uid = F.col(unit_type)
    # Semver sort keys first, in their own projections, so each is computed once per unit (keys
    # only for string columns: on any other type a semver predicate is false anyway).
    strings = {f.name for f in units.schema.fields if f.dataType.typeName() == "string"}
    semver_preds = [
        p
        for lay in layers
        for e in defs.layer_experiments(lay.id)
        if batch(e) and e.targeting is not None
        for p in predicates(e.targeting)
        if p.value_type == "semver" and p.field in strings
    ]
    semver_fields = sorted({p.field for p in semver_preds})
    key_names = {f: f"__semver_{i}" for i, f in enumerate(semver_fields)}
    n_ids = max([SEMVER_KEY_IDS] + [semver_ids(v) for p in semver_preds for v in p.values])
    semver_keys = {f: F.col(n) for f, n in key_names.items()}
    schema = units.schema

    # Domains: each salt hashed once per unit (one array column: a projection wider than
    # spark.sql.codegen.maxFields, 100, is not code-generated), then one flag per domain.
    domains = sorted({lay.domain for lay in layers})
    chains = {dom: defs.domain_chain(dom) for dom in domains}
    salts = sorted(
        {d.salt for chain in chains.values() for d in chain}
        | {d.holdout_salt for chain in chains.values() for d in chain if d.holdout_salt is not None}
    )
    slot_of = {salt: F.col("__domain_slots")[i] for i, salt in enumerate(salts)}

    def in_domain(dom: str) -> Column:
        inside = F.lit(True)
        for d in chains[dom]:
            ds = slot_of[d.salt]
            inside = inside & (ds >= d.start) & (ds < d.end)
            if d.holdout_salt is not None:  # the domain's holdout is in none of its experiments
                inside = inside & (slot_of[d.holdout_salt] >= d.holdout_slots)
        return inside

    # Per (layer, slot): the variant (index in meta) whose range holds the slot, -1 for none;
    # per variant: its experiment's rule (index in rules). One array of layers x SLOTS, not two:
    # lookups at random slots miss the CPU caches, a second such array doubles the misses.
    meta: list[tuple[Any, ...]] = []
    rule_ids: dict[str, int] = {}
    rules: list[Column] = []
    variant_at = [-1] * (len(layers) * SLOTS)
    rule_of_variant: list[int] = []
    for k, lay in enumerate(layers):
        for e in defs.layer_experiments(lay.id):
            if not batch(e):
                continue
            key = canonical_json(e.targeting_json)
            if key not in rule_ids:
                rule_ids[key] = len(rules)
                rules.append(to_column(e.targeting, schema, semver_keys=semver_keys))
            for v in e.variants_on(day):
                # first_assigned_date: the day (see field below)
                meta.append((*variant_fields(e, lay, v), None, e.period(day)))
                rule_of_variant.append(rule_ids[key])
                start, end = k * SLOTS + v.start, k * SLOTS + v.end
                variant_at[start:end] = [len(meta) - 1] * (end - start)

    layer, slot = F.col("__layer"), F.col("__slot")
    candidate = F.element_at(int_array(spark, variant_at), layer * SLOTS + slot + 1)
    index = candidate + 1  # of the variant in meta's arrays (1-based), when candidate >= 0
    rule_index = F.get(int_array(spark, rule_of_variant), candidate)  # null for -1 (no variant)
    passes: Any = rules[0] if len(rules) == 1 else None
    for i, rule in enumerate(rules if len(rules) > 1 else []):
        hit = rule_index == i
        passes = F.when(hit, rule) if passes is None else passes.when(hit, rule)
    domain_of_layer = int_array(spark, [domains.index(lay.domain) for lay in layers])
    in_layer_domain = F.col("__in_domain")[F.element_at(domain_of_layer, layer + 1)]

    def field(i: int, name: str, dtype: str) -> Column:
        if name == "slot":
            return slot
        if name == "first_assigned_date":
            return F.lit(day).cast("date")
        return F.element_at(constant_array([row[i] for row in meta], dtype), index)

    fields = [n for n, _ in ASSIGNMENT_FIELDS if n != "slot"]
    keyed = with_semver_keys(units, key_names, n_ids)
    by_layer = (
        keyed.select("*", F.array(*[slot_column(s, uid) for s in salts]).alias("__domain_slots"))
        .select("*", F.array(*[in_domain(dom) for dom in domains]).alias("__in_domain"))
        .select(
            "*",
            F.posexplode(F.array(*[slot_column(lay.salt, uid) for lay in layers])).alias(
                "__layer", "__slot"
            ),
        )
    )
    targeted = by_layer.where(in_layer_domain & (candidate >= 0) & passes)
    if stages is not None:
        ids = [uid.alias("unit_id"), layer, slot]
        stages["keys"] = keyed
        stages["slots"] = by_layer.where(in_layer_domain & (candidate >= 0)).select(*ids)
        stages["targeted"] = targeted.select(*ids)
    return targeted.select(
        F.lit(unit_type).alias("unit_type"),
        uid.alias("unit_id"),
        *[
            field(fields.index(n) if n != "slot" else -1, n, t).alias(n)
            for n, t in ASSIGNMENT_FIELDS
        ],
    )


def holdout_rows(units: DataFrame, h: Holdout, defs: Definitions, day: dt.date) -> DataFrame:
    """The rows of holdout ``h``'s comparison (:func:`strata.assignment.holdout_assignments`):
    every unit in its domain (not held out by an enclosing domain), ``holdout`` or ``rest``."""
    from pyspark.sql import functions as F

    uid = F.col(h.unit_type)
    inside = F.lit(True)
    for d in defs.domain_chain(h.domain):
        ds = slot_column(d.salt, uid)
        inside = inside & (ds >= d.start) & (ds < d.end)
        if d.id != h.domain and d.holdout_salt is not None:
            inside = inside & (slot_column(d.holdout_salt, uid) >= d.holdout_slots)
    s = slot_column(h.salt, uid)
    held = s < F.lit(h.slots)
    return units.where(inside).select(
        F.lit(h.unit_type).alias("unit_type"),
        uid.alias("unit_id"),
        F.lit(h.experiment_id).alias("experiment_id"),
        F.when(held, F.lit(h.holdout_vid)).otherwise(F.lit(h.rest_vid)).alias("variant_id"),
        F.when(held, F.lit("holdout")).otherwise(F.lit("rest")).alias("variant_name"),
        held.alias("is_control"),
        F.lit("").alias("layer_id"),
        F.lit(h.domain).alias("domain_id"),
        F.lit(0).alias("layer_priority"),
        F.lit(None).cast("string").alias("service"),
        s.alias("slot"),
        F.lit("{}").alias("params"),
        F.lit(day).cast("date").alias("first_assigned_date"),
        F.lit(0).alias("ramp_period"),
    )


# --- sticky assignment: the previous snapshot ------------------------------------------------


def sticky_experiments(defs: Definitions, day: dt.date) -> list[ExperimentDefinition]:
    """Sticky experiments the batch job assigns on ``day``."""
    online = online_experiments(defs)
    return [e for e in defs.experiments if e.sticky and e.assigned_on(day) and e.id not in online]


def sticky_eligible(units: DataFrame, unit_type: str, defs: Definitions, day: dt.date) -> DataFrame:
    """``(unit_type, unit_id, experiment_id)`` of the units that may keep a previous variant of a
    sticky experiment on ``day``: in the layer's domains and matched by its targeting today."""
    from pyspark.sql import functions as F

    uid = F.col(unit_type)
    tags = []
    for e in sticky_experiments(defs, day):
        lay = defs.layer(e.layer)
        if lay.unit_type != unit_type:
            continue
        ok = to_column(e.targeting, units.schema)
        for d in defs.domain_chain(lay.domain):
            ds = slot_column(d.salt, uid)
            ok = ok & (ds >= d.start) & (ds < d.end)
            if d.holdout_salt is not None:
                ok = ok & (slot_column(d.holdout_salt, uid) >= d.holdout_slots)
        tags.append(F.when(ok, F.lit(e.id)))
    if not tags:
        return units.sparkSession.createDataFrame(
            [], "unit_type string, unit_id string, experiment_id string"
        )
    return (
        units.select(uid.alias("unit_id"), F.explode(F.array(*tags)).alias("experiment_id"))
        .where(F.col("experiment_id").isNotNull())
        .select(F.lit(unit_type).alias("unit_type"), "unit_id", "experiment_id")
    )


def period_column(defs: Definitions, experiment_id: Column, day: Column) -> Column:
    """The ramp period of ``experiment_id`` on ``day`` (0 without a ramp): Spark's
    :meth:`ExperimentDefinition.period`."""
    from pyspark.sql import functions as F

    out: Any = None
    for e in defs.experiments:
        if not e.ramp:
            continue
        p = sum((day >= F.lit(step.date)).cast("int") for step in e.ramp)
        hit = experiment_id == F.lit(e.id)
        out = F.when(hit, p) if out is None else out.when(hit, p)
    return F.lit(0) if out is None else out.otherwise(F.lit(0))


def with_previous(
    fresh: DataFrame,
    previous: DataFrame,
    units: dict[str, DataFrame],
    defs: Definitions,
    day: dt.date,
) -> DataFrame:
    """Today's rows given the previous ``assignments`` snapshot (the reference's semantics,
    :func:`strata.assignment.assign_layer`): a unit keeps its previous variant and slot of a
    sticky experiment assigned today that still has that variant and still targets it (then the
    unit is in no other experiment of that layer); every other row is today's ``fresh`` one.
    ``first_assigned_date`` carries over while a unit keeps its variant (rows written before the
    column existed read as the experiment's ``start_date``); ``ramp_period`` is its period."""
    from pyspark.sql import functions as F

    spark = fresh.sparkSession
    first = (
        F.col("first_assigned_date")
        if "first_assigned_date" in previous.columns
        else F.lit(None).cast("date")
    )
    prev = previous.select(
        "unit_type",
        "unit_id",
        "experiment_id",
        "variant_id",
        F.col("slot").alias("prev_slot"),
        first.alias("prev_first"),
    )
    starts = spark.createDataFrame(
        [(e.id, e.start_date) for e in defs.experiments], "experiment_id string, start date"
    )
    prev = prev.join(F.broadcast(starts), "experiment_id", "left").select(
        "unit_type",
        "unit_id",
        "experiment_id",
        "variant_id",
        "prev_slot",
        F.coalesce("prev_first", "start").alias("prev_first"),
    )
    fields = [n for n, _ in ASSIGNMENT_FIELDS]
    sticky = sticky_experiments(defs, day)
    if sticky:
        eligible = None
        for unit_type, df in sorted(units.items()):
            part = sticky_eligible(df, unit_type, defs, day)
            eligible = part if eligible is None else eligible.unionByName(part)
        meta = []
        for e in sticky:
            lay = defs.layer(e.layer)
            for v in e.variants_on(day):
                meta.append(variant_fields(e, lay, v))
        variants = spark.createDataFrame(
            meta,
            "experiment_id string, variant_id int, variant_name string, is_control boolean, "
            "layer_id string, domain_id string, layer_priority int, service string, "
            "params string",
        )
        assert eligible is not None
        kept = (
            prev.join(eligible, ["unit_type", "unit_id", "experiment_id"])
            .join(F.broadcast(variants), ["experiment_id", "variant_id"])
            .withColumnRenamed("prev_slot", "slot")
            .withColumnRenamed("prev_first", "first_assigned_date")
        )
        kept = kept.select(
            "unit_type",
            "unit_id",
            *[
                period_column(defs, F.col("experiment_id"), F.col("first_assigned_date")).alias(n)
                if n == "ramp_period"
                else F.col(n)
                for n in fields
            ],
        )
        fresh = fresh.join(
            kept.select("unit_type", "unit_id", "layer_id"),
            ["unit_type", "unit_id", "layer_id"],
            "left_anti",
        )
    else:
        kept = None
    carried = fresh.join(
        prev.drop("prev_slot"), ["unit_type", "unit_id", "experiment_id", "variant_id"], "left"
    ).withColumn("first_assigned_date", F.coalesce("prev_first", "first_assigned_date"))
    carried = carried.select(
        "unit_type",
        "unit_id",
        *[
            period_column(defs, F.col("experiment_id"), F.col("first_assigned_date")).alias(n)
            if n == "ramp_period"
            else F.col(n)
            for n in fields
        ],
    )
    return carried if kept is None else carried.unionByName(kept)


def shipped_units(
    units: DataFrame, unit_type: str, defs: Definitions, day: dt.date | None = None
) -> list[DataFrame]:
    """Rows serving each shipped experiment (of layers hashing ``unit_type``) to every unit in its
    layer's scope: in the layer's domains and matching its targeting, whatever the slot. They
    carry ``shipped:<id>`` as experiment id (kept out of the experiment's analysis) and the launch
    layer's id and priority (so experiments of higher-priority layers override them), the
    experiment layer's service and the shipped variant. Windows do not apply (a launch lasts
    until the definitions remove it). ``first_assigned_date`` is the run day ``day`` (default
    today UTC), ``ramp_period`` 0. As :func:`strata.assignment.shipped_assignments`."""
    from pyspark.sql import functions as F

    launch = next((lay for lay in defs.layers if lay.launch), None)
    uid = F.col(unit_type)
    out = []
    for e in defs.experiments:
        layer = defs.layer(e.layer)
        v = e.shipped_variant
        if e.status != SHIPPED or layer.unit_type != unit_type or launch is None or v is None:
            continue
        cond = to_column(e.targeting, units.schema)
        for d in defs.domain_chain(layer.domain):
            ds = slot_column(d.salt, uid)
            cond = cond & (ds >= d.start) & (ds < d.end)
        values = {
            "experiment_id": shipped_row_id(e.id),
            "variant_id": v.vid,
            "variant_name": v.name,
            "is_control": v.is_control,
            "layer_id": launch.id,
            "domain_id": layer.domain,
            "layer_priority": launch.priority,
            "service": layer.service,
            "params": v.params_json,
            "first_assigned_date": day or utc_today(),
            "ramp_period": 0,
        }
        out.append(
            units.where(cond).select(
                F.lit(unit_type).alias("unit_type"),
                uid.alias("unit_id"),
                *[
                    slot_column(layer.salt, uid).alias(n)
                    if n == "slot"
                    else F.lit(values[n]).cast(t).alias(n)
                    for n, t in ASSIGNMENT_FIELDS
                ],
            )
        )
    return out


def transform(
    units: dict[str, DataFrame],
    defs: Definitions,
    run_id: str,
    assigned_at: dt.datetime,
    as_of: dt.date | None = None,
    previous: DataFrame | None = None,
    kept: DataFrame | None = None,
) -> DataFrame:
    """All assignment rows on the day ``as_of`` (default today UTC), with the run columns: the
    pure core of the job (nothing written). Running experiments are assigned; ``previous``: the
    current ``assignments`` snapshot (None on a first run), for sticky experiments and
    ``first_assigned_date`` (:func:`with_previous`). Shipped ones get their serving rows
    (:func:`shipped_units`); ``kept`` (the previous snapshot's rows of paused, stopped and
    shipped experiments: :func:`kept_rows`) is carried over unchanged."""
    from pyspark.sql import functions as F

    frames = [
        assign_units(df, unit_type, defs, as_of)
        for unit_type, df in sorted(units.items())
        if any(lay.unit_type == unit_type for lay in defs.layers)
    ]
    day = as_of or utc_today()
    frames += [
        holdout_rows(units[h.unit_type], h, defs, day)
        for h in defs.holdouts
        if h.unit_type in units and h.window(day) is None
    ]
    # rows of no sticky/ramp concern: shipped serving rows (first assigned the run day, period
    # 0) and frozen experiments' kept rows (unchanged), joined after with_previous
    other = [
        f
        for unit_type, df in sorted(units.items())
        for f in shipped_units(df, unit_type, defs, day)
    ]
    if kept is not None:
        other.append(kept.select("unit_type", "unit_id", *[n for n, _ in ASSIGNMENT_FIELDS]))
    if not frames and not other:  # no layer (so no experiment) for any unit type: empty
        spark = next(iter(units.values())).sparkSession
        return spark.createDataFrame([], ASSIGNMENTS_SCHEMA)
    out: DataFrame | None = None
    if frames:
        out = frames[0]
        for f in frames[1:]:
            out = out.unionByName(f)
        if previous is not None:
            out = with_previous(out, previous, units, defs, day)
    for f in other:
        out = f if out is None else out.unionByName(f)
    assert out is not None
    return out.select(
        "*",
        F.lit(defs.version).alias("definitions_version"),
        F.lit(run_id).alias("run_id"),
        F.lit(assigned_at).cast("timestamp").alias("assigned_at"),
    )


def experiments_frame(
    spark: SparkSession,
    defs: Definitions,
    states: dict[str, RecordedState] | None = None,
    as_of: dt.date | None = None,
) -> DataFrame:
    """The ``experiments`` table: one row per experiment in the definitions, with the day it took
    its status and the definitions version that set it (``states``: :func:`next_states`)."""
    states = states if states is not None else next_states(defs, None, as_of or utc_today())
    rows = []
    for e in defs.experiments:
        layer = defs.layer(e.layer)
        state = states[e.id]
        rows.append(
            (
                e.id,
                e.name,
                e.owner,
                e.description,
                layer.id,
                layer.domain,
                layer.unit_type,
                e.status,
                e.start_date,
                e.end_date,
                e.key,
                list(e.platforms),
                canonical_json(variants_json(e)),
                canonical_json(metrics_json(e)),
                defs.version,
                state.since,
                state.version,
                e.sticky,
                canonical_json(ramp_json(e)),
            )
        )
    for h in defs.holdouts:  # the long-term comparisons: status holdout, never published
        r = holdout_record(h)
        rows.append(
            (
                r["experiment_id"],
                r["name"],
                r["owner"],
                r["description"],
                r["layer_id"],
                r["domain_id"],
                r["unit_type"],
                r["status"],
                h.start_date,
                h.end_date,
                None,
                [],
                canonical_json(r["variants"]),
                canonical_json(r["metrics"]),
                defs.version,
                h.start_date,
                defs.version,
                False,
                "[]",
            )
        )
    return spark.createDataFrame(rows, EXPERIMENTS_SCHEMA)


def _current_snapshot(spark: SparkSession, table: str) -> int | None:
    """The current snapshot id of ``table``, or None when it does not exist or is empty."""
    if not spark.catalog.tableExists(table):
        return None
    row = spark.sql(
        f"SELECT snapshot_id FROM {table}.history WHERE is_current_ancestor "
        "ORDER BY made_current_at DESC LIMIT 1"
    ).first()
    return int(row.snapshot_id) if row is not None else None


def recorded(spark: SparkSession, settings: Settings) -> dict[str, RecordedState] | None:
    """The states the current ``experiments`` table records; None before the first run."""
    table = settings.table(EXPERIMENTS_TABLE)
    if _current_snapshot(spark, table) is None:
        return None
    return states_from_rows(r.asDict() for r in spark.table(table).collect())


def assignments_snapshot(spark: SparkSession, settings: Settings) -> DataFrame | None:
    """The current ``assignments`` snapshot, pinned by snapshot id (None when the table does not
    exist or is empty): read once per run, for sticky experiments (:func:`previous_snapshot`)
    and the rows frozen experiments keep (:func:`kept_rows`). A replace commit deletes no data
    file, so the write can stream from the snapshot it replaces."""
    table = settings.table(ASSIGNMENTS_TABLE)
    sid = _current_snapshot(spark, table)
    return None if sid is None else spark.read.option("snapshot-id", sid).table(table)


def kept_rows(
    spark: SparkSession,
    settings: Settings,
    defs: Definitions,
    current: DataFrame | None = None,
) -> DataFrame | None:
    """The current ``assignments`` rows of paused, stopped and shipped experiments (their serving
    ``shipped:`` rows excluded: those are recomputed), read at the table's current snapshot
    (``current``: that snapshot, already read); None when there is nothing to keep. Rows written
    before ``first_assigned_date``/``ramp_period`` existed get the experiment's ``start_date``
    and period 0."""
    from pyspark.sql import functions as F

    frozen = sorted(e.id for e in defs.experiments if e.frozen)
    if not frozen:
        return None
    rows = current if current is not None else assignments_snapshot(spark, settings)
    if rows is None:
        return None
    rows = rows.where(F.col("experiment_id").isin(frozen))
    if "first_assigned_date" not in rows.columns:
        starts: Any = None
        for e in defs.experiments:
            if e.id in frozen:
                hit = F.col("experiment_id") == F.lit(e.id)
                start = F.lit(e.start_date).cast("date")
                starts = F.when(hit, start) if starts is None else starts.when(hit, start)
        rows = rows.withColumn("first_assigned_date", starts)
    if "ramp_period" not in rows.columns:
        rows = rows.withColumn("ramp_period", F.lit(0))
    return rows.select(
        "unit_type", "unit_id", *[F.col(n).cast(t).alias(n) for n, t in ASSIGNMENT_FIELDS]
    )


def outside_window(defs: Definitions, day: dt.date) -> dict[str, str]:
    """Running experiments left out on ``day``: ``{id: "not_started" | "ended"}``."""
    return {e.id: w for e in defs.experiments if e.assigned and (w := e.window(day)) is not None}


def unassignable(
    units: dict[str, DataFrame], defs: Definitions, as_of: dt.date | None = None
) -> list[str]:
    """Warnings: running experiments with no unit source, and rules reading absent/odd fields."""
    out = []
    day = as_of or utc_today()
    for e in defs.experiments:
        if not e.assigned_on(day):
            continue
        unit_type = defs.layer(e.layer).unit_type
        if unit_type in PER_REQUEST_UNIT_TYPES:
            out.append(f"{e.id}: {unit_type} experiment, drawn per request online (not assigned)")
            continue
        if online_only(defs, e.id):
            out.append(f"{e.id}: assigned online only ({unit_type} units or request-only fields)")
            continue
        if unit_type not in units:
            out.append(f"{e.id}: no {unit_type} units in the inputs; it is assigned online only")
            continue
        for problem in type_mismatches(e.targeting, units[unit_type].schema):
            out.append(f"{e.id}: targeting field {problem} (that predicate is always false)")
    return out


# --- job -------------------------------------------------------------------------------------


def input_snapshots(spark: SparkSession, settings: Settings) -> dict[str, tuple[int, dt.datetime]]:
    """Current snapshot id and commit time of every input table."""
    out = {}
    for name in INPUT_TABLES:
        row = spark.sql(
            f"SELECT snapshot_id, made_current_at FROM {settings.table(name)}.history "
            "WHERE is_current_ancestor ORDER BY made_current_at DESC LIMIT 1"
        ).first()
        if row is None:
            raise RuntimeError(f"input table {settings.table(name)} has no snapshot")
        out[name] = (int(row.snapshot_id), row.made_current_at)
    return out


def previous_snapshot(
    spark: SparkSession, settings: Settings, current: DataFrame | None = None
) -> DataFrame | None:
    """The current ``assignments`` snapshot (None on a first run), pinned by snapshot id before
    the job replaces the table (``current``: that snapshot, already read by
    :func:`assignments_snapshot`). Its schema may predate ``first_assigned_date``/
    ``ramp_period``: :func:`with_previous` reads such rows."""
    df = current if current is not None else assignments_snapshot(spark, settings)
    if df is None:
        return None
    cols = ["unit_type", "unit_id", "experiment_id", "variant_id", "slot"]
    cols += [c for c in ("first_assigned_date",) if c in df.columns]
    return df.select(*cols)  # pinned: the replace commit leaves that snapshot's files in place


def run_identity(
    version: str,
    snapshots: dict[str, tuple[int, dt.datetime]],
    left_out: dict[str, str] | None = None,
    kept: list[str] | None = None,
    periods: dict[str, int] | None = None,
) -> tuple[str, Any]:
    """(run_id, assigned_at): functions of the definitions, the input snapshots, the running
    experiments the day leaves out of their window (none: the key is the one from before dates
    were honoured, so such runs keep their ids) and the paused/stopped/shipped experiments whose
    rows are kept from the previous snapshot (none: the key from before states) and the ramp
    periods past the first step (none: the key from before ramps)."""
    key = version + "|" + "|".join(f"{n}@{sid}" for n, (sid, _) in sorted(snapshots.items()))
    if left_out:
        key += "|outside:" + ",".join(f"{e}={w}" for e, w in sorted(left_out.items()))
    if kept:
        key += "|kept:" + ",".join(sorted(kept))
    if periods:  # ramped experiments past their first step: the day changes their ranges
        key += "|periods:" + ",".join(f"{e}={p}" for e, p in sorted(periods.items()))
    run_id = hashlib.sha256(key.encode()).hexdigest()[:16]
    return run_id, max(at for _, at in snapshots.values())


def run(
    spark: SparkSession, settings: Settings, defs: Definitions, as_of: dt.date | None = None
) -> dict[str, Any]:
    """Assign on the day ``as_of`` (default today UTC) and write both tables; returns counts per
    experiment/variant, the run identity and the running experiments left out of their window."""
    from pyspark.sql import functions as F

    day = as_of or utc_today()
    was = recorded(spark, settings)
    # an illegal change of status is a validation error: raised before anything is written
    check_transitions(defs, was, settings.table(EXPERIMENTS_TABLE))
    states = next_states(defs, was, day)
    left_out = outside_window(defs, day)
    snapshots = input_snapshots(spark, settings)
    read = {
        name: spark.read.option("snapshot-id", sid).table(settings.table(name))
        for name, (sid, _) in snapshots.items()
    }
    null_ids = {
        "user_id": read[USERS].where(F.col("user_id").isNull()).count(),
        "device_id": read[DEVICES].where(F.col("device_id").isNull()).count(),
    }
    bad = {k: n for k, n in null_ids.items() if n}
    if bad:
        raise ValueError(f"input units with a null id (cannot be hashed): {bad}")
    units = unit_contexts(read[USERS], read[ORGS], read[DEVICES])
    periods = {e.id: p for e in defs.experiments if e.assigned and (p := e.period(day))}
    frozen = [e.id for e in defs.experiments if e.frozen]
    run_id, assigned_at = run_identity(defs.version, snapshots, left_out, frozen, periods)
    current = assignments_snapshot(spark, settings)  # read once: sticky and kept rows
    previous = previous_snapshot(spark, settings, current)
    kept = kept_rows(spark, settings, defs, current)
    warnings = unassignable(units, defs, day)
    props = {
        "strata.definitions-version": defs.version,
        "strata.run-id": run_id,
        "strata.inputs": json.dumps({n: sid for n, (sid, _) in sorted(snapshots.items())}),
    }
    assignments = transform(units, defs, run_id, assigned_at, day, previous, kept)
    writer = (
        assignments.sortWithinPartitions("unit_id")
        .writeTo(settings.table(ASSIGNMENTS_TABLE))
        .using("iceberg")
        .partitionedBy(F.col("unit_type"))
        .tableProperty("format-version", "2")
    )
    for k, v in props.items():
        writer = writer.tableProperty(k, v)
    writer.createOrReplace()  # one atomic commit (REPLACE TABLE ... AS SELECT)
    ex_writer = (
        experiments_frame(spark, defs, states)
        .coalesce(1)
        .writeTo(settings.table(EXPERIMENTS_TABLE))
    )
    ex_writer = ex_writer.using("iceberg").tableProperty("format-version", "2")
    for k, v in props.items():
        ex_writer = ex_writer.tableProperty(k, v)
    ex_writer.createOrReplace()
    counts = (
        spark.table(settings.table(ASSIGNMENTS_TABLE))
        .groupBy("experiment_id", "variant_name", "variant_id")
        .count()
        .orderBy("experiment_id", "variant_id")
        .collect()
    )
    return {
        "definitions_version": defs.version,
        "run_id": run_id,
        "assigned_at": assigned_at.isoformat(),
        "counts": [[r.experiment_id, r.variant_name, r.variant_id, r["count"]] for r in counts],
        "warnings": warnings,
        "as_of": day.isoformat(),
        "outside_window": left_out,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from strata.config import get_settings
    from strata.stack import spark_session

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--definitions", default=str(bundled_path()), help="definitions file or folder"
    )
    parser.add_argument(
        "--as-of",
        type=dt.date.fromisoformat,
        default=None,
        help="the day experiments must be inside their window on (YYYY-MM-DD; default today UTC)",
    )
    args = parser.parse_args(argv)
    defs = load(args.definitions)
    settings = get_settings()
    result = run(spark_session(settings, "strata-assign"), settings, defs, args.as_of)
    print(
        f"{settings.table(ASSIGNMENTS_TABLE)}: definitions {result['definitions_version']}, "
        f"run {result['run_id']}, assigned_at {result['assigned_at']}"
    )
    for exp, variant, vid, n in result["counts"]:
        print(f"  {exp:<20} {variant:<12} {vid:>6} {n:>10,}")
    for exp, why in sorted(result["outside_window"].items()):
        print(f"  {exp:<20} not assigned on {result['as_of']}: {why}")
    for w in result["warnings"]:
        print(f"  warning: {w}")
    return result


if __name__ == "__main__":
    main()
