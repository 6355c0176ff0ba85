"""Airflow plugin: Strata's report pages inside the API server, under ``/strata``.

The plugins folder (``AIRFLOW__CORE__PLUGINS_FOLDER``) points here; see orchestration.web. The
extra links that open these pages are declared on the operators (orchestration.links): Airflow 3
stores each link as an XCom when the task ends, so they need no registration here.
"""

from airflow.plugins_manager import AirflowPlugin

from orchestration.links import URL_PREFIX


class StrataPlugin(AirflowPlugin):
    name = "strata"

    @property
    def fastapi_apps(self):  # built lazily: only the API server asks for it
        from orchestration.web import create_app

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Strata reports"}]
