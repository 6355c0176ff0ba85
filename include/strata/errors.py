"""Strata's small exception tree: every error a user can cause says what and where."""


class StrataError(Exception):
    """Base class of all Strata errors."""


class StackError(StrataError):
    """The local stack (jars, catalog, Redis) is missing or misconfigured."""


class DataError(StrataError):
    """Input data does not meet its contract."""
