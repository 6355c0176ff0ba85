"""dbt's ``var()`` for sqlfluff's jinja templater (``.sqlfluff``: ``library_path``).

sqlfluff's dbt builtins answer every ``var()`` with a placeholder string, so a loop over the
``goals`` list would render one column per letter. This ``var()`` answers with the vars Strata
passes to every dbt run (``strata.contracts.dbt_vars()``: goals, value goals, unit types), then the
project's own vars from ``dbt_project/dbt_project.yml``, then the call's default, then sqlfluff's
placeholder,
so the linted SQL is the SQL dbt renders, with no dbt, profile or Spark involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import yaml
from sqlfluff.core.templaters.builtins.dbt import VarEmulator

from strata import contracts

_PROJECT = Path(__file__).resolve().parents[2] / "dbt_project" / "dbt_project.yml"
_VARS: dict[str, Any] = {
    **(yaml.safe_load(_PROJECT.read_text()).get("vars") or {}),
    **contracts.dbt_vars(),
}
_NO_DEFAULT = object()


def var(name: str, default: Any = _NO_DEFAULT) -> Any:
    """The project's value of ``name``, else ``default``, else a placeholder identifier."""
    if name in _VARS:
        return _VARS[name]
    if default is not _NO_DEFAULT:
        return default
    return VarEmulator()


class _Column:
    def __init__(self, name: str) -> None:
        self.name = name


class _Adapter:
    """dbt's ``adapter`` for the models that look at a relation or its columns
    (``stg_strata__assignments``: ``ramp_period`` when the table has it): every relation exists
    with the columns of the newest schema, so the linted SQL is what dbt renders today."""

    COLUMNS: ClassVar[dict[str, tuple[str, ...]]] = {"assignments": ("ramp_period",)}

    def get_columns_in_relation(self, relation: Any) -> list[_Column]:
        name = str(relation).rsplit(".", 1)[-1].strip("`")
        return [_Column(c) for c in self.COLUMNS.get(name, ())]

    def get_relation(self, database: Any, schema: Any, identifier: str) -> str:
        """Every relation exists (the models that read a table when it is there, e.g.
        ``int_segment_unit_goals`` and ``fct_unit_goal_state``, are linted on that path)."""
        return identifier


adapter = _Adapter()
