"""Domain holdouts in the Spark job agree with the Python reference on every unit."""

from __future__ import annotations

import datetime as dt
import json

from spark_jobs.assign_experiments import (
    ASSIGNMENT_FIELDS,
    experiments_frame,
    transform,
    unit_contexts,
)
from spark_jobs.generate_synthetic import build_all
from strata.assignment import assign_unit, held_out, holdout_assignments
from strata.definitions import load
from strata.synthetic import GeneratorConfig
from tests.strata.test_holdouts import DAY, TEXT

KEY = ["unit_type", "unit_id", *[n for n, _ in ASSIGNMENT_FIELDS]]


def test_spark_holds_out_the_same_units_as_the_reference(spark, tmp_path):
    (tmp_path / "d.yaml").write_text(TEXT)
    defs = load(tmp_path)
    tables = build_all(spark, GeneratorConfig(users=8_000, days=1, seed=3))
    units = unit_contexts(tables["users"], tables["orgs"], tables["devices"])
    got = {
        tuple(r)
        for r in transform(units, defs, "run", dt.datetime(2026, 11, 8), DAY).select(*KEY).collect()
    }
    expected, held = set(), 0
    for row in units["user_id"].toLocalIterator():
        ctx = row.asDict()
        held += held_out(defs, "shop", ctx["user_id"])
        uid = ctx["user_id"]
        expected |= {a.key() for a in assign_unit(defs, "user_id", uid, ctx, as_of=DAY)}
        expected |= {a.key() for a in holdout_assignments(defs, "user_id", uid, as_of=DAY)}
    assert got == expected
    assert abs(held / 8_000 - 0.20) < 0.015
    in_a = {r[1] for r in got if r[2] == "a"}
    assert len(in_a) == 8_000 - held  # every unit of the domain but the holdout
    comparison = [r for r in got if r[2] == "holdout_shop"]
    assert len(comparison) == 8_000  # every unit of the domain: holdout or rest
    assert sum(r[3] == 9901 for r in comparison) == held
    row = experiments_frame(spark, defs).where("experiment_id = 'holdout_shop'").first()
    assert (row.status, row.unit_type, row.domain_id) == ("holdout", "user_id", "shop")
    variants = json.loads(row.variants)
    assert [(v["name"], v["is_control"], v["weight"]) for v in variants] == [
        ("holdout", True, 2000.0),
        ("rest", False, 8000.0),
    ]
    assert [m["id"] for m in json.loads(row.metrics)] == ["conversion"]
