"""Strata demo: the whole pipeline on synthetic data, from the Airflow UI or `make demo`.

Generates synthetic orgs, users, devices and raw events (Spark → Iceberg) and checks Spark and
pyiceberg read the same tables; validates the bundled definitions, assigns the users and
devices and publishes to Redis (both as of the data's last day); serves
sample device-register requests through the reference endpoint. Its last task announces the
new raw events (the `raw_events` asset, with the data's last day and a full refresh), which
runs `build_goal_aggregates`, whose `goal_aggregates` event runs `evaluate_experiments` with
every day re-evaluated: the whole chain, one trigger.
"""

from __future__ import annotations

from airflow.sdk import Param, dag
from pendulum import datetime

from orchestration.defaults import DEFAULT_ARGS
from orchestration.stages import assignment_stage
from orchestration.tasks import check_redis, generate_data, serve_sample_requests, verify_tables
from strata.synthetic import DEFAULT_START_DATE


@dag(
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["strata", "demo"],
    description="Synthetic data → assignment → Redis → sample requests; triggers the chain",
    doc_md=__doc__,
    params={
        "users": Param(100_000, type="integer", minimum=1, description="synthetic users"),
        "days": Param(14, type="integer", minimum=1, description="days of events"),
        "seed": Param(7, type="integer", description="generator seed"),
        "start_date": Param(
            DEFAULT_START_DATE.isoformat(),
            type="string",
            format="date",
            description="first day of synthetic events (the experiments start on day 7)",
        ),
    },
)
def run_demo():
    redis_ok = check_redis()
    generated = generate_data()
    redis_ok >> generated
    # Assign and publish as of the synthetic data's last day (its experiments ended before the
    # real today): the experiments inside their window that day get units and are served.
    last_day = "{{ macros.ds_add(params.start_date, params.days - 1) }}"
    published = assignment_stage(as_of=last_day, assign_as_of=last_day)
    verify_tables(generated) >> published.operator.task_group
    serve_sample_requests(published)


run_demo()
