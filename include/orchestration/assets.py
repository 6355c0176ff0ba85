"""Airflow assets: the Iceberg tables one DAG produces and another is scheduled on.

Events carry an ``extra`` a downstream run reads, since asset-triggered runs have no logical
date: ``raw_events`` and ``goal_aggregates`` events carry ``as_of_date`` (the day the data
stands for) and ``full_refresh`` (the data was replaced: rebuild, re-evaluate every day).
"""

from airflow.sdk import Asset

RAW_EVENTS = Asset("iceberg://strata/raw_events")
ASSIGNMENTS = Asset("iceberg://strata/assignments")
GOAL_AGGREGATES = Asset("iceberg://strata/goal_aggregates")
RESULTS = Asset("iceberg://strata/results")
