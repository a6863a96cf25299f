"""Roles and masking policies of a workspace, applied when an entity is hydrated.

The policy engine lives in :mod:`masking.policy`; this module binds it to a workspace:
compiles ``[roles]`` and ``[policies]`` once (an invalid policy fails at open), checks
each role against an entity type's real columns the first time it is used (a rule naming
a missing column fails closed), and masks tables with keys derived from the master key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from microdb.errors import PolicyError

IMPLICIT_RAW_ROLE = "admin"


class Policies:
    """The compiled roles of one workspace."""

    def __init__(self, roles: dict[str, Any], policies: dict[str, Any], derive: Callable[[str], bytes]) -> None:
        from masking.policy import compile_policy

        self._derive = derive
        self._set = compile_policy(roles, policies) if roles else None
        self._checked: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def role(self, name: str) -> Any:
        """The role, or None for the implicit raw ``admin`` of a workspace without roles."""
        if self._set is None:
            if name != IMPLICIT_RAW_ROLE:
                raise PolicyError(f"unknown role {name!r}: this workspace defines no roles (only {IMPLICIT_RAW_ROLE!r}, raw)")
            return None
        return self._set.role(name)

    def is_raw(self, name: str) -> bool:
        role = self.role(name)
        return role is None or role.raw

    def check(self, name: str, etype: str, columns: dict[str, list[str]]) -> None:
        """Fail closed, once per (role, entity type), if a rule names a missing column."""
        with self._lock:
            if (name, etype) in self._checked:
                return
        role = self.role(name)
        if role is not None:
            role.validate_columns(columns, all_tables=False)
        with self._lock:
            self._checked.add((name, etype))

    def mask(self, name: str, tables: dict[str, pa.Table], entity: str | None) -> tuple[dict[str, pa.Table], list[str]]:
        """``tables`` as role ``name`` may see them, and the columns withheld from it."""
        role = self.role(name)
        if role is None or role.raw:
            return tables, []
        masked = role.apply(tables, self._derive, entity_key=entity)
        return masked.tables, masked.withheld

    def fingerprint(self, name: str) -> str:
        role = self.role(name)
        return "raw" if role is None else role.fingerprint()
