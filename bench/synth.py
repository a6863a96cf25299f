"""Synthesis benchmark: fit and sample time and peak memory per generator on the bank
fixture (default 10,000 customers), through the workspace (masked training set from the
store). Baseline: loading and masking the training set, the floor every fit pays.

Each generator runs in its own spawned process so that peak memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Report, console

# generator -> (parameters, training entities or None for all); neural epochs are capped
# to keep `make bench` in minutes, the DP variant trains on a 2,000-entity sample
RUNS = {
    "rules": ({}, None),
    "copula": ({}, None),
    "neural": ({"epochs": 2}, None),
    "neural-dp": ({"epochs": 2, "dp_epsilon": 3.0, "max_children": 16}, 2000),
}


def worker(root: str, name: str, entities: int) -> None:
    """Fit and sample one generator; print one JSON line with timings and peak RSS."""
    import resource

    import microdb

    params, sample_from = RUNS[name]
    generator = name.split("-")[0]
    ws = microdb.open(root)
    try:
        t0 = time.perf_counter()
        model = ws.synth_fit("customer", generator, params, seed=1, sample_from=sample_from)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bundle = ws.synth_sample(model, entities, seed=2, evaluate=False)
        sample_s = time.perf_counter() - t0
        m = bundle.manifest
        rows = sum(t["rows"] for n, t in m["tables"].items() if bundle.schema.is_tree_table(n))
        print(json.dumps({"fit_s": fit_s, "sample_s": sample_s, "rows": rows,
                          "ri": m["integrity"]["ri_percent"], "epsilon": (m.get("privacy") or {}).get("epsilon"),
                          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    finally:
        ws.close()


def _baseline(root: Path) -> float:
    import microdb
    from microdb import synthesis

    ws = microdb.open(root)
    try:
        t0 = time.perf_counter()
        synthesis.training_set(ws, "customer", seed=1)
        return time.perf_counter() - t0
    finally:
        ws.close()


def run(report: Report, customers: int = 10_000, names: tuple[str, ...] = tuple(RUNS)) -> None:
    import microdb
    from microdb.init import init_workspace

    with tempfile.TemporaryDirectory(prefix="microdb-bench-synth-") as tmp:
        root = Path(tmp) / "ws"
        init_workspace(root, demo=True, customers=customers, seed=7)  # [synth] role = "analyst"
        ws = microdb.open(root)
        ws.sync("customer")
        ws.close()
        base = _baseline(root)
        report.add("synth", f"load + mask training set ({customers:,} customers)", base, "s")
        for name in names:
            console.print(f"[dim]synth: fitting {name} on {customers:,} customers…[/dim]")
            proc = subprocess.run(
                [sys.executable, "-c", f"from bench.synth import worker; worker({str(root)!r}, {name!r}, {customers})"],
                capture_output=True, text=True, timeout=3600,
            )
            if proc.returncode != 0:
                report.add("synth", f"{name} FAILED", 0, proc.stderr.strip().splitlines()[-1][:120] if proc.stderr else "")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            report.add(f"synth {name}", "fit", r["fit_s"], "s", "training-set load", r["fit_s"] / base)
            report.add(f"synth {name}", f"sample {customers:,} entities", r["sample_s"], "s")
            report.add(f"synth {name}", "sampled rows/s", r["rows"] / r["sample_s"], "rows/s")
            report.add(f"synth {name}", "peak memory", r["peak_mb"], "MB")
            report.add(f"synth {name}", "referential integrity", r["ri"], "%", target="100%")
            if r["epsilon"] is not None:
                report.add(f"synth {name}", "ε (RDP accountant)", r["epsilon"], "", target="≤ 5")
