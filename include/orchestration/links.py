"""Extra links from task instances to what they produced, served by the Strata plugin.

Each evaluation task links to its experiment's HTML report, each data-quality gate to the report
of its own run (which expectation failed, on how many rows, samples), and both open in the
browser from the task's page in the grid view. Airflow 3 evaluates a link once, in the worker,
when the task ends (success or failure), and stores it as an XCom the UI reads; the pages
themselves are served by the ``strata`` plugin (:mod:`orchestration.web`) under ``/strata``.

Usage in a DAG: ``@reported_task`` / ``@gate_task`` instead of ``@task``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import BaseOperatorLink
from airflow.sdk.bases.decorator import task_decorator_factory

#: URL prefix the plugin mounts its app on, inside Airflow's API server.
URL_PREFIX = "/strata"
#: The XCom key under which a gate records the path of its report (also when it fails).
GATE_REPORT_KEY = "quality_report"


def _base_url() -> str:
    from airflow.sdk.configuration import conf

    return conf.get("api", "base_url", fallback="").rstrip("/")


class ExperimentReportLink(BaseOperatorLink):
    """The HTML report of the experiment this task evaluated."""

    name = "Experiment report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        experiment = (getattr(operator, "op_kwargs", None) or {}).get("experiment_id")
        page = f"{quote(str(experiment))}.html" if experiment else "index.html"
        return f"{_base_url()}{URL_PREFIX}/reports/{page}"


class QualityReportLink(BaseOperatorLink):
    """The data-quality report this gate wrote in this run."""

    name = "Data quality report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        report = ti_key.xcom_pull(task_ids=ti_key.task_id, key=GATE_REPORT_KEY)
        if not report:
            return ""
        return f"{_base_url()}{URL_PREFIX}/quality/{quote(str(report))}"


class _ReportedOperator(_PythonDecoratedOperator):
    operator_extra_links = (ExperimentReportLink(),)


class _GateOperator(_PythonDecoratedOperator):
    operator_extra_links = (QualityReportLink(),)


def reported_task(python_callable=None, **kwargs):
    """``@task`` whose task instances link to their experiment's report."""
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=_ReportedOperator, **kwargs
    )


def gate_task(python_callable=None, **kwargs):
    """``@task`` whose task instances link to the data-quality report of their run."""
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=_GateOperator, **kwargs
    )
