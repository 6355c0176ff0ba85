"""Task bodies the assignment and demo DAGs call (one call each; the logic lives elsewhere).

Usage:
    >>> from strata.definitions import bundled_path
    >>> summary = validate(str(bundled_path()))
    >>> summary["experiments"], summary["running"]
    (9, 8)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strata.config import PROJECT_ROOT
from strata.definitions import DefinitionError, load


def resolve_path(path: str) -> Path:
    """A definitions path as given, else relative to the repository checkout."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and PROJECT_ROOT is not None:
        p = PROJECT_ROOT / p
    return p


def validate(path: str) -> dict[str, Any]:
    """Validate definitions; raise :class:`DefinitionError` listing every problem."""
    p = resolve_path(path)
    try:
        defs = load(p)
    except DefinitionError as exc:
        raise DefinitionError([f"{p}:", *exc.problems]) from None
    return {
        "path": str(p),
        "version": defs.version,
        "domains": len(defs.domains),
        "layers": len(defs.layers),
        "experiments": len(defs.experiments),
        "running": sum(e.assigned for e in defs.experiments),
    }


def assign(path: str, as_of: str | None = None) -> dict[str, Any]:
    """Run the Spark assignment job on validated definitions on the day ``as_of`` (YYYY-MM-DD,
    default today UTC: only experiments inside their window get units); returns its summary."""
    from spark_jobs.assign_experiments import main

    return main(["--definitions", str(resolve_path(path)), *(["--as-of", as_of] if as_of else [])])
