"""The layering check of `make lint` (import-linter, `[tool.importlinter]` in pyproject.toml):
the repository keeps its contracts, and an upward import in a copy of it breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("include/strata", "include/strata_apps", "include/orchestration",
            "spark_jobs", "lookup_loader", "expectations")  # fmt: skip
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` over the packages under ``root``, with ``root``'s pyproject.toml."""
    env = os.environ | {"PYTHONPATH": f"{root / 'include'}{os.pathsep}{root}"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The packages and pyproject.toml, copied as they are laid out in the repository."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_repository_keeps_its_import_contracts():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_untouched_copy_passes_and_an_upward_import_fails(copy):
    assert lint_imports(copy).returncode == 0

    add_line(copy / "include" / "strata" / "bucketing.py", "import spark_jobs  # upward")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "imports point down: orchestration > applications > stages > core BROKEN" in (
        result.stdout
    )
    assert "strata.bucketing -> spark_jobs" in result.stdout


@pytest.mark.parametrize(
    "module",
    ["include/strata/config.py", "include/strata_apps/health.py", "spark_jobs/__init__.py"],
)
def test_airflow_outside_orchestration_fails(copy, module):
    add_line(copy / module, "import airflow.sdk  # only orchestration may")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "only orchestration imports Airflow and Cosmos BROKEN" in result.stdout
