"""Defaults every Strata task shares: one ``DEFAULT_ARGS``, the Spark pool and its sizing.

- Retries: transient failures (a lost connection, a catalog commit conflict, a killed worker)
  retry with exponential backoff (30 s, 60 s, ... up to 10 min); deterministic ones (invalid
  definitions or conf, a broken data contract, a failed expectation, a missing input) fail at
  once (:data:`orchestration.failures.RETRY_POLICY`).
- Every task has an execution timeout, and a failure sends one notification
  (:class:`orchestration.failures.StrataFailureNotifier`).
- ``SPARK_POOL``: tasks that start a Spark session (the Spark jobs, the GX gates, every dbt
  model) take a slot of the ``spark`` pool. `scripts/airflow.sh` creates it with
  ``STRATA_AIRFLOW_SPARK_SLOTS`` slots (1 by default: a local Spark session uses every core and
  a few GB, and the embedded SQLite catalog serialises commits anyway). On a cluster with the
  REST catalog, raise it.
"""

from __future__ import annotations

import datetime as dt
import os

from orchestration.failures import RETRY_POLICY, StrataFailureNotifier

SPARK_POOL = "spark"

#: Execution timeout of every task, in minutes (a stuck task fails and alerts instead of
#: holding its pool slot forever).
TASK_TIMEOUT = dt.timedelta(minutes=int(os.environ.get("STRATA_TASK_TIMEOUT_MINUTES", "120")))

DEFAULT_ARGS = {
    "owner": "strata",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=10),
    "retry_policy": RETRY_POLICY,
    "execution_timeout": TASK_TIMEOUT,
    "on_failure_callback": [StrataFailureNotifier()],
}
