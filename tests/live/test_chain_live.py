"""The whole chain under the real scheduler, triggered once through the REST API v2.

`run_demo` (generate → assign → gate → publish → sample requests) announces its raw events; the
`raw_events` asset event runs `build_goal_aggregates` (plan → ingest and gates → one dbt task per
model → gate → counts), whose `goal_aggregates` event (carrying the as-of date) runs
`evaluate_experiments`: one mapped task per experiment, then the reports. Airflow runs as
`make airflow` runs it (scripts/airflow.sh: LocalExecutor on SQLite, the shipped `spark` pool and
parallelism), so tasks run concurrently in separate processes. Then bad conf is refused as a user
would meet it, one experiment is evaluated alone, and the UI is driven in headless Chromium: the
grid shows success, and the report opened through a task's extra link names its experiment.
"""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import last_day, tries

pytestmark = [pytest.mark.slow, pytest.mark.live]


class TestChain:
    def test_every_run_succeeds_with_every_task_at_its_first_try(self, airflow_api, chain):
        for dag_id, run in chain.items():
            report = airflow_api.failure_report(dag_id, run["dag_run_id"])
            assert run["state"] == "success", report
            states = tries(airflow_api, dag_id, run["dag_run_id"])
            assert set(states.values()) == {("success", 1)}, report

    def test_asset_events_carry_the_as_of_date(self, airflow_api, chain):
        day = last_day()
        (raw,) = airflow_api.asset_events(
            source_dag_id="run_demo", source_run_id=chain["run_demo"]["dag_run_id"]
        )
        assert raw["uri"] == "iceberg://strata/raw_events"
        assert raw["extra"] == {"as_of_date": day, "full_refresh": True}
        (goals,) = airflow_api.asset_events(
            source_dag_id="build_goal_aggregates",
            source_run_id=chain["build_goal_aggregates"]["dag_run_id"],
        )
        assert goals["uri"] == "iceberg://strata/goal_aggregates"
        assert goals["extra"] == {"as_of_date": day, "full_refresh": True}
        (results,) = airflow_api.asset_events(
            source_dag_id="evaluate_experiments",
            source_run_id=chain["evaluate_experiments"]["dag_run_id"],
        )
        assert results["uri"] == "iceberg://strata/results"
        assert results["extra"]["analysis_date"] == day

    def test_one_task_per_experiment_and_their_results(self, airflow_api, chain, live_airflow):
        from strata.stack import iceberg_catalog

        run_id = chain["evaluate_experiments"]["dag_run_id"]
        mapped = {
            t["rendered_map_index"]
            for t in airflow_api.task_instances("evaluate_experiments", run_id)
            if t["map_index"] >= 0
        }
        settings = live_airflow.settings()
        catalog = iceberg_catalog(settings)
        results = catalog.load_table(f"{settings.namespace}.results").scan().to_pandas()
        assert mapped == set(results["experiment_id"])
        assert {"checkout_button", "feed_ranking", "price_display"} <= mapped
        # history: every day of the window was evaluated, as nightly runs would have done
        last = dt.date.fromisoformat(last_day())
        per_day = results.groupby("analysis_date")["experiment_id"].nunique()
        assert per_day.index.max() == last
        assert per_day.loc[last] == len(mapped)
        counts = airflow_api.xcom(
            "build_goal_aggregates", chain["build_goal_aggregates"]["dag_run_id"],
            "events.summarize_events",
        )  # fmt: skip
        assert counts["rows_per_model"]["goal_aggregates"] > 0
        assert sum(counts["quarantined"].values()) > 0  # the generator's malformed rows


class TestConfAUserCanTrust:
    def test_wrong_type_is_refused_at_trigger(self, airflow_api, chain):
        before = len(airflow_api.runs("evaluate_experiments"))
        response = airflow_api.trigger_response(
            "evaluate_experiments", conf={"experiment_ids": "checkout_button"}
        )
        assert response.status_code == 400, response.text
        assert "experiment_ids" in response.json()["detail"]
        assert len(airflow_api.runs("evaluate_experiments")) == before

    @pytest.mark.parametrize(
        ("conf", "reason"),
        [
            ({"experiment_idz": ["checkout_button"]}, "undeclared conf key(s) ['experiment_idz']"),
            ({"experiment_ids": ["no_such_experiment"]}, "unknown experiment(s)"),
            ({"analysis_date": "2026-01-02"}, "analysis_date 2026-01-02: no goal aggregates"),
        ],
        ids=["undeclared-key", "unknown-experiment", "date-without-data"],
    )
    def test_bad_conf_fails_the_first_task_with_one_line(self, airflow_api, chain, conf, reason):
        run = airflow_api.trigger("evaluate_experiments", conf=conf)
        done = airflow_api.wait_for_run("evaluate_experiments", run["dag_run_id"], 120)
        assert done["state"] == "failed"
        states = tries(airflow_api, "evaluate_experiments", run["dag_run_id"])
        assert states["evaluation.plan_evaluation"] == ("failed", 1)
        assert not any(k.startswith("evaluation.evaluate_experiment[") for k in states)
        log = airflow_api.task_log("evaluate_experiments", run["dag_run_id"],
                                   "evaluation.plan_evaluation")  # fmt: skip
        assert reason in log
        assert (
            airflow_api.asset_events(
                source_dag_id="evaluate_experiments", source_run_id=run["dag_run_id"]
            )
            == []
        )

    def test_one_experiment_is_evaluated_alone(self, airflow_api, chain):
        run = airflow_api.trigger(
            "evaluate_experiments", conf={"experiment_ids": ["checkout_button"]}
        )
        done = airflow_api.wait_for_run("evaluate_experiments", run["dag_run_id"], 180)
        assert done["state"] == "success"
        assert tries(airflow_api, "evaluate_experiments", run["dag_run_id"]) == {
            "evaluation.plan_evaluation": ("success", 1),
            "evaluation.evaluate_experiment[checkout_button]": ("success", 1),
            "evaluation.write_reports": ("success", 1),
            "evaluation.check_evaluations": ("success", 1),
        }


class TestUI:
    def test_grid_and_the_report_behind_the_extra_link(
        self, airflow_ui, airflow_api, chain, screenshot_dir
    ):
        run_id = chain["evaluate_experiments"]["dag_run_id"]
        airflow_ui.open_run("evaluate_experiments", run_id, ["evaluation"])  # the task group
        assert airflow_ui.run_state() == "Success"
        airflow_ui.screenshot(screenshot_dir / "airflow-evaluate-grid.png")
        mapped = [
            t for t in airflow_api.task_instances("evaluate_experiments", run_id)
            if t["rendered_map_index"] == "checkout_button"
        ]  # fmt: skip
        (ti,) = mapped
        links = airflow_ui.extra_links(
            "evaluate_experiments", run_id, ti["task_id"], ti["map_index"]
        )
        assert "Experiment report" in links
        airflow_ui.screenshot(screenshot_dir / "airflow-evaluate-task.png")
        page = airflow_ui.page_text(links["Experiment report"])
        assert "checkout_button" in page
        airflow_ui.screenshot(screenshot_dir / "airflow-report-from-link.png")

    def test_gate_links_to_its_quality_report(self, airflow_ui, airflow_api, chain):
        run_id = chain["build_goal_aggregates"]["dag_run_id"]
        links = airflow_api.extra_links(
            "build_goal_aggregates", run_id, "events.check_goal_aggregates"
        )
        url = links["Data quality report"]
        assert url
        assert "/strata/quality/goal_aggregates/" in url
        page = airflow_ui.page_text(url)
        assert "goal_aggregates" in page
        assert "PASSED" in page
