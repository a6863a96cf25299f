"""One root exception for microdb and the specific errors callers can catch.

Every error is either *transient* (retrying may help: a database that is down) or
*terminal* (the input or configuration must change). The CLI maps each class to an
exit code and prints the message as one line; servers map it to their protocol.
"""

from __future__ import annotations


class MicrodbError(Exception):
    """Root of every error microdb raises on purpose."""

    transient: bool = False
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(MicrodbError):
    """The workspace configuration is missing, malformed or inconsistent."""

    exit_code = 2


class SourceError(MicrodbError):
    """A source could not be reached or read."""

    transient = True
    exit_code = 3


class SchemaError(MicrodbError):
    """The source schema does not support what was asked (no primary key, unknown table)."""

    exit_code = 2


class EntityNotFound(MicrodbError):
    """The entity type or the entity instance does not exist."""

    exit_code = 4


class KeyMaterialError(MicrodbError):
    """The master key is missing, unreadable or wrong."""

    exit_code = 5


class SealError(MicrodbError):
    """A sealed record failed authentication or could not be opened."""

    exit_code = 5


class PolicyError(MicrodbError):
    """A role or masking policy is unknown or invalid."""

    exit_code = 2


class QueryRefused(MicrodbError):
    """The SQL guard refused a query; the message says what and why."""

    exit_code = 6


class QueryError(MicrodbError):
    """A permitted query failed while running (syntax, binder, timeout)."""

    exit_code = 6


class AccessDenied(MicrodbError):
    """The caller's role is not allowed to do this."""

    exit_code = 7


class AuditError(MicrodbError):
    """The audit log could not be written or failed verification."""

    exit_code = 8


class StoreUnavailable(MicrodbError):
    """The store backend could not be reached or refused a request (retrying may help)."""

    transient = True
    exit_code = 3


class ExecutorError(MicrodbError):
    """A partition could not be completed: its worker kept dying, or the cluster is unreachable."""

    transient = True
    exit_code = 9
