"""Airflow assets: the Iceberg tables one DAG produces and another is scheduled on.

Events carry an ``extra`` a downstream run reads, since asset-triggered runs have no logical
date: ``raw_events`` and ``goal_aggregates`` events carry ``as_of_date`` (the day the data
stands for) and ``full_refresh`` (the data was replaced: rebuild, re-evaluate every day).
"""

from airflow.sdk import Asset

from strata import contracts

RAW_EVENTS = Asset(f"iceberg://strata/{contracts.RAW_EVENTS}")
ASSIGNMENTS = Asset(f"iceberg://strata/{contracts.ASSIGNMENTS}")
GOAL_AGGREGATES = Asset(f"iceberg://strata/{contracts.GOAL_AGGREGATES}")
RESULTS = Asset(f"iceberg://strata/{contracts.RESULTS}")
