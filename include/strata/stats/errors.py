"""Errors of the statistics engine; each names what is wrong and where."""

from strata.errors import DataError


class ExpressionError(DataError):
    """A metric expression is not valid ep-stats syntax or not evaluable per unit."""


class AggregateError(DataError):
    """The goal aggregates do not meet their contract (missing, duplicated or unknown rows)."""


class DesignError(DataError):
    """An experiment design (variants, weights, metrics) is inconsistent."""
