"""Airflow-side helpers for the DAG files (they import Airflow and Cosmos; strata never does)."""

import os
import shutil
import sys
from pathlib import Path


def _put_dbt_on_path() -> None:
    """Cosmos looks dbt up on PATH when it is imported: make it find this interpreter's dbt."""
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "dbt").exists() and shutil.which("dbt") != str(bin_dir / "dbt"):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


_put_dbt_on_path()
