"""Audit log and lineage: who did what to which entity, and which runs produced which data.

``lineage.audit`` is the hash-chained, signed audit log; ``lineage.events`` emits
OpenLineage run events. The events module (and openlineage-python) is imported only
when one of its names is first used.
"""

from __future__ import annotations

from typing import Any

from lineage.audit import AuditEvent, AuditLog, VerifyResult, os_actor

_EVENT_NAMES = frozenset({"DatasetRef", "LineageEmitter", "LineageRun", "MicrodbRunFacet"})

__all__ = ["AuditEvent", "AuditLog", "VerifyResult", "os_actor", *sorted(_EVENT_NAMES)]


def __getattr__(name: str) -> Any:
    if name in _EVENT_NAMES:
        from lineage import events

        return getattr(events, name)
    raise AttributeError(f"module 'lineage' has no attribute {name!r}")
