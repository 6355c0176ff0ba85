"""How Strata's tasks fail: deterministic errors at once, transient ones with backoff, one alert.

- :data:`RETRY_POLICY` (Airflow's per-exception retry policy): an error that would fail the same
  way again — invalid definitions or run conf, a data contract broken, a failed expectation, a
  missing input table — fails the task at once; anything else (a lost connection, a catalog
  commit conflict, a killed worker) retries with exponential backoff.
- :class:`StrataFailureNotifier`: one notification per failed task, naming the DAG, the stage,
  the experiment (for the per-experiment tasks) and the error, with a link to the task's log.
  It POSTs JSON to a webhook — Slack-compatible (a ``text`` field) and readable by any HTTP
  receiver — configured by the Airflow connection ``strata_alerts`` (its host is the URL;
  ``http``/``https``) or the ``STRATA_ALERT_WEBHOOK_URL`` setting; without either it only logs.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any

from airflow.sdk import BaseNotifier
from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy

log = logging.getLogger(__name__)

#: Errors that fail the same way on every try, by dotted path (subclasses included).
DETERMINISTIC_ERRORS = frozenset(
    {
        "strata.errors.DataError",  # contracts: aggregates, designs, metric expressions, gates
        "strata.definitions.DefinitionError",  # the reviewed definition files
        "orchestration.runconf.RunConfError",  # undeclared conf key, unknown experiment, no data
        "pyiceberg.exceptions.NoSuchTableError",  # a missing input table
        "pyspark.errors.exceptions.captured.AnalysisException",  # missing table/column in Spark
    }
)


class DeterministicErrorsFail(RetryPolicy):
    """Fail at once on :data:`DETERMINISTIC_ERRORS`; otherwise the task's retries with backoff.

    Matches on the exception's class hierarchy by name, so declaring the policy imports neither
    pyspark nor pyiceberg when a DAG file is parsed (Airflow's ``ExceptionRetryPolicy`` imports
    every class it names at declaration).
    """

    def __init__(self, names: frozenset[str] = DETERMINISTIC_ERRORS) -> None:
        self.names = names

    def evaluate(self, exception, try_number, max_tries, context=None) -> RetryDecision:
        for cls in type(exception).__mro__:
            name = f"{cls.__module__}.{cls.__qualname__}"
            if name in self.names:
                return RetryDecision.fail(f"deterministic error ({name}): a retry fails the same")
        return RetryDecision.default()


RETRY_POLICY = DeterministicErrorsFail()

ALERT_CONNECTION_ID = "strata_alerts"


def _webhook_url() -> str | None:
    """The alert webhook: the ``strata_alerts`` connection, else ``STRATA_ALERT_WEBHOOK_URL``."""
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(ALERT_CONNECTION_ID)
    except Exception:  # no such connection (or no API to ask): fall back to the setting
        conn = None
    if conn is not None and conn.host:
        host = conn.host
        if "://" not in host:
            scheme = "https" if conn.conn_type == "https" else "http"
            port = f":{conn.port}" if conn.port else ""
            host = f"{scheme}://{host}{port}{'/' + conn.schema if conn.schema else ''}"
        return host
    return os.environ.get("STRATA_ALERT_WEBHOOK_URL") or None


def failure_message(context: Any) -> dict[str, Any]:
    """What an operator needs from a failed task: where, which experiment, why, and the log."""
    ti = context["ti"]
    task_id: str = ti.task_id
    stage = task_id.split(".", 1)[0] if "." in task_id else task_id
    experiment = None
    task = context.get("task")
    op_kwargs = getattr(task, "op_kwargs", None) or {}
    if isinstance(op_kwargs, dict):
        experiment = op_kwargs.get("experiment_id")
    error = context.get("exception")
    reason = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    reason = reason.splitlines()[0][:500] if reason else reason
    log_url = getattr(ti, "log_url", None)
    where = f"{ti.dag_id} / {stage}" + (f" / experiment {experiment}" if experiment else "")
    return {
        "text": f"Strata task failed: {where}: {reason} (log: {log_url})",
        "dag_id": ti.dag_id,
        "task_id": task_id,
        "stage": stage,
        "experiment_id": experiment,
        "run_id": ti.run_id,
        "map_index": getattr(ti, "map_index", -1),
        "try_number": getattr(ti, "try_number", None),
        "error": reason,
        "log_url": log_url,
    }


class StrataFailureNotifier(BaseNotifier):
    """Send one JSON message per failed task to the configured webhook (see module docs)."""

    template_fields = ()

    def __init__(self, timeout_s: float = 10.0) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def notify(self, context: Any) -> None:
        send_alert(failure_message(context), self.timeout_s)


def send_alert(message: dict[str, Any], timeout_s: float = 10.0) -> None:
    """POST one alert (JSON, ``text`` first) to the configured webhook; only log without one.

    Never raises: an alert that cannot be sent must not hide the error it reports.
    """
    url = _webhook_url()
    if not url:
        log.warning("strata alert (no webhook configured): %s", message["text"])
        return
    request = urllib.request.Request(
        url,
        data=json.dumps(message, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            log.info("strata alert sent to %s: HTTP %s", url, response.status)
    except OSError as exc:
        log.error("strata alert could not be sent to %s: %s; alert: %s", url, exc, message)
