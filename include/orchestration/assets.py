"""Airflow assets: the Iceberg tables one DAG produces and another is scheduled on."""

from airflow.sdk import Asset

ASSIGNMENTS = Asset("iceberg://strata/assignments")
GOAL_AGGREGATES = Asset("iceberg://strata/goal_aggregates")
RESULTS = Asset("iceberg://strata/results")
