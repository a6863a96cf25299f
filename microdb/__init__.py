"""microdb: per-entity micro-databases from scattered sources, masked on read.

>>> import microdb
>>> ws = microdb.open("bank-demo")
>>> ws.entity("customer/42", role="analyst").sql("SELECT count(*) FROM transactions")
"""

from typing import TYPE_CHECKING, Any

from microdb.errors import (
    AccessDenied,
    AuditError,
    ConfigError,
    EntityNotFound,
    KeyMaterialError,
    MicrodbError,
    PolicyError,
    QueryError,
    QueryRefused,
    SchemaError,
    SealError,
    SourceError,
)

if TYPE_CHECKING:
    from microdb.workspace import Entity, Workspace, open


def __getattr__(name: str) -> Any:
    # the workspace pulls in duckdb and pyarrow: load it on first use, so that importing
    # ``microdb.errors`` (or any light module) stays cheap
    if name in ("open", "Workspace", "Entity"):
        from microdb import workspace

        return getattr(workspace, name)
    raise AttributeError(f"module 'microdb' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "open",
    "Workspace",
    "Entity",
    "MicrodbError",
    "ConfigError",
    "SourceError",
    "SchemaError",
    "EntityNotFound",
    "KeyMaterialError",
    "SealError",
    "PolicyError",
    "QueryRefused",
    "QueryError",
    "AccessDenied",
    "AuditError",
]
