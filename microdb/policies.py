"""Roles and masking policies of a workspace, applied when an entity is hydrated.

The policy engine lives in :mod:`masking.policy`; this module binds it to a workspace:
compiles ``[roles]`` and ``[policies]`` once, checks each role against an entity type's
columns the first time it is used (a rule naming a missing column fails closed), and
masks an entity's tables with keys derived from the workspace master key.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pyarrow as pa

from microdb.entity import EntityType
from microdb.errors import PolicyError

if TYPE_CHECKING:
    from masking.policy import PolicySet, Role
    from microdb.workspace import Workspace

IMPLICIT_RAW_ROLE = "admin"


class Policies:
    """The compiled roles of one workspace."""

    def __init__(self, roles: dict, policies: dict) -> None:
        from masking.policy import compile_policy

        self.configured = bool(roles)
        self._set: PolicySet | None = compile_policy(roles, policies) if roles else None
        self._checked: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def role(self, name: str) -> Role | None:
        """The role, or None for the implicit raw ``admin`` of a workspace without roles."""
        if self._set is None:
            if name != IMPLICIT_RAW_ROLE:
                raise PolicyError(f"unknown role {name!r}: this workspace defines no roles (only {IMPLICIT_RAW_ROLE!r}, raw)")
            return None
        return self._set.role(name)

    def check(self, role: Role, name: str, et: EntityType, columns: dict[str, list[str]]) -> None:
        with self._lock:
            if (name, et.name) in self._checked:
                return
        role.validate_columns(columns)
        with self._lock:
            self._checked.add((name, et.name))


def apply_role(
    ws: Workspace, role_name: str, et: EntityType, key: str | None, tables: dict[str, pa.Table]
) -> tuple[dict[str, pa.Table], list[str]]:
    """``tables`` as ``role_name`` may see them, and the columns withheld from it."""
    role = ws.policies.role(role_name)
    if role is None or role.raw:
        return tables, []
    ws.policies.check(role, role_name, et, {n: t.column_names for n, t in tables.items()})
    masked = role.apply(tables, key=ws.keyring.derive, entity_key=key)
    return masked.tables, masked.withheld
