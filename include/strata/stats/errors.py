"""Errors of the statistics engine; each names what is wrong and where."""

from strata.errors import DataError
from strata.metrics import ExpressionError

__all__ = ["AggregateError", "DataError", "DesignError", "ExpressionError"]


class AggregateError(DataError):
    """The goal aggregates do not meet their contract (missing, duplicated or unknown rows)."""


class DesignError(DataError):
    """An experiment design (variants, weights, metrics) is inconsistent."""
