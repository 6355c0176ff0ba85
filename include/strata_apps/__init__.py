"""Strata's applications: the entry points that wire the stages together.

- :mod:`strata_apps.cli` — the ``strata`` command (``validate``, ``plan``, ``assign``, ...);
- :mod:`strata_apps.endpoint` — the reference device-register endpoint (seed 004);
- :mod:`strata_apps.endpoint_server` — nginx in front of it (``strata serve``);
- :mod:`strata_apps.demo`, :mod:`strata_apps.health` — demo requests and stack health checks;
- :mod:`strata_apps.assignment_tasks` — the assignment steps the DAG tasks call.

Layering (docs: DESIGN, ``make lint`` checks it): the applications import the stages
(``spark_jobs``, ``lookup_loader``, ``expectations``) and the core ``strata``; only
``orchestration`` (the Airflow layer) imports them. None of them imports Airflow.
"""
