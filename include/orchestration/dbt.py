"""Cosmos configuration for Strata's dbt project: project, profile, rendering and execution.

Rendering reads the manifest `make setup` builds (``dbt parse``; :data:`DBT_MANIFEST`): parsing a
DAG file never runs dbt, so it stays well inside the DAG processor's import timeout. A stale
manifest fails a test (tests/dags/test_dbt_manifest.py) and `make setup` rebuilds it whenever a
file of the dbt project changes.

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
#: Built by `make setup` (`dbt parse --target-path target/airflow`); rendered by Cosmos.
DBT_MANIFEST = DBT_PROJECT_DIR / "target" / "airflow" / "manifest.json"


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


def _project_config() -> ProjectConfig:
    if not DBT_MANIFEST.is_file():
        raise FileNotFoundError(
            f"dbt manifest {DBT_MANIFEST} is missing: run `make setup` (it runs `dbt parse`)"
        )
    return ProjectConfig(DBT_PROJECT_DIR, manifest_path=DBT_MANIFEST)


project_config = _project_config()
profile_config = ProfileConfig(
    profile_name="strata", target_name="local", profile_mapping=StrataSparkSessionProfile()
)
# In-process dbtRunner: one Python process (and one SparkSession) per task, no dbt subprocess.
execution_config = ExecutionConfig(
    invocation_mode=InvocationMode.DBT_RUNNER, dbt_executable_path=get_system_dbt()
)
# One task per model, running `dbt build` on it: the model, then its tests, in one Spark
# session (half the tasks, and half the Spark start-ups, of a run task plus a test task).
render_config = RenderConfig(
    load_method=LoadMode.DBT_MANIFEST,
    test_behavior=TestBehavior.BUILD,
    should_detach_multiple_parents_tests=True,  # e.g. relationships: run after both models
)
