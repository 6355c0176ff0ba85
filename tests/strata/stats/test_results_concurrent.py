"""Concurrent evaluations of different experiments (the mapped Airflow tasks) all land.

Each process replaces its own experiment's rows in the one `results` table at the same time as
the others; a commit that loses the race must retry on the new snapshot, not overwrite the
winner's rows. Real processes, the real SQLite catalog of the test home.
"""

from __future__ import annotations

import multiprocessing as mp
import os

import pandas as pd
import pyarrow as pa
import pytest

from tests.strata.stats.test_results import DAY, aggregates, experiment_record

# Real processes racing on the SQLite catalog (~10 s on a quiet machine, a minute on a busy one).
pytestmark = pytest.mark.integration

NAMESPACE = "results_concurrent_test"
EXPERIMENTS = [f"exp_{i}" for i in range(6)]


def _evaluate(args: tuple[str, str, int]) -> int:
    home, exp_id, round_no = args
    os.environ["STRATA_HOME"] = home
    from strata.config import get_settings
    from strata.stack import iceberg_catalog
    from strata.stats import run_evaluation

    get_settings.cache_clear()
    catalog = iceberg_catalog(get_settings())
    _, frame = run_evaluation(
        catalog, [exp_id], DAY, namespace=NAMESPACE, run_id=f"{exp_id}-round-{round_no}"
    )
    return len(frame)


@pytest.fixture(scope="module")
def catalog(settings):
    from strata.stack import iceberg_catalog

    cat = iceberg_catalog(settings)
    cat.create_namespace_if_not_exists(NAMESPACE)
    goals, cross = aggregates(5, EXPERIMENTS)
    for name, frame in (
        ("experiments", pd.DataFrame([experiment_record(e) for e in EXPERIMENTS])),
        ("goal_aggregates", goals),
        ("goal_cross_aggregates", cross),
    ):
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        cat.create_table_if_not_exists(f"{NAMESPACE}.{name}", schema=arrow.schema).overwrite(arrow)
    return cat


@pytest.mark.parametrize("round_no", [1, 2])
def test_concurrent_writers_of_different_experiments_all_land(catalog, settings, round_no):
    jobs = [(str(settings.home), e, round_no) for e in EXPERIMENTS]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        rows = pool.map(_evaluate, jobs)
    stored = catalog.load_table(f"{NAMESPACE}.results").scan().to_pandas()
    assert set(stored["experiment_id"]) == set(EXPERIMENTS)
    assert len(stored) == sum(rows)  # one copy of each experiment's rows, none lost
    runs = stored.groupby("experiment_id")["run_id"].unique()
    assert {e: list(r) for e, r in runs.items()} == {
        e: [f"{e}-round-{round_no}"] for e in EXPERIMENTS
    }
