"""Audit overhead: warm single-entity query latency with the audit log on vs off, on the
same workspace and entities, interleaved so machine noise hits both alike."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from bench.report import Report, percentiles, timed

SQL = "SELECT count(*) AS n, sum(amount) AS s FROM transactions"


def run(report: Report, customers: int = 2000, keys: int = 100, rounds: int = 10) -> None:
    import microdb
    from microdb.config import load_config
    from microdb.init import init_workspace
    from microdb.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="microdb-bench-audit-") as tmp:
        root = Path(tmp) / "ws"
        init_workspace(root, demo=True, customers=customers, seed=7)
        on = microdb.open(root)
        on.sync("customer")
        cfg = load_config(root / "microdb.toml")
        off = Workspace(root, cfg.model_copy(update={"audit": cfg.audit.model_copy(update={"enabled": False})}))
        sample = random.Random(1).sample(on.store.keys("customer"), keys)
        for ws in (on, off):  # warm both pools
            for k in sample:
                ws.entity(f"customer/{k}").sql(SQL)
        t_on, t_off = [], []
        for _ in range(rounds):
            for k in sample:
                t_on.append(timed(lambda: on.entity(f"customer/{k}").sql(SQL))[0])
                t_off.append(timed(lambda: off.entity(f"customer/{k}").sql(SQL))[0])
        a, b = percentiles(t_on), percentiles(t_off)
        report.add("audit", "warm query p50, audit on", a["p50_ms"], "ms", "audit off", a["p50_ms"] / b["p50_ms"], "≤ 1.10×")
        report.add("audit", "warm query p95, audit on", a["p95_ms"], "ms", "audit off", a["p95_ms"] / b["p95_ms"])
        on.close()
        off.close()
