"""Defaults every Strata task shares: one ``DEFAULT_ARGS``, the Spark pool and its sizing.

- Retries: transient failures (a lost connection, a catalog commit conflict, a killed worker)
  retry with exponential backoff (30 s, 60 s, ... up to 10 min); deterministic ones (invalid
  definitions or conf, a broken data contract, a failed expectation, a missing input) fail at
  once (:data:`orchestration.failures.RETRY_POLICY`).
- Every task has an execution timeout, and a failure sends one notification
  (:class:`orchestration.failures.StrataFailureNotifier`).
- ``SPARK_POOL``: tasks that start a Spark session (the Spark jobs, the GX gates, every dbt
  model) take a slot of the ``spark`` pool. `scripts/airflow.sh` creates it with
  ``STRATA_AIRFLOW_SPARK_SLOTS`` slots (2 by default on this 2-core machine: two local sessions
  overlap one's JVM start-up with the other's work; each may take the driver memory). Commits
  of concurrent sessions to the embedded catalog retry and land (docs/adr/0001); the GX gates
  take a file lock around their shared data context. On a cluster, raise it.
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
