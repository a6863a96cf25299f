"""The governance charter: why synthetic data is made, for whom, who approves it, and the
thresholds an evaluated bundle must meet to be released.

A bundle that fails a threshold is ``rejected``: it cannot be exported, provisioned or
served until someone records an override with a reason (both audited).
"""

from __future__ import annotations

import time
from typing import Any

from microdb.config import CharterConfig


def decide(charter: CharterConfig, report: dict[str, Any]) -> dict[str, Any]:
    """The charter's decision on an evaluation report: status, each check, and who/why."""
    from synth.evaluate import DEFAULT_THRESHOLDS, judge

    base = {"purpose": charter.purpose, "audience": charter.audience, "approver": charter.approver,
            "decided_at": time.time()}
    if not charter.thresholds:  # evaluated without a charter: the default one applies
        return {**base, **judge(report, dict(DEFAULT_THRESHOLDS)), "thresholds": "default"}
    return {**base, **judge(report, dict(charter.thresholds)), "thresholds": "charter"}


def approved_configurations(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generator configurations whose bundles the charter released (one row per configuration)."""
    seen: dict[tuple, dict[str, Any]] = {}
    for m in manifests:
        if m.get("status") != "released" or not (m.get("charter") or {}).get("checks"):
            continue
        key = (m["entity_type"], m["generator"], repr(sorted((m.get("parameters") or {}).items())))
        row = seen.setdefault(key, {"entity_type": m["entity_type"], "generator": m["generator"],
                                    "parameters": m.get("parameters") or {}, "bundles": []})
        row["bundles"].append(m["id"])
    return list(seen.values())
