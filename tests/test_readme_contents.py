"""The README's "Project contents" table names what the tree holds (a new module or folder is
documented where a newcomer looks first)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _contents_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Project contents", 1)[1].split("\n## ", 1)[0]


def _folders() -> list[str]:
    """Top-level folders, and include/'s packages and assets one level down."""
    top = [p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")]
    names = [p.name for p in top if p.name != "include" and p.name not in _UNTRACKED]
    names += [f"include/{p.name}" for p in (ROOT / "include").iterdir() if p.is_dir()]
    return sorted(n for n in names if not n.endswith("__pycache__"))


#: Made by `make setup` or by runs, never committed (.gitignore).
_UNTRACKED = {"__pycache__", "build", "dist"}


@pytest.mark.parametrize("folder", _folders())
def test_every_top_level_folder_is_in_the_table(folder):
    assert f"`{folder}/`" in _contents_section(), f"README Project contents lacks `{folder}/`"


@pytest.mark.parametrize(
    "package", ["include/strata", "include/strata_apps", "lookup_loader", "spark_jobs"]
)
def test_every_module_is_named(package):
    section = _contents_section()
    modules = [
        p.stem
        for p in sorted((ROOT / package).iterdir())
        if p.suffix == ".py" and not p.stem.startswith("__")
    ]
    missing = [m for m in modules if not re.search(rf"`{m}(\.py)?`", section)]
    assert not missing, f"README Project contents does not name {package}: {missing}"


def test_every_strata_variable_has_a_row_in_a_readme_table():
    """Each setting (``STRATA_<field>``) and each ``STRATA_*`` variable the code reads has a row in
    one of the README's variable tables (the configuration table, or the Airflow and serving
    ones beside what they configure)."""
    from strata.config import Settings

    text = (ROOT / "README.md").read_text()
    first_cells = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    table = "\n".join(first_cells)
    names = {f"STRATA_{field.upper()}" for field in Settings.model_fields}
    for package in ("include", "lookup_loader", "spark_jobs", "expectations", "dags"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"[\"'](STRATA_[A-Z0-9_]+)[\"']", path.read_text()))
    missing = sorted(n for n in names if f"`{n}`" not in table)
    assert not missing, f"no README table row names {missing}"
