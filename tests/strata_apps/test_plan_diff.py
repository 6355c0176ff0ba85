"""``strata plan --diff``: the assignment transform run without writing, compared per experiment
with the assignments snapshot of the live lookup version."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid

import pytest

from lookup_loader.loader import publish
from spark_jobs.assign_experiments import run
from spark_jobs.generate_synthetic import build_all
from strata.definitions import bundled_path, load
from strata.synthetic import GeneratorConfig
from strata_apps.plan_diff import diff_frames, plan_diff

SCHEMA = "unit_type string, unit_id string, experiment_id string, variant_id int"
#: A day inside every bundled running experiment's window (assignment honours the windows).
DAY = dt.date(2026, 11, 10)


def test_diff_frames_counts_each_case(spark):
    live = spark.createDataFrame(
        [("user_id", "a", "x", 1), ("user_id", "b", "x", 1), ("user_id", "c", "x", 2),
         ("device_id", "a", "y", 5)],
        SCHEMA,
    )  # fmt: skip
    planned = spark.createDataFrame(
        [("user_id", "a", "x", 1), ("user_id", "b", "x", 2), ("user_id", "d", "x", 1),
         ("device_id", "a", "z", 7)],
        SCHEMA,
    )  # fmt: skip
    rows = {r.pop("experiment_id"): r for r in diff_frames(live, planned)}
    assert rows == {
        "x": {"live": 3, "planned": 3, "unchanged": 1, "changed": 1, "added": 1, "removed": 1},
        "y": {"live": 1, "planned": 0, "unchanged": 0, "changed": 0, "added": 0, "removed": 1},
        "z": {"live": 0, "planned": 1, "unchanged": 0, "changed": 0, "added": 1, "removed": 0},
    }


@pytest.fixture(scope="module")
def published(spark, redis_server):
    """Small synthetic inputs, assigned with the bundled definitions and published."""
    settings = redis_server
    tables = build_all(spark, GeneratorConfig(users=400, days=1, seed=5))
    for name in ("users", "orgs", "devices"):
        tables[name].writeTo(settings.table(name)).using("iceberg").createOrReplace()
    run(spark, settings, load(bundled_path()), as_of=DAY)
    tag = uuid.uuid4().hex[:8]
    prefix, publications = f"pd{tag}", f"pd_{tag}_p"
    publish(settings, prefix=prefix, publications_table=publications, as_of=DAY)
    return settings, prefix, publications


def test_plan_diff_against_the_live_version(spark, published, tmp_path, capsys):
    settings, prefix, publications = published
    same = plan_diff(load(bundled_path()), settings, spark=spark, prefix=prefix,
                     publications_table=publications, as_of=DAY)  # fmt: skip
    assert same.rows
    for r in same.rows:
        assert r["live"] == r["planned"] == r["unchanged"] > 0, r

    folder = tmp_path / "defs"
    shutil.copytree(bundled_path(), folder)
    text = (folder / "checkout.yaml").read_text()
    text = text.replace("start: 0, end: 5000,\n         params: {button",
                        "start: 0, end: 3000,\n         params: {button")  # fmt: skip
    text = text.replace("vid: 1002, name: treatment, start: 5000", "vid: 1002, name: treatment, "
                        "start: 3000")  # fmt: skip
    text = text.replace("layer: upsell\n    status: running", "layer: upsell\n    status: stopped")
    (folder / "checkout.yaml").write_text(text)
    diff = plan_diff(
        load(folder), settings, spark=spark, prefix=prefix, publications_table=publications,
        as_of=DAY,
    )  # fmt: skip
    changed = {r["experiment_id"]: r for r in diff.rows}
    button = changed["checkout_button"]
    assert button["changed"] > 0
    assert (button["added"], button["removed"]) == (0, 0)
    assert button["changed"] + button["unchanged"] == button["live"]
    assert 0.1 < button["changed"] / button["live"] < 0.3  # slots [3000, 5000) of 10,000
    upsell = changed["upsell_banner"]
    assert (upsell["planned"], upsell["removed"]) == (0, upsell["live"])
    for exp, r in changed.items():
        if exp not in ("checkout_button", "upsell_banner"):
            assert r["unchanged"] == r["live"] == r["planned"], r

    from strata_apps.cli import main

    capsys.readouterr()
    assert main(["plan", str(folder), "--diff", "--prefix", prefix,
                 "--publications", publications, "--as-of", DAY.isoformat()]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Compared with what is live: version" in out
    assert "checkout_button" in out.split("Compared with what is live")[1]
    assert "unit assignments would change; nothing was written." in out
