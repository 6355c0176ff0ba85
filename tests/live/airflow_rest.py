"""A small client of Airflow's REST API v2, for the live tests.

It logs in as the SimpleAuthManager's admin (a JWT from ``POST /auth/token``), then triggers runs
with a conf and a logical date, polls their state, and reads task instances, XComs, task logs and
asset events. Errors carry the status code and the body Airflow answered with.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

#: Run states after which a DAG run no longer changes.
FINISHED = {"success", "failed"}


class AirflowApiError(RuntimeError):
    """A request Airflow answered with an error status; the message has the status and body."""

    def __init__(self, response: httpx.Response):
        self.response = response
        super().__init__(
            f"{response.request.method} {response.request.url} -> HTTP {response.status_code}: "
            f"{response.text[:2000]}"
        )


class AirflowRest:
    """Authenticated REST API v2 client of one api-server (``base_url`` without ``/api/v2``)."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        token = httpx.post(
            f"{self.base_url}/auth/token",
            json={"username": username, "password": password},
            timeout=timeout,
        )
        if token.status_code not in (200, 201):
            raise AirflowApiError(token)
        self.token = token.json()["access_token"]
        self.http = httpx.Client(
            base_url=f"{self.base_url}/api/v2",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.is_error:
            raise AirflowApiError(response)
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._json(self.http.get(path, params=params))

    # --- DAGs and runs -----------------------------------------------------------------------

    def import_errors(self) -> dict[str, str]:
        """DAG file name -> the stack trace of its last failed parse."""
        errors = self.get("/importErrors", limit=1000)["import_errors"]
        return {e["filename"]: e["stack_trace"] for e in errors}

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """The DAG once the dag-processor has parsed it. An import error of its file (named
        after the DAG) fails at once; other files' errors are no concern of this DAG."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.http.get(f"/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            if response.status_code != 404:
                raise AirflowApiError(response)
            error = self.import_errors().get(f"{dag_id}.py")
            if error:
                raise AssertionError(f"{dag_id}.py does not import:\n{error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAG {dag_id} not parsed within {timeout:.0f} s")
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        return self._json(self.http.patch(f"/dags/{dag_id}", json={"is_paused": paused}))

    def trigger_response(
        self,
        dag_id: str,
        conf: Any = None,
        logical_date: str | None = None,
        run_id: str | None = None,
    ) -> httpx.Response:
        """``POST /dags/{dag_id}/dagRuns`` as is (for checking how bad input is rejected)."""
        body: dict[str, Any] = {"logical_date": logical_date}
        if conf is not None:
            body["conf"] = conf
        if run_id is not None:
            body["dag_run_id"] = run_id
        return self.http.post(f"/dags/{dag_id}/dagRuns", json=body)

    def trigger(self, dag_id: str, conf: Any = None, logical_date: str | None = None, **kw) -> dict:
        """Trigger a run; returns the created DAG run (its ``dag_run_id``, ``state``, ``conf``)."""
        return self._json(self.trigger_response(dag_id, conf, logical_date, **kw))

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=100)["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float, poll: float = 3.0) -> dict:
        """Poll until the run finishes; on timeout the error lists every task's state."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                states = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
                raise TimeoutError(
                    f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f} s: {states}"
                )
            time.sleep(poll)

    # --- what a run produced ---------------------------------------------------------------

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self.get(path, limit=1000)["task_instances"]

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        """A task's XCom value (by default its return value), deserialised as JSON."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.get(path, map_index=map_index)["value"]

    def extra_links(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> dict[str, str | None]:
        """A task instance's extra links: name -> URL (None when the link has no target yet)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links"
        return self.get(path, map_index=map_index)["extra_links"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """A task try's log as text (one line per structured log event)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        body = self.get(path, full_content=True)
        lines = []
        for item in body.get("content") or []:
            if isinstance(item, dict):
                level = item.get("level", "")
                lines.append(f"{level} {item.get('event', '')}".strip())
                for err in item.get("error_detail") or []:
                    lines.append(f"  {err.get('exc_type')}: {err.get('exc_value')}")
            else:
                lines.append(str(item))
        return "\n".join(lines)

    def asset_events(self, **filters: Any) -> list[dict]:
        """Asset events, oldest first; filters as the API names them: ``asset_id``,
        ``source_dag_id``, ``source_task_id``, ``source_run_id``, ``source_map_index``."""
        return self.get("/assets/events", order_by="timestamp", limit=1000, **filters)[
            "asset_events"
        ]

    def failure_report(self, dag_id: str, run_id: str, tail: int = 40) -> str:
        """Every task that did not succeed, or took more than one try, with its log's tail."""
        parts = []
        for ti in self.task_instances(dag_id, run_id):
            if ti["state"] == "success" and ti["try_number"] <= 1:
                continue
            parts.append(f"== {ti['task_id']}: {ti['state']} (try {ti['try_number']})")
            for attempt in range(1, (ti["try_number"] or 0) + 1):
                try:
                    log = self.task_log(dag_id, run_id, ti["task_id"], attempt)
                except AirflowApiError as err:
                    log = str(err)
                parts.append(f"-- try {attempt}:\n" + "\n".join(log.splitlines()[-tail:]))
        return "\n".join(parts) or "(every task succeeded at its first try)"
