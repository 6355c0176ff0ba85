"""Strata: batch experimentation on Airflow, Spark, Iceberg, dbt and Redis.

The core library. It imports without Airflow or a JVM: Spark, pyiceberg and redis are imported
inside the functions that need them.
"""

from strata.config import Settings, get_settings

__all__ = ["Settings", "get_settings"]
__version__ = "0.1.0"
