"""The HTTP API over a real uvicorn server: bearer tokens map to roles, the same SQL gives the
same masked rows over CLI, Python API, HTTP and the Postgres wire, errors are JSON with the
right status, every request is audited with the token's name, concurrent first requests
for one entity project it once, and `microdb serve` runs both servers and stops on SIGTERM."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SERVE_PASSWORD, add_logins

import microdb
from microdb.errors import ConfigError
from microdb.server.backend import WorkspaceBackend
from microdb.server.http import HttpThread, create_app, hash_token
from microdb.server.pgwire import PgServer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from microdb.init import init_workspace

    path = tmp_path_factory.mktemp("http")
    init_workspace(path, demo=True, customers=120, seed=4)
    tokens = add_logins(path)
    ws = microdb.open(path)
    ws.sync("customer")
    web = HttpThread(create_app(ws), "127.0.0.1", 0)
    wire = PgServer(WorkspaceBackend(ws), "127.0.0.1", 0).serve_in_thread()
    client = httpx.Client(base_url=f"http://127.0.0.1:{web.port}", timeout=30)
    yield ws, client, tokens, wire.port
    client.close()
    web.stop()
    wire.stop()
    ws.close()


def auth(tokens: dict[str, str], name: str = "analyst") -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[name]}"}


def _norm(rows: list[tuple]) -> list[tuple[str, ...]]:
    """Values as text, the way every channel can agree on (JSON has no Decimal or date)."""
    def one(v: object) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, Decimal):
            return str(v.normalize()) if v == v.to_integral() else str(v)
        if hasattr(v, "isoformat"):
            return v.isoformat()
        return str(v)
    return [tuple(one(v) for v in r) for r in rows]


def test_tokens_map_to_roles_and_refusals_are_audited(served):
    ws, client, tokens, _ = served
    before = ws.audit.query(action="login", outcome="refused").num_rows
    r = client.get("/entities/customer/42")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized" and "WWW-Authenticate" in r.headers
    assert client.get("/entities/customer/42", headers={"Authorization": "Bearer mdb_wrong"}).status_code == 401
    assert client.get("/entities/customer/42", headers={"Authorization": f"Basic {tokens['analyst']}"}).status_code == 401
    assert ws.audit.query(action="login", outcome="refused").num_rows == before + 3
    masked = client.get("/entities/customer/42", headers=auth(tokens)).json()
    raw = client.get("/entities/customer/42", headers=auth(tokens, "ops")).json()
    assert masked["role"] == "analyst" and raw["role"] == "admin"
    assert masked["tables"]["customers"][0]["national_id"] == "***"
    assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", raw["tables"]["customers"][0]["national_id"])
    assert set(masked["tables"]) == set(ws.entity_type("customer").table_names)
    gets = ws.audit.query(action="get", entity="customer/42").to_pylist()
    assert {"analyst", "ops"} <= {r["actor"] for r in gets}
    assert all(r["role"] == "analyst" for r in gets if r["actor"] == "analyst")


def test_same_masked_rows_over_cli_api_http_and_wire(served):
    ws, client, tokens, pg_port = served
    sql = ("SELECT c.customer_id, c.national_id, c.email, c.date_of_birth, a.iban, a.balance "
           "FROM customers c JOIN accounts a USING (customer_id) ORDER BY a.iban")
    api = ws.entity("customer/7", role="analyst").sql(sql)
    assert api.num_rows > 0
    expected = _norm([tuple(r.values()) for r in api.to_pylist()])
    r = client.post("/query", headers=auth(tokens), json={"entity": "customer/7", "sql": sql})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [c["name"] for c in doc["columns"]] == api.column_names
    assert _norm([tuple(row.values()) for row in doc["rows"]]) == expected
    arrow = client.post("/query", headers=auth(tokens), json={"entity": "customer/7", "sql": sql, "format": "arrow"})
    assert pa.ipc.open_stream(arrow.content).read_all().equals(api)
    parquet = client.post("/query", headers=auth(tokens), json={"entity": "customer/7", "sql": sql, "format": "parquet"})
    assert pq.read_table(io.BytesIO(parquet.content)).equals(api)
    with psycopg.connect(host="127.0.0.1", port=pg_port, user="analyst", password=SERVE_PASSWORD, dbname="microdb",
                         autocommit=True) as con:
        con.execute("SET microdb.entity = 'customer/7'")
        assert _norm(con.execute(sql).fetchall()) == expected
    out = subprocess.run([sys.executable, "-m", "microdb.cli", "-w", str(ws.root), "query", "customer/7", sql,
                          "--role", "analyst", "-f", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert _norm([tuple(row.values()) for row in json.loads(out.stdout)]) == expected
    assert expected[0][1] == "***"


def test_errors_are_json_with_the_right_status(served):
    ws, client, tokens, _ = served
    h = auth(tokens)

    def err(r: httpx.Response, status: int, code: str) -> str:
        assert r.status_code == status, r.text
        body = r.json()["error"]
        assert body["code"] == code
        return body["message"]

    assert "read_csv" in err(client.post("/query", headers=h, json={"entity": "customer/7", "sql": "SELECT * FROM read_csv('/etc/passwd')"}), 403, "query_refused")
    err(client.post("/query", headers=h, json={"entity": "customer/7", "sql": "DELETE FROM customers"}), 403, "query_refused")
    err(client.post("/query", headers=h, json={"entity": "customer/7", "sql": "SELECT nope FROM customers"}), 422, "query_error")
    err(client.post("/query", headers=h, json={"entity": "customer/7"}), 422, "invalid_request")
    err(client.post("/query", headers=h, json={"sql": "SELECT 1"}), 422, "invalid_request")
    err(client.post("/query", headers=h, json={"entity": "customer/7", "sql": "SELECT 1", "format": "xml"}), 422, "invalid_request")
    err(client.post("/query", headers=h, content=b"{not json"), 422, "invalid_request")
    assert "known: customer" in err(client.get("/entities/vendor/1", headers=h), 404, "not_found")
    err(client.get("/entities/customer/99999999", headers=h), 404, "not_found")
    err(client.get("/entities/customer/7?format=csv&table=nope", headers=h), 404, "not_found")
    err(client.get("/nowhere", headers=h), 404, "not_found")
    refusals = ws.audit.query(actor="analyst", action="query", outcome="refused").to_pylist()
    assert any("read_csv" in (r["sql"] or "") for r in refusals)


def test_fanout_listing_formats_and_metrics(served):
    ws, client, tokens, _ = served
    h = auth(tokens)
    r = client.post("/query", headers=h, json={"type": "customer", "keys": [1, "2", 3], "sql": "SELECT count(*) AS n FROM accounts"})
    rows = r.json()["rows"]
    assert [x["entity_key"] for x in rows] == ["1", "2", "3"]
    every = client.post("/query", headers=h, json={"type": "customer", "keys": "*", "sql": "SELECT count(*) AS n FROM customers"}).json()
    assert every["row_count"] == ws.store.count("customer") == 120
    page = client.get("/entities/customer", params={"offset": 10, "limit": 25}, headers=h).json()
    assert page["total"] == 120 and page["keys"] == ws.store.keys("customer", limit=25, offset=10)
    assert client.get("/entities/customer", params={"limit": 0}, headers=h).status_code == 422
    csv = client.get("/entities/customer/42", params={"format": "csv", "table": "customers"}, headers=h)
    assert csv.headers["content-type"].startswith("text/csv") and '"***"' in csv.text
    zipped = zipfile.ZipFile(io.BytesIO(client.get("/entities/customer/42", params={"format": "parquet"}, headers=h).content))
    assert "customers.parquet" in zipped.namelist()
    assert pq.read_table(zipped.open("customers.parquet")).column("national_id").to_pylist() == ["***"]
    assert client.get("/health").json()["status"] == "ok"
    text = client.get("/metrics").text
    assert re.search(r'microdb_http_requests_total\{method="POST",route="/query",status="200"\} \d+', text)
    assert 'microdb_http_request_duration_seconds_bucket{route="/query",le="+Inf"}' in text
    assert re.search(r"^microdb_pool_hits_total \d+$", text, re.M) and "microdb_pool_max_bytes" in text
    spec = client.get("/openapi.json").json()
    assert {"/query", "/entities/{etype}", "/entities/{etype}/{key}", "/health", "/metrics"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
    lists = ws.audit.query(action="list", actor="analyst").to_pylist()
    assert lists and lists[-1]["entity"] == "customer/*"


def test_concurrent_first_requests_project_once(tmp_path):
    from microdb.init import init_workspace

    init_workspace(tmp_path, demo=True, customers=60, seed=6)
    tokens = add_logins(tmp_path)
    ws = microdb.open(tmp_path)
    web = HttpThread(create_app(ws), "127.0.0.1", 0)
    try:
        et = ws.entity_type("customer")
        for name in {t.source for t in et.tables} | {r.source for r in et.references}:
            ws.sources.catalog(name)
        q0 = ws.sources.queries()
        assert ws.store.info("customer", "17") is None

        def one(_: int) -> httpx.Response:
            with httpx.Client(base_url=f"http://127.0.0.1:{web.port}", timeout=60) as c:
                return c.post("/query", headers=auth(tokens), json={"entity": "customer/17", "sql": "SELECT count(*) AS n FROM customers"})

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(one, range(20)))
        assert [a.status_code for a in answers] == [200] * 20
        assert {a.json()["rows"][0]["n"] for a in answers} == {1}
        # exactly one projection: one read per table and reference table, one on-demand sync record
        assert ws.sources.queries() - q0 == len(et.tables) + len(et.references)
        syncs = [r for r in ws.audit.query(action="sync", entity="customer/17").to_pylist()]
        assert len(syncs) == 1 and syncs[0]["actor"] == "analyst"
    finally:
        web.stop()
        ws.close()


def test_token_command_and_config_checks(served, tmp_path):
    ws, *_ = served
    out = subprocess.run([sys.executable, "-m", "microdb.cli", "-w", str(ws.root), "token", "ci-bot", "--role", "tester"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    token, *config = out.stdout.strip().splitlines()
    assert token.startswith("mdb_") and len(token) > 40
    assert config == ["[server.tokens.ci-bot]", 'role = "tester"', f'token_hash = "{hash_token(token)}"']
    assert token not in "\n".join(config)
    bad = subprocess.run([sys.executable, "-m", "microdb.cli", "-w", str(ws.root), "token", "x", "--role", "ceo"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "ceo" in bad.stderr
    from microdb.config import parse_config

    base = {"roles": {"analyst": {"raw": True}}}
    with pytest.raises(ConfigError, match=r"server.tokens.t.token_hash"):
        parse_config({**base, "server": {"tokens": {"t": {"role": "analyst", "token_hash": "mdb_plaintext"}}}}, "x.toml")
    with pytest.raises(ConfigError, match=r"server.tokens.t.role: unknown role 'ceo'"):
        parse_config({**base, "server": {"tokens": {"t": {"role": "ceo", "token_hash": hash_token("a")}}}}, "x.toml")
    with pytest.raises(ConfigError, match=r"same token as server.tokens.a"):
        parse_config({**base, "server": {"tokens": {"a": {"role": "analyst", "token_hash": hash_token("a")},
                                                    "b": {"role": "analyst", "token_hash": hash_token("a")}}}}, "x.toml")


def test_serve_command_runs_both_servers_until_sigterm(served):
    ws, _, tokens, _ = served
    proc = subprocess.Popen([sys.executable, "-m", "microdb.cli", "-w", str(ws.root), "serve",
                             "--pg", "127.0.0.1:0", "--http", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        pg_port = re.search(r"127\.0\.0\.1:(\d+)", proc.stderr.readline()).group(1)
        line = proc.stderr.readline()
        assert "http://" in line, line + proc.stderr.readline()
        http_port = re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1)
        r = httpx.get(f"http://127.0.0.1:{http_port}/entities/customer/42", headers=auth(tokens), timeout=30)
        assert r.status_code == 200 and r.json()["tables"]["customers"][0]["national_id"] == "***"
        env = {**os.environ, "PGPASSWORD": SERVE_PASSWORD}
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", pg_port, "-U", "analyst", "-d", "microdb", "-At", "-c",
                              "SET microdb.entity = 'customer/42'", "-c", "SELECT national_id FROM customers"],
                             env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "***", out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "stopping" in proc.stderr.read()
