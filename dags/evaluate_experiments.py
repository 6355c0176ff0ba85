"""Nightly statistical verdict for every running experiment.

Runs whenever `build_goal_aggregates` has refreshed the `goal_aggregates` asset (or by hand with
a date): evaluates every experiment with aggregates at the analysis date (newest `as_of_date` by
default) — Welch / delta-method tests, CUPED, Holm/BH, SRM against the design weights, sequential
boundaries — replaces its rows in the Iceberg `results` table, and writes the static HTML reports
(`$STRATA_HOME/reports/index.html`).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task
from pendulum import datetime

from orchestration.assets import GOAL_AGGREGATES, RESULTS


@dag(
    start_date=datetime(2026, 1, 1),
    schedule=[GOAL_AGGREGATES],
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "strata", "retries": 2},
    tags=["strata", "stats"],
    doc_md=__doc__,
    params={
        "analysis_date": Param(
            None, type=["null", "string"], format="date", description="default: newest"
        ),
    },
)
def evaluate_experiments():
    @task(outlets=[RESULTS])
    def evaluate(params: dict | None = None) -> dict:
        import datetime as dt

        from strata.config import get_settings
        from strata.stack import iceberg_catalog
        from strata.stats import evaluable_experiments, run_evaluation, verdicts

        settings = get_settings()
        catalog = iceberg_catalog(settings)
        requested = params.get("analysis_date") if params else None
        day = dt.date.fromisoformat(requested) if requested else None
        ids, day = evaluable_experiments(catalog, day, settings.namespace)
        if not ids:
            return {"analysis_date": None, "experiments": 0}
        evaluation, frame = run_evaluation(catalog, ids, day, namespace=settings.namespace)
        table = verdicts(evaluation)
        print(table.to_string(index=False))
        return {"analysis_date": day.isoformat(), "experiments": len(ids), "rows": len(frame)}

    @task
    def report(evaluated: dict) -> str:
        from strata.config import get_settings
        from strata.stack import iceberg_catalog
        from strata.stats import build_reports

        settings = get_settings()
        out = settings.home / "reports"
        pages = build_reports(iceberg_catalog(settings), out, None, settings.namespace)
        return f"{len(pages)} pages in {out}"

    report(evaluate())


evaluate_experiments()
