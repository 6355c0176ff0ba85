"""Errors of the statistics engine; each names what is wrong and where."""

from strata.errors import DataError
from strata.metrics import ExpressionError

__all__ = [
    "AggregateError",
    "DataError",
    "DesignError",
    "ExpressionError",
    "SnapshotExpiredError",
]


class AggregateError(DataError):
    """The goal aggregates do not meet their contract (missing, duplicated or unknown rows)."""


class DesignError(DataError):
    """An experiment design (variants, weights, metrics) is inconsistent."""


class SnapshotExpiredError(DataError):
    """A pinned input snapshot is gone: table maintenance expired it (past the retention of
    ``STRATA_MAINTENANCE_SNAPSHOT_DAYS``), so the result it produced cannot be reproduced."""
