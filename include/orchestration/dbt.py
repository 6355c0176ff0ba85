"""Cosmos configuration for Strata's dbt project: project, profile and execution.

The dbt profile is not a file: :class:`StrataSparkSessionProfile` renders it at task run time
from the same Spark properties every Strata job uses (``strata.stack.spark_conf``), so dbt can
never drift from the Spark jobs and nothing is read or written when a DAG file is parsed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cosmos import ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.config import get_system_dbt
from cosmos.constants import InvocationMode, LoadMode, TestBehavior
from cosmos.profiles.base import BaseProfileMapping

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"


class StrataSparkSessionProfile(BaseProfileMapping):
    """dbt-spark ``session`` profile from Strata's settings, not from an Airflow connection."""

    airflow_connection_type = "spark"
    dbt_profile_type = "spark"
    dbt_profile_method = "session"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(conn_id="strata_spark_session", **kwargs)

    @property
    def profile(self) -> dict[str, Any]:
        from strata.config import get_settings
        from strata.stack import spark_conf

        settings = get_settings()
        return {
            "type": "spark",
            "method": "session",
            "host": "NA",
            "schema": settings.namespace,
            "threads": 1,
            "server_side_parameters": spark_conf(settings)
            | {"spark.master": settings.spark_master},
        }

    @property
    def mock_profile(self) -> dict[str, Any]:
        return {"type": "spark", "method": "session", "host": "NA", "schema": "strata"}


project_config = ProjectConfig(DBT_PROJECT_DIR)
profile_config = ProfileConfig(
    profile_name="strata", target_name="local", profile_mapping=StrataSparkSessionProfile()
)
# In-process dbtRunner: one Python process (and one SparkSession) per task, no dbt subprocess.
execution_config = ExecutionConfig(
    invocation_mode=InvocationMode.DBT_RUNNER, dbt_executable_path=get_system_dbt()
)
# One task per model; each model's tests run right after it (AFTER_EACH).
# `dbt ls` renders the graph in a subprocess, so parsing a DAG file never imports dbt or pyspark.
render_config = RenderConfig(
    load_method=LoadMode.DBT_LS,
    test_behavior=TestBehavior.AFTER_EACH,
    invocation_mode=InvocationMode.SUBPROCESS,
    should_detach_multiple_parents_tests=True,  # e.g. relationships: run after both models
    dbt_executable_path=get_system_dbt(),  # orchestration/__init__ put this venv's dbt on PATH
)
