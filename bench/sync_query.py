"""Sync and query benchmarks (foundation): entities/s against a raw Arrow read of the
same tables, store size against zstd Parquet, warm and cold single-entity latency."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

import microdb
from bench.report import Report, console, percentiles, timed


def raw_read_seconds(ws: microdb.Workspace, etype: str) -> float:
    """Baseline: read every table of the entity type into Arrow, nothing else."""
    from microdb.sourceset import SourceSet

    et = ws.entity_type(etype)
    sources = SourceSet(ws.config, ws.root)
    try:
        for t in et.tables:
            sources.catalog(t.source)
        t0 = time.perf_counter()
        for t in et.tables:
            sources[t.source].read(t.table)
        for r in et.references:
            sources[r.source].read(r.table)
        return time.perf_counter() - t0
    finally:
        sources.close()


def parquet_bytes(ws: microdb.Workspace, etype: str, tmp: Path) -> int:
    et = ws.entity_type(etype)
    total = 0
    for t in list(et.tables) + list(et.references):
        table = ws.sources[t.source].read(t.table)
        out = tmp / f"{t.name}.parquet"
        pq.write_table(table, out, compression="zstd")
        total += out.stat().st_size
    return total


def bench_sync(report: Report, ws: microdb.Workspace, label: str, etype: str = "customer") -> None:
    raw = min(raw_read_seconds(ws, etype) for _ in range(2))
    seconds, res = timed(lambda: ws.sync(etype))
    report.add(f"sync {label}", "entities/s", res.entities / seconds, "entities/s", target="≥ 5,000/s")
    report.add(f"sync {label}", "sync time vs raw read", seconds, "s", "raw Arrow read", seconds / raw, "≤ 3×")
    report.add(f"sync {label}", "source queries", res.source_queries, f"queries for {res.entities:,} entities")


def bench_store_size(report: Report, ws: microdb.Workspace, etype: str = "customer") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pbytes = parquet_bytes(ws, etype, Path(tmp))
    sbytes = ws.store.stats(etype)["bytes"]
    report.add("store", "sealed size", sbytes / 1e6, "MB", "zstd Parquet", sbytes / pbytes, "≤ 1.5×")


def bench_query(report: Report, ws: microdb.Workspace, etype: str = "customer", n: int = 200) -> None:
    n = min(n, ws.config.query.pool_size)  # the warm set must fit the warm pool
    keys = ws.store.keys(etype)
    rng = random.Random(1)
    sample = rng.sample(keys, min(n, len(keys)))
    sql = "SELECT count(*) AS n, sum(amount) AS s FROM transactions"
    cold = []
    for k in sample:
        ws.pool.invalidate(etype, k)
        t, _ = timed(lambda: ws.entity(f"{etype}/{k}").sql(sql))
        cold.append(t)
    warm = []
    for _ in range(3):
        for k in sample:
            t, _ = timed(lambda: ws.entity(f"{etype}/{k}").sql(sql))
            warm.append(t)
    c, w = percentiles(cold), percentiles(warm)
    report.add("query", "warm p50", w["p50_ms"], "ms", target="≤ 3 ms")
    report.add("query", "warm p95", w["p95_ms"], "ms")
    report.add("query", "cold p50 (unseal + hydrate)", c["p50_ms"], "ms", target="≤ 10 ms")
    report.add("query", "cold p95 (unseal + hydrate)", c["p95_ms"], "ms")


def run(report: Report, customers: int, with_postgres: bool = True, query_only: bool = False) -> None:
    from microdb.init import init_workspace

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ws"
        console.print(f"[bold]generating the bank fixture with {customers:,} customers…[/bold]")
        t, _ = timed(lambda: init_workspace(path, demo=True, customers=customers, seed=11))
        console.print(f"[dim]fixture ready in {t:.1f}s[/dim]")
        ws = microdb.open(path)
        try:
            if query_only:
                ws.sync("customer")
            else:
                bench_sync(report, ws, "SQLite+Parquet")
                bench_store_size(report, ws)
            bench_query(report, ws)
        finally:
            ws.close()
        if with_postgres and not query_only:
            run_postgres(report, customers, Path(tmp))


def postgres_workspace(path: Path, dsn: str, schema: str, extra: str = "") -> str:
    """A workspace at ``path`` over the bank tables in a PostgreSQL schema, with the entity
    type discovered from ``customers``; ``extra`` is appended to its config. Returns the type."""
    from microdb.discover import discover, to_toml
    from microdb.init import append_entity
    from microdb.keys import generate_key_file

    path.mkdir()
    (path / "microdb.toml").write_text(f'version = 1\n[sources.bank]\nurl = "{dsn}?schema={schema}"\n{extra}')
    generate_key_file(path / ".microdb" / "master.key")
    ws = microdb.open(path)
    try:
        name, ent = discover(ws.config, ws.sources, "bank", "customers")
    finally:
        ws.close()
    append_entity(path / "microdb.toml", name, to_toml(name, ent))
    return name


def run_postgres(report: Report, customers: int, tmp: Path) -> None:
    import uuid

    from fixtures.bank import generate
    from fixtures.load import drop_postgres, load_postgres

    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    schema = f"mdbbench_{uuid.uuid4().hex[:8]}"
    console.print(f"[bold]loading {customers:,} customers into PostgreSQL schema {schema}…[/bold]")
    load_postgres(generate(customers=customers, seed=11), dsn, schema=schema)
    try:
        path = tmp / "pg"
        postgres_workspace(path, dsn, schema)
        ws = microdb.open(path)
        try:
            bench_sync(report, ws, "PostgreSQL")
        finally:
            ws.close()
    finally:
        drop_postgres(schema, dsn)
