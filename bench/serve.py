"""Serving benchmarks: single-entity query latency (p50/p95, cold and warm) and throughput
over the Postgres wire and HTTP, against the same question asked directly of the
PostgreSQL database that holds the source data (an indexed query for the entity's rows).

The server is `microdb serve` in its own process (as deployed); clients run here.
Cold: the first query of an entity since the server started (unseal + hydrate);
warm: the same entities again (the warm pool).
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from bench.report import Report, console, percentiles

DSN = "postgresql://postgres@127.0.0.1:5432/test"
MICRODB_SQL = "SELECT count(*) AS n, sum(amount) AS total FROM transactions"
PG_SQL = ("SELECT count(*) AS n, sum(t.amount) AS total FROM {s}.transactions t "
          "JOIN {s}.accounts a ON a.account_id = t.account_id WHERE a.customer_id = %s")


def _workspace(tmp: Path, schema: str, token: str) -> Path:
    from bench.sync_query import postgres_workspace
    from microdb.server.http import hash_token
    import microdb

    path = tmp / "ws"
    name = postgres_workspace(path, DSN, schema,
                              '\n[server.users.bench]\nrole = "admin"\ntrusted_local = true\n'
                              f'\n[server.tokens.bench]\nrole = "admin"\ntoken_hash = "{hash_token(token)}"\n')
    ws = microdb.open(path)
    try:
        ws.sync(name)
    finally:
        ws.close()
    return path


class Clients:
    """One sequential client per protocol, timing single-entity queries."""

    def __init__(self, pg_port: int, http_port: int, token: str, schema: str) -> None:
        self.wire = psycopg.connect(host="127.0.0.1", port=pg_port, user="bench", dbname="microdb", autocommit=True)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", headers={"Authorization": f"Bearer {token}"})
        self.pg = psycopg.connect(DSN, autocommit=True)
        self.pg_sql = PG_SQL.format(s=schema)

    def on_wire(self, key: str) -> float:
        t0 = time.perf_counter()
        self.wire.execute(f"SET microdb.entity = 'customer/{key}'")
        self.wire.execute(MICRODB_SQL).fetchall()
        return time.perf_counter() - t0

    def on_http(self, key: str) -> float:
        t0 = time.perf_counter()
        r = self.http.post("/query", json={"entity": f"customer/{key}", "sql": MICRODB_SQL})
        r.raise_for_status()
        return time.perf_counter() - t0

    def on_pg(self, key: str) -> float:
        t0 = time.perf_counter()
        self.pg.execute(self.pg_sql, (int(key),), prepare=True).fetchall()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.wire.close()
        self.http.close()
        self.pg.close()


def _throughput_threads(fn, clients: int, seconds: float) -> float:
    """Queries per second of ``clients`` threads each running ``fn()`` in a loop."""
    deadline = time.monotonic() + seconds
    done = [0] * clients

    def loop(i: int) -> None:
        state = fn()
        while time.monotonic() < deadline:
            state()
            done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0)


def _http_throughput(port: int, token: str, keys: list[str], clients: int, seconds: float) -> float:
    async def main() -> float:
        deadline = time.monotonic() + seconds
        done = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                                     limits=httpx.Limits(max_connections=clients)) as client:
            async def one(seed: int) -> None:
                nonlocal done
                rng = random.Random(seed)
                while time.monotonic() < deadline:
                    r = await client.post("/query", json={"entity": f"customer/{rng.choice(keys)}", "sql": MICRODB_SQL})
                    r.raise_for_status()
                    done += 1

            t0 = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(clients)))
            return done / (time.monotonic() - t0)

    return asyncio.run(main())


def run(report: Report, customers: int = 10_000, entities: int = 100, clients: int = 8, seconds: float = 5.0) -> None:
    from fixtures.bank import generate
    from fixtures.load import drop_postgres, load_postgres
    from microdb.server.http import new_token

    schema = f"mdbbench_{uuid.uuid4().hex[:8]}"
    console.print(f"[bold]serve: loading {customers:,} customers into PostgreSQL schema {schema}…[/bold]")
    load_postgres(generate(customers=customers, seed=11), DSN, schema=schema)
    with psycopg.connect(DSN, autocommit=True) as con:  # the baseline gets the indexes it needs
        con.execute(f"CREATE INDEX ON {schema}.accounts (customer_id)")
        con.execute(f"CREATE INDEX ON {schema}.transactions (account_id)")
        con.execute(f"ANALYZE {schema}.accounts")
        con.execute(f"ANALYZE {schema}.transactions")
    token = new_token()
    proc = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = _workspace(Path(tmp), schema, token)
            proc = subprocess.Popen([sys.executable, "-m", "microdb.cli", "-w", str(path), "serve",
                                     "--pg", "127.0.0.1:0", "--http", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
            pg_port = int(re.search(r"127\.0\.0\.1:(\d+)", proc.stderr.readline()).group(1))
            http_port = int(re.search(r"http://127\.0\.0\.1:(\d+)", proc.stderr.readline()).group(1))
            _measure(report, pg_port, http_port, token, schema, customers, entities, clients, seconds)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        drop_postgres(schema, DSN)


def _measure(report: Report, pg_port: int, http_port: int, token: str, schema: str, customers: int, entities: int,
             clients: int, seconds: float) -> None:
    rng = random.Random(5)
    keys = [str(k) for k in rng.sample(range(1, customers + 1), 2 * entities)]
    wire_keys, http_keys = keys[:entities], keys[entities:]
    c = Clients(pg_port, http_port, token, schema)
    try:
        c.on_wire(wire_keys[0]), c.on_http(http_keys[0])  # connection set-up, first-use costs
        for k in keys[:20]:
            c.on_pg(k)  # PostgreSQL's plan cache and buffers, likewise
        cold_wire = [c.on_wire(k) for k in wire_keys[1:]]
        cold_http = [c.on_http(k) for k in http_keys[1:]]
        warm_wire = [c.on_wire(k) for _ in range(3) for k in wire_keys]
        warm_http = [c.on_http(k) for _ in range(3) for k in http_keys]
        pg = [c.on_pg(k) for _ in range(3) for k in keys]
    finally:
        c.close()
    base = percentiles(pg)
    report.add("serve", "PostgreSQL indexed query p50", base["p50_ms"], "ms")
    report.add("serve", "PostgreSQL indexed query p95", base["p95_ms"], "ms")
    for label, samples, target in (("wire warm", warm_wire, "≤ 3 ms"), ("HTTP warm", warm_http, "≤ 5 ms"),
                                   ("wire cold", cold_wire, ""), ("HTTP cold", cold_http, "")):
        p = percentiles(samples)
        report.add("serve", f"{label} p50", p["p50_ms"], "ms", "PostgreSQL p50", p["p50_ms"] / base["p50_ms"], target)
        report.add("serve", f"{label} p95", p["p95_ms"], "ms", "PostgreSQL p95", p["p95_ms"] / base["p95_ms"])

    warm = wire_keys + http_keys  # all in the warm pool now

    def wire_client():
        con = psycopg.connect(host="127.0.0.1", port=pg_port, user="bench", dbname="microdb", autocommit=True)
        r = random.Random()
        return lambda: (con.execute(f"SET microdb.entity = 'customer/{r.choice(warm)}'"), con.execute(MICRODB_SQL).fetchall())

    def pg_client():
        con = psycopg.connect(DSN, autocommit=True)
        r, sql = random.Random(), PG_SQL.format(s=schema)
        return lambda: con.execute(sql, (int(r.choice(warm)),), prepare=True).fetchall()

    pg_qps = _throughput_threads(pg_client, clients, seconds)
    wire_qps = _throughput_threads(wire_client, clients, seconds)
    http_qps = _http_throughput(http_port, token, warm, clients, seconds)
    report.add("serve", f"PostgreSQL throughput ({clients} clients)", pg_qps, "queries/s")
    report.add("serve", f"wire throughput ({clients} clients, warm)", wire_qps, "queries/s", "PostgreSQL", wire_qps / pg_qps)
    report.add("serve", f"HTTP throughput ({clients} clients, warm)", http_qps, "queries/s", "PostgreSQL", http_qps / pg_qps)
