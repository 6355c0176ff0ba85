"""Every DAG file parses quickly, follows the house rules, and the demo DAG really runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"

#: Tasks that start a Spark session (besides every dbt task): they must take a `spark` pool slot.
SPARK_TASKS = {"generate_data", "assign_units", "ingest_exposure_logs", "maintain_tables"}


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert len(dagbag.dags) == len(list(DAGS.glob("*.py")))


def _uses_spark(task) -> bool:
    from orchestration.tasks import check_suite

    name = task.task_id.rsplit(".", 1)[-1]
    return (
        name in SPARK_TASKS
        or getattr(task, "python_callable", None) is check_suite.function
        or type(task).__module__.startswith("cosmos.")
    )


@pytest.mark.parametrize("path", sorted(DAGS.glob("*.py")), ids=lambda p: p.stem)
def test_house_rules(dagbag, path):
    from orchestration.defaults import SPARK_POOL
    from orchestration.failures import RETRY_POLICY, StrataFailureNotifier

    dag = dagbag.get_dag(path.stem)  # file stem == dag_id
    assert dag is not None, f"{path.name} must define a DAG with dag_id {path.stem!r}"
    assert dag.tags, "every DAG has tags"
    assert dag.doc_md, "every DAG documents itself (doc_md=__doc__)"
    assert dag.description, "every DAG has a one-line description (the DAG list shows it)"
    assert dag.max_active_runs == 1, "runs of a DAG never overlap (they write the same tables)"
    for task in dag.tasks:
        where = f"{dag.dag_id}.{task.task_id}"
        assert task.owner == "strata", f"{where}: owner"
        assert task.retries >= 1, f"{where}: transient failures retry"
        assert isinstance(task.retry_policy, type(RETRY_POLICY)), f"{where}: deterministic fail"
        assert task.retry_exponential_backoff, f"{where}: retries back off exponentially"
        assert task.execution_timeout is not None, f"{where}: every task has a timeout"
        assert any(isinstance(c, StrataFailureNotifier) for c in task.on_failure_callback), (
            f"{where}: a failure notifies"
        )
        if _uses_spark(task):
            assert task.pool == SPARK_POOL, f"{where}: a Spark task takes a spark pool slot"


def test_dbt_renders_one_task_per_model_from_the_manifest(dagbag):
    """Cosmos renders from the setup-built manifest: one `dbt build` task per model."""
    import json

    from orchestration.dbt import DBT_MANIFEST

    models = {
        n["name"]
        for n in json.loads(DBT_MANIFEST.read_text())["nodes"].values()
        if n["resource_type"] == "model"
    }
    dag = dagbag.get_dag("build_goal_aggregates")
    built = {
        t.task_id.split(".")[-1].removesuffix("_model_build")
        for t in dag.tasks
        if t.task_id.endswith("_model_build")
    }
    assert built == models


def test_evaluation_is_mapped_per_experiment(dagbag):
    dag = dagbag.get_dag("evaluate_experiments")
    task = dag.get_task("evaluation.evaluate_experiment")
    assert task.is_mapped
    assert "experiment_id" in task.map_index_template
    reports = dag.get_task("evaluation.write_reports")
    assert reports.trigger_rule == "all_done_min_one_success"


def test_maintenance_runs_daily_after_the_nightly_runs(dagbag):
    """One Spark task for every table, at 04:00 UTC (after the midnight runs)."""
    from orchestration.defaults import SPARK_POOL

    dag = dagbag.get_dag("maintain_tables")
    assert [t.task_id for t in dag.tasks] == ["maintain_tables"]
    assert dag.tasks[0].pool == SPARK_POOL
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("0 4 * * *", "UTC")
    assert not dag.catchup


def test_maintenance_dag_maintains_every_table(dagbag, spark, settings):
    """The task body under ``dag.test()``: every Strata table reported, the existing ones
    maintained (the others missing), the rows unchanged."""
    from airflow.utils.state import DagRunState

    from strata import contracts

    full = settings.table(contracts.EXPOSURE_LOG_REJECTS)
    # The rejects table's own schema: an earlier test (the holdout run) may have made it.
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {full} (raw_line STRING, reason STRING, "
        "source_file STRING, ingested_at TIMESTAMP) USING iceberg"
    )
    for i in range(6):
        spark.sql(f"INSERT INTO {full} VALUES ('bad line {i}', 'test', 'f', current_timestamp())")
    rows = sorted(r.raw_line for r in spark.table(full).collect())

    run = dagbag.get_dag("maintain_tables").test()
    assert run.state == DagRunState.SUCCESS
    (ti,) = run.get_task_instances()
    report = ti.xcom_pull(task_ids=ti.task_id)
    assert set(report) == set(contracts.TABLES)
    assert {r["state"] for r in report.values()} <= {"maintained", "missing"}
    rejects = report[contracts.EXPOSURE_LOG_REJECTS]
    assert rejects["state"] == "maintained"
    assert rejects["data_files_after"] < rejects["data_files_before"]
    assert sorted(r.raw_line for r in spark.table(full).collect()) == rows


def test_dag_files_parse_fast_and_import_nothing_heavy():
    """Parsing runs no dbt (Cosmos reads the manifest) and imports no Spark/dbt/GX/scipy."""
    code = (
        "import sys, runpy, time\n"
        "t = time.perf_counter()\n"
        f"for p in {[str(p) for p in sorted(DAGS.glob('*.py'))]!r}: runpy.run_path(p)\n"
        "print(f'PARSE_S={time.perf_counter() - t:.2f}')\n"
        "heavy = [m for m in ('pyspark', 'pyiceberg', 'dbt', 'great_expectations', 'scipy')"
        " if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("HEAVY=")]
    assert line == "HEAVY="
    (parse,) = [x for x in out.stdout.splitlines() if x.startswith("PARSE_S=")]
    # Well inside the DAG processor's 30 s import timeout (dbt ls took ~10 s of it before).
    assert float(parse.removeprefix("PARSE_S=")) < 15


@pytest.mark.slow
def test_demo_dag_runs_end_to_end(dagbag, redis_server, spark):
    from airflow.utils.state import DagRunState

    run = dagbag.get_dag("run_demo").test(run_conf={"users": 500, "days": 2, "seed": 1})
    assert run.state == DagRunState.SUCCESS
    assert spark.table(redis_server.table("users")).count() == 500

    # A replaced Redis node: the data is gone. The health DAG republishes the last verified
    # publication from its Iceberg snapshots, without re-running assignment.
    from strata.stack import redis_client

    client = redis_client(redis_server)
    live_before = {k: client.get(k) for k in client.scan_iter(match="*:live")}
    assert live_before, "the demo published a live version"
    client.flushall()
    health = dagbag.get_dag("lookup_health").test()
    assert health.state == DagRunState.SUCCESS
    (ti,) = health.get_task_instances()
    assert ti.xcom_pull(task_ids=ti.task_id)["state"] == "recovered"
    assert {k: client.get(k) for k in client.scan_iter(match="*:live")} == live_before


def test_events_run_has_a_results_deadline():
    """Under the scheduler (scripts/airflow.sh) the events run carries its deadline alert."""
    code = (
        "import runpy\n"
        f"ns = runpy.run_path({str(DAGS / 'build_goal_aggregates.py')!r})\n"
        "(alert,) = ns['build_goal_aggregates']().deadline\n"
        "print(alert.interval.total_seconds(), alert.callback.path)\n"
    )
    env = {**os.environ, "STRATA_RESULTS_DEADLINE_HOURS": "6"}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    assert out.stdout.split()[-2:] == ["21600.0", "orchestration.deadlines.results_missing"]
