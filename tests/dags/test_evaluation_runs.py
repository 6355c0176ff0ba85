"""The evaluation DAG run by run: conf a user can trust, one task per experiment, a broken
experiment failing alone, and one failure notification per failed task reaching a webhook.

Runs the real DAG with ``dag.test()`` (no Spark is needed: the evaluation reads Iceberg through
pyiceberg) on small aggregates written to the test home's catalog, in a namespace of its own;
the webhook is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pyarrow as pa
import pytest

from tests.strata.stats.test_results import DAY, aggregates, experiment_record

DAGS = Path(__file__).resolve().parents[2] / "dags"
NAMESPACE = "dag_evaluation_test"


class _Sink(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook(monkeypatch_module):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch_module.setenv(
        "STRATA_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/alerts"
    )
    yield _Sink.received
    server.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def evaluation_dag(airflow_db, monkeypatch_module, settings):
    """The DAG, reading a namespace of its own with three experiments; exp_c is broken."""
    from airflow.dag_processing.dagbag import DagBag

    from strata.config import get_settings
    from strata.stack import iceberg_catalog

    monkeypatch_module.setenv("STRATA_NAMESPACE", NAMESPACE)
    get_settings.cache_clear()
    catalog = iceberg_catalog(get_settings())
    catalog.create_namespace_if_not_exists(NAMESPACE)
    records = [experiment_record(e) for e in ("exp_a", "exp_b", "exp_c")]
    # exp_c's design has no control variant: its evaluation fails (a broken contract,
    # deterministic: no retry), the others' must not.
    variants = json.loads(records[2]["variants"])
    variants[0]["is_control"] = False
    records[2]["variants"] = json.dumps(variants)
    goals, cross = aggregates(3, ["exp_a", "exp_b", "exp_c"])
    for name, frame in (
        ("experiments", pd.DataFrame(records)),
        ("goal_aggregates", goals),
        ("goal_cross_aggregates", cross),
    ):
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        table = catalog.create_table_if_not_exists(f"{NAMESPACE}.{name}", schema=arrow.schema)
        table.overwrite(arrow)
    # A fresh DAG object per run: dag.test() runs in this process, and a run's params must not
    # leak into the next one (the scheduler starts every task in a process of its own).
    yield (lambda: DagBag(dag_folder=str(DAGS)).get_dag("evaluate_experiments")), catalog
    get_settings.cache_clear()


def _states(run) -> dict[str, str]:
    out = {}
    for ti in run.get_task_instances():
        name = ti.task_id.split(".")[-1]
        key = f"{name}[{ti.rendered_map_index or ti.map_index}]" if ti.map_index >= 0 else name
        out[key] = str(ti.state)
    return out


def _results(catalog) -> pd.DataFrame:
    return catalog.load_table(f"{NAMESPACE}.results").scan().to_pandas()


@pytest.mark.parametrize(
    ("conf", "reason"),
    [
        ({"experiment_idz": ["exp_a"]}, "undeclared conf key(s) ['experiment_idz']"),
        ({"experiment_ids": ["exp_zz"]}, "unknown experiment(s) ['exp_zz']"),
        ({"analysis_date": "2026-03-02"}, "analysis_date 2026-03-02: no goal aggregates"),
    ],
    ids=["undeclared-key", "unknown-experiment", "date-without-data"],
)
def test_bad_conf_fails_the_first_task_once_and_notifies(evaluation_dag, webhook, conf, reason):
    dag = evaluation_dag[0]()
    webhook.clear()
    run = dag.test(run_conf=conf)
    states = _states(run)
    assert str(run.state) == "failed"
    assert states["plan_evaluation"] == "failed"
    assert "evaluate_experiment" not in {k.split("[")[0] for k in states if states[k] == "success"}
    assert states["write_reports"] in ("upstream_failed", "skipped")
    assert states["check_evaluations"] in ("upstream_failed", "skipped")
    plan = next(ti for ti in run.get_task_instances() if ti.task_id.endswith("plan_evaluation"))
    assert plan.try_number == 1, "a deterministic error is not retried"
    (message,) = webhook
    assert message["dag_id"] == "evaluate_experiments"
    assert message["stage"] == "evaluation"
    assert reason in message["error"]
    assert message["log_url"].endswith(f"/tasks/{plan.task_id}?try_number=1")


def test_one_experiment_selected_evaluates_only_it(evaluation_dag, webhook):
    dag, catalog = evaluation_dag[0](), evaluation_dag[1]
    webhook.clear()
    run = dag.test(run_conf={"experiment_ids": ["exp_b"], "analysis_date": DAY.isoformat()})
    assert str(run.state) == "success"
    assert _states(run) == {
        "plan_evaluation": "success",
        "evaluate_experiment[exp_b]": "success",
        "write_reports": "success",
        "check_evaluations": "success",
    }
    results = _results(catalog)
    assert set(results["experiment_id"]) == {"exp_b"}
    assert webhook == []


def test_a_broken_experiment_fails_alone(evaluation_dag, webhook):
    dag, catalog = evaluation_dag[0](), evaluation_dag[1]
    webhook.clear()
    run = dag.test(run_conf={})  # every experiment with aggregates at the newest date
    states = _states(run)
    assert states == {
        "plan_evaluation": "success",
        "evaluate_experiment[exp_a]": "success",
        "evaluate_experiment[exp_b]": "success",
        "evaluate_experiment[exp_c]": "failed",
        "write_reports": "success",
        "check_evaluations": "failed",
    }
    # The reports are written for the others, and the run is red (not green beside a red task).
    assert str(run.state) == "failed"
    check = next(ti for ti in run.get_task_instances() if ti.task_id.endswith("check_evaluations"))
    assert check.try_number == 1
    results = _results(catalog)
    assert set(results["experiment_id"]) == {"exp_a", "exp_b"}
    assert set(results["analysis_date"]) == {date(2026, 3, 10)}
    # The failed evaluation's alert, then the night's summary from check_evaluations.
    message, summary = sorted(webhook, key=lambda m: m["task_id"].endswith("check_evaluations"))
    assert summary["error"].endswith("1 of 3 experiments not evaluated (see their "
                                     "evaluate_experiment tasks): exp_c")  # fmt: skip
    assert message["experiment_id"] == "exp_c"
    assert message["stage"] == "evaluation"
    assert "control" in message["error"]
    assert "exp_c" in message["text"]


def test_deadline_callback_alerts_only_when_the_days_results_are_missing(evaluation_dag, webhook):
    """The events run's deadline callback (run by the triggerer with this context shape)."""
    import asyncio

    from orchestration.deadlines import results_missing

    def context(day: str) -> dict:
        return {
            "dag_run": {"dag_id": "build_goal_aggregates", "dag_run_id": f"scheduled__{day}",
                        "conf": {"as_of_date": day}, "data_interval_start": None},
            "deadline": {"id": "d1", "deadline_time": f"{day}T06:00:00+00:00"},
        }  # fmt: skip

    webhook.clear()
    asyncio.run(results_missing(context=context(DAY.isoformat())))  # evaluated above
    assert webhook == []
    asyncio.run(results_missing(context=context("2026-03-12")))
    (message,) = webhook
    assert message["stage"] == "deadline"
    assert message["day"] == "2026-03-12"
    assert message["results_found"] is False
    assert "results for 2026-03-12 are missing" in message["text"]
