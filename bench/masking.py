"""Masking benchmarks: throughput per function on 1M values, and masked vs raw hydration."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import microdb
from bench.report import Report, timed

N = 1_000_000


def _columns(rng: np.random.Generator) -> dict[str, pa.Array]:
    ints = rng.integers(1, 10**12, N)
    pans = [f"{v:016d}" for v in rng.integers(4 * 10**15, 5 * 10**15, N)]
    names = [f"name{v}" for v in rng.integers(0, 200_000, N)]
    return {
        "int64 (distinct)": pa.array(ints),
        "16-digit string": pa.array(pans),
        "name (200k distinct)": pa.array(names),
        "float64": pa.array(rng.random(N) * 1000),
        "date32": pa.array(rng.integers(0, 20000, N).astype("int32")).cast(pa.date32()),
    }


CASES = [
    ("keep", {}, "16-digit string"),
    ("redact", {}, "16-digit string"),
    ("partial", {"keep_last": 4}, "16-digit string"),
    ("hmac_token", {}, "int64 (distinct)"),
    ("hmac_token", {}, "16-digit string"),
    ("fpe", {"luhn": False}, "16-digit string"),
    ("fake", {"kind": "first_name"}, "name (200k distinct)"),
    ("generalize", {"bucket": 100}, "float64"),
    ("date_shift", {}, "date32"),
    ("noise", {"relative": 0.05}, "float64"),
]


def bench_functions(report: Report) -> None:
    from masking.functions import MaskContext, get_function
    from microdb.keys import Keyring

    keyring = Keyring(b"b" * 32)
    cols = _columns(np.random.default_rng(1))
    for name, params, col in CASES:
        fn = get_function(name)
        ctx = MaskContext(key=keyring.derive, table="t", column="c", entity_key="customer/1", role="bench")
        seconds, _ = timed(lambda: fn.apply(cols[col], fn.parse(params), ctx))
        target = "≥ 1M values/s" if name == "hmac_token" else ""
        report.add("masking", f"{name} on {col}", N / seconds / 1e6, "M values/s", target=target)


def bench_hydration(report: Report, customers: int = 2000, n: int = 300) -> None:
    from microdb.init import init_workspace

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ws"
        init_workspace(path, demo=True, customers=customers, seed=5)
        ws = microdb.open(path)
        try:
            ws.sync("customer")
            et = ws.entity_type("customer")
            keys = random.Random(2).sample(ws.store.keys("customer"), n)
            times = {}
            for role in ("admin", "analyst"):
                ws._load(et, keys[0], role)  # warm caches (policy checks, reference tables, faker pools)
                t0 = time.perf_counter()
                for k in keys:
                    ws._load(et, k, role)
                times[role] = (time.perf_counter() - t0) / n
            report.add("masking", "masked hydration (unseal + mask), per entity", times["analyst"] * 1000, "ms",
                       "raw hydration", times["analyst"] / times["admin"], "≤ 1.3×")
        finally:
            ws.close()


def run(report: Report) -> None:
    bench_functions(report)
    bench_hydration(report)
