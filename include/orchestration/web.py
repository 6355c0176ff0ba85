"""The pages Strata's extra links open, served inside Airflow's API server (``/strata``).

- ``/strata/reports/`` — the static HTML reports (``$STRATA_HOME/reports``): the index and one
  page per experiment, as ``strata report`` writes them;
- ``/strata/quality/<suite>/<stamp>.md`` — a gate's data-quality report, shown as a page;
- ``/strata/quality/docs/`` — Great Expectations' data docs.

Files are served from fixed folders only (no path leaves them); a missing page is a 404.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles


def _home() -> Path:
    from strata.config import get_settings

    return get_settings().home


def create_app() -> FastAPI:
    app = FastAPI(title="Strata reports", docs_url=None, redoc_url=None, openapi_url=None)
    home = _home()
    app.mount(
        "/reports",
        StaticFiles(directory=home / "reports", html=True, check_dir=False),
        name="reports",
    )
    app.mount(
        "/quality/docs",
        StaticFiles(
            directory=home
            / "expectations"
            / "gx"
            / "gx"
            / "uncommitted"
            / "data_docs"
            / "local_site",
            html=True,
            check_dir=False,
        ),
        name="quality-docs",
    )

    @app.get("/quality/{suite}/{name}", response_class=HTMLResponse)
    def quality_report(suite: str, name: str) -> HTMLResponse:
        root = (home / "expectations" / "reports").resolve()
        path = (root / suite / name).resolve()
        if root not in path.parents or path.suffix != ".md" or not path.is_file():
            raise HTTPException(status_code=404, detail=f"no data-quality report {suite}/{name}")
        text = path.read_text(encoding="utf-8")
        title = html.escape(text.splitlines()[0].lstrip("# ") if text else name)
        body = (
            f"<!doctype html><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font:14px system-ui;margin:2em}pre{white-space:pre-wrap}</style>"
            f"<h1>{title}</h1><pre>{html.escape(text)}</pre>"
            "<p><a href='../docs/'>Great Expectations data docs</a></p>"
        )
        return HTMLResponse(body)

    return app
