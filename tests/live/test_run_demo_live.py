"""`run_demo` under the real scheduler: triggered through the REST API v2, watched in the UI.

Airflow runs as `make airflow` runs it (scripts/airflow.sh: LocalExecutor on SQLite, the shipped
pool and parallelism), so tasks run concurrently in separate processes, unlike `dag.test()`.
A task that needed a second try fails the test too: retries must not hide a concurrency failure.
"""

from __future__ import annotations

import time

import pytest
from conftest import CHAIN_CONF

pytestmark = [pytest.mark.slow, pytest.mark.live]

DAG_ID = "run_demo"
TASKS = {
    "check_redis",
    "generate_data",
    "verify_tables",
    "assignment.validate_definitions",
    "assignment.assign_units",
    "assignment.check_assignments",
    "assignment.publish_lookups",
    "serve_sample_requests",
}
CONF = CHAIN_CONF


@pytest.fixture(scope="module")
def demo_run(chain) -> dict:
    """run_demo's run of the chain (5,000 users x 3 days, triggered once for every live file)."""
    return chain[DAG_ID]


class TestTriggerValidation:
    """Declared params are checked when a run is triggered; nothing runs on bad input."""

    def test_wrong_param_type_is_400_naming_the_param(self, airflow_api):
        airflow_api.wait_for_dag(DAG_ID)
        before = len(airflow_api.runs(DAG_ID))
        response = airflow_api.trigger_response(
            DAG_ID, conf={**CONF, "users": "5000 users"}, logical_date=None
        )
        assert response.status_code == 400, response.text
        detail = response.json()["detail"]
        assert "Invalid input for param users" in detail
        assert "is not of type 'integer'" in detail
        assert len(airflow_api.runs(DAG_ID)) == before

    def test_param_below_its_minimum_is_400(self, airflow_api):
        before = len(airflow_api.runs(DAG_ID))
        response = airflow_api.trigger_response(DAG_ID, conf={**CONF, "days": 0})
        assert response.status_code == 400, response.text
        assert "Invalid input for param days" in response.json()["detail"]
        assert len(airflow_api.runs(DAG_ID)) == before

    def test_conf_that_is_not_an_object_is_422(self, airflow_api):
        before = len(airflow_api.runs(DAG_ID))
        response = airflow_api.trigger_response(DAG_ID, conf=["users", 5000])
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "conf"]
        assert len(airflow_api.runs(DAG_ID)) == before


class TestRunDemoUnderScheduler:
    def test_run_succeeds_with_every_task_at_its_first_try(self, airflow_api, demo_run):
        run_id = demo_run["dag_run_id"]
        report = airflow_api.failure_report(DAG_ID, run_id)
        assert demo_run["state"] == "success", report
        tries = {
            t["task_id"]: (t["state"], t["try_number"])
            for t in airflow_api.task_instances(DAG_ID, run_id)
        }
        assert tries == dict.fromkeys(TASKS, ("success", 1)), report

    def test_run_produced_the_tables_and_the_publication(self, airflow_api, demo_run, live_airflow):
        from strata.lookup import LookupClient
        from strata_apps.health import iceberg_row_counts

        run_id = demo_run["dag_run_id"]
        generated = airflow_api.xcom(DAG_ID, run_id, "generate_data")
        assert generated["users"] == CONF["users"]
        assert min(generated.values()) > 0
        # Read back by pyiceberg in the task, and again here, in another process.
        assert airflow_api.xcom(DAG_ID, run_id, "verify_tables") == generated
        assert iceberg_row_counts(list(generated), live_airflow.settings()) == generated
        published = airflow_api.xcom(DAG_ID, run_id, "assignment.publish_lookups")
        assert published["state"] == "live"
        assert published["rows"] > 0
        answers = airflow_api.xcom(DAG_ID, run_id, "serve_sample_requests")["samples"]
        assert len(answers) == 5
        assert all(a["device_id"] and a["experiments"] for a in answers)
        # The live Redis serves that version, and the endpoint's answers came from it.
        client = LookupClient(live_airflow.settings())
        try:
            assert client.live_version() == published["version"]
            for sample in answers:
                answer = client.answer(sample["device_id"], sample["user_id"])
                assert answer.version == published["version"]
                served = {entry.split("=")[0] for entry in sample["experiments"]}
                assert {experiment for experiment, _ in answer.experiments} == served
        finally:
            client.close()

    def test_run_asset_events_are_listed_by_run(self, airflow_api, demo_run, live_notes):
        run_id = demo_run["dag_run_id"]
        events = airflow_api.asset_events(source_dag_id=DAG_ID, source_run_id=run_id)
        assert all(e["source_run_id"] == run_id for e in events)
        live_notes.append(
            f"asset events emitted by {DAG_ID} {run_id}: "
            + (", ".join(f"{e['uri']} extra={e['extra']}" for e in events) or "none")
        )


class TestUI:
    def test_grid_shows_the_run_succeeded(self, airflow_ui, demo_run, screenshot_dir, live_timings):
        started = time.monotonic()
        run_id = demo_run["dag_run_id"]
        # The grid shows top-level tasks and (collapsed) task groups; the table every task.
        top = sorted({t.split(".")[0] for t in TASKS})
        airflow_ui.open_run(DAG_ID, run_id, top)
        assert airflow_ui.run_state() == "Success"
        assert set(top) <= set(airflow_ui.grid_cells(run_id))
        states = airflow_ui.task_states()
        assert set(states.values()) == {"Success"}
        assert {t.split(".")[-1] for t in TASKS} <= {n.split(".")[-1] for n in states}
        shot = airflow_ui.screenshot(screenshot_dir / "airflow-run-demo-grid.png")
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
        live_timings["UI: log in, open the run, screenshot"] = time.monotonic() - started

    def test_dag_list_shows_the_dags(self, airflow_ui, airflow_api, screenshot_dir, live_notes):
        errors = airflow_api.import_errors()
        live_notes.append(
            "DAG import errors: "
            + ("; ".join(f"{f}: {t.strip().splitlines()[-1]}" for f, t in errors.items()) or "none")
        )
        dag_ids = {d["dag_id"] for d in airflow_api.get("/dags", limit=100)["dags"]}
        assert DAG_ID in dag_ids
        airflow_ui.open_dags(sorted(dag_ids))
        airflow_ui.screenshot(screenshot_dir / "airflow-dags.png")
