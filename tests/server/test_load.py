"""Load: `microdb serve` (its own process, loopback only) under 50 concurrent Postgres-wire
clients (psycopg, threads) and 50 concurrent HTTP clients (httpx, asyncio) for
MICRODB_LOAD_SECONDS (default 30) over 1,000 entities. No request fails, every query
leaves exactly one audit record, the warm pool stays within its configured bounds, and
clients that disconnect in the middle of a query do not disturb the others."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import httpx
import psycopg
import pytest

import microdb
from microdb.server.http import hash_token, new_token

SECONDS = float(os.environ.get("MICRODB_LOAD_SECONDS", "30"))
ENTITIES = 1000
CLIENTS = 50
POOL_ENTRIES, POOL_MB = 300, 16  # smaller than the working set: the pool must evict to stay bounded
SQL = "SELECT count(*) AS n, sum(amount) AS total FROM transactions WHERE channel <> 'atm'"
HEAVY = "SELECT sum(a.i * b.i) AS s FROM range(10000) a(i), range(10000) b(i)"  # a few hundred ms of CPU


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from microdb.init import init_workspace

    path = tmp_path_factory.mktemp("load")
    init_workspace(path, demo=True, customers=ENTITIES, seed=12)
    web_token, ops_token = new_token(), new_token()
    with (path / "microdb.toml").open("a") as fh:
        fh.write(f"\n[query]\npool_size = {POOL_ENTRIES}\npool_memory_mb = {POOL_MB}\n"
                 '\n[server.users.loadwire]\nrole = "analyst"\ntrusted_local = true\n'
                 '\n[server.users.ops]\nrole = "admin"\ntrusted_local = true\n'
                 f'\n[server.tokens.loadweb]\nrole = "analyst"\ntoken_hash = "{hash_token(web_token)}"\n'
                 f'\n[server.tokens.ops]\nrole = "admin"\ntoken_hash = "{hash_token(ops_token)}"\n')
    ws = microdb.open(path)
    ws.sync("customer")
    keys = ws.store.keys("customer")
    ws.close()
    assert len(keys) == ENTITIES
    proc = subprocess.Popen([sys.executable, "-m", "microdb.cli", "-w", str(path), "serve", "--pg", "127.0.0.1:0",
                             "--http", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        pg_port = int(re.search(r"127\.0\.0\.1:(\d+)", proc.stderr.readline()).group(1))
        http_port = int(re.search(r"http://127\.0\.0\.1:(\d+)", proc.stderr.readline()).group(1))
        yield {"path": path, "proc": proc, "pg": pg_port, "http": http_port, "keys": keys,
               "web": web_token, "ops": ops_token}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1)) / 1024


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_wire_and_http_clients_under_load(server):
    # warm-up: the first query of a role masks the shared reference tables (once per role)
    with psycopg.connect(host="127.0.0.1", port=server["pg"], user="loadwire", dbname="microdb", autocommit=True) as con:
        con.execute("SET microdb.entity = 'customer/1'")
        con.execute(SQL)
    warm_up = 1
    deadline = time.monotonic() + SECONDS
    keys, failures = server["keys"], []
    counts = {"wire": 0, "http": 0, "disconnects": 0}
    lock = threading.Lock()
    samples: list[tuple[float, float, float, float, float]] = []

    def wire_client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(host="127.0.0.1", port=server["pg"], user="loadwire", dbname="microdb",
                                 autocommit=True, connect_timeout=30) as con:
                while time.monotonic() < deadline:
                    key = rng.choice(keys)
                    con.execute(f"SET microdb.entity = 'customer/{key}'")
                    row = con.execute(SQL).fetchone()
                    assert row[0] >= 0
                    with lock:
                        counts["wire"] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            failures.append(f"wire {seed}: {exc!r}")

    async def http_clients() -> None:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        headers = {"Authorization": f"Bearer {server['web']}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server['http']}", headers=headers,
                                     limits=limits, timeout=60) as client:
            async def one(seed: int) -> None:
                rng = random.Random(seed)
                while time.monotonic() < deadline:
                    key = rng.choice(keys)
                    try:
                        r = await client.post("/query", json={"entity": f"customer/{key}", "sql": SQL})
                    except httpx.HTTPError as exc:
                        failures.append(f"http {seed}: {exc!r}")
                        return
                    if r.status_code != 200:
                        failures.append(f"http {seed}: {r.status_code} {r.text[:200]}")
                        return
                    counts["http"] += 1

            await asyncio.gather(*(one(1000 + i) for i in range(CLIENTS)))

    def disconnecters() -> None:
        """Every few seconds: a wire client and an HTTP client leave in the middle of a heavy query."""
        n = 0
        while time.monotonic() < deadline - 6:
            time.sleep(5)
            try:
                sock = socket.create_connection(("127.0.0.1", server["pg"]))
                body = b"user\0ops\0database\0microdb\0options\0-c microdb.entity=customer/1\0\0"
                sock.sendall(struct.pack(">ii", 8 + len(body), 196608) + body)
                sock.recv(4096)  # AuthenticationOk and the rest of the start-up
                q = HEAVY.encode() + b"\0"
                sock.sendall(b"Q" + struct.pack(">i", 4 + len(q)) + q)
                time.sleep(0.05)
                sock.close()  # gone mid-query
                try:
                    httpx.post(f"http://127.0.0.1:{server['http']}/query", timeout=0.05,
                               headers={"Authorization": f"Bearer {server['ops']}"},
                               json={"entity": "customer/2", "sql": HEAVY})
                except httpx.TimeoutException:
                    pass  # gone mid-query
                n += 1
            except OSError as exc:
                failures.append(f"disconnecter: {exc!r}")
                return
        counts["disconnects"] = n

    def monitor() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{server['http']}", timeout=30) as c:
            while time.monotonic() < deadline:
                text = c.get("/metrics").text
                samples.append((_metric(text, "microdb_pool_entries"), _metric(text, "microdb_pool_max_entries"),
                                _metric(text, "microdb_pool_bytes"), _metric(text, "microdb_pool_max_bytes"),
                                _rss_mb(server["proc"].pid)))
                time.sleep(1)

    threads = [threading.Thread(target=wire_client, args=(i,)) for i in range(CLIENTS)]
    threads += [threading.Thread(target=lambda: asyncio.run(http_clients())), threading.Thread(target=disconnecters),
                threading.Thread(target=monitor)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 300)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "clients did not stop"
    assert not failures, failures[:5]
    assert server["proc"].poll() is None, "the server died"
    print(f"\nload: {counts['wire']} wire + {counts['http']} HTTP queries in {elapsed:.1f}s "
          f"({(counts['wire'] + counts['http']) / elapsed:.0f}/s), {counts['disconnects']} mid-query disconnects, "
          f"peak RSS {max(s[4] for s in samples):.0f} MB, peak pool {max(s[0] for s in samples):.0f} entries / "
          f"{max(s[2] for s in samples) / 1e6:.1f} MB")
    assert counts["wire"] >= CLIENTS and counts["http"] >= CLIENTS  # every client got answers
    assert counts["disconnects"] >= 1 or SECONDS < 6
    assert samples and all(s[0] <= s[1] and s[2] <= s[3] for s in samples), samples
    assert max(s[4] for s in samples) < 3072, "server RSS above 3 GiB"

    server["proc"].send_signal(signal.SIGTERM)
    assert server["proc"].wait(timeout=60) == 0
    ws = microdb.open(server["path"])
    try:
        assert ws.audit.query(actor="loadwire", action="query").num_rows == counts["wire"] + warm_up
        assert ws.audit.query(actor="loadweb", action="query").num_rows == counts["http"]
        assert ws.audit.query(outcome="error", action="query").num_rows == ws.audit.query(actor="ops", outcome="error").num_rows
        assert ws.audit.verify().ok
    finally:
        ws.close()
