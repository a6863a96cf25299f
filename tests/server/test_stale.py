"""Stale serving: when an on-demand refresh fails because a source is unreachable, an entity
type with ``serve_stale = true`` serves its sealed copy with a warning (HTTP ``Warning``
header and JSON ``warnings``, an audit record); without it, or without a sealed copy, the
request fails with a clear error. Sources made unreachable for real: a SQLite file moved
away, a PostgreSQL schema renamed under a running server."""

from __future__ import annotations

import httpx
import psycopg
import pytest
from conftest import add_discovered, add_logins, make_workspace, require_postgres, unique_name

import microdb
from microdb.errors import SourceError
from microdb.server.http import HttpThread, create_app


def _refresh_always(path, serve_stale: bool) -> None:
    cfg = path / "microdb.toml"
    text = cfg.read_text()
    assert 'on_demand = "ttl"' in text
    cfg.write_text(text.replace('on_demand = "ttl"', f'on_demand = "always"\nserve_stale = {str(serve_stale).lower()}'))


@pytest.fixture
def moved(tmp_path):
    """A demo workspace with customers 1..5 synced, then its CRM SQLite file moved away."""
    from microdb.init import init_workspace

    init_workspace(tmp_path, demo=True, customers=40, seed=8)
    tokens = add_logins(tmp_path)
    ws = microdb.open(tmp_path)
    ws.sync("customer", keys=[str(k) for k in range(1, 6)])
    ws.close()
    crm = tmp_path / "data" / "crm.sqlite"
    crm.rename(crm.with_suffix(".moved"))
    return tmp_path, tokens


def test_serve_stale_over_http_with_warning_and_audit(moved):
    path, tokens = moved
    _refresh_always(path, serve_stale=True)
    ws = microdb.open(path)
    web = HttpThread(create_app(ws, browser=False), "127.0.0.1", 0)
    h = {"Authorization": f"Bearer {tokens['analyst']}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{web.port}", timeout=30) as c:
            r = c.post("/query", headers=h, json={"entity": "customer/3", "sql": "SELECT national_id FROM customers"})
            assert r.status_code == 200, r.text
            assert r.json()["rows"] == [{"national_id": "***"}]
            assert r.headers["warning"].startswith('110 microdb "customer/3 is stale')
            assert "crm.sqlite" in r.json()["warnings"][0]
            got = c.get("/entities/customer/3", headers=h)
            assert got.status_code == 200 and "stale" in got.json()["warnings"][0] and "warning" in got.headers
            csv = c.get("/entities/customer/3", params={"format": "csv", "table": "customers"}, headers=h)
            assert csv.status_code == 200 and "stale" in csv.headers["warning"]
            # never synced: nothing to fall back on
            r = c.get("/entities/customer/30", headers=h)
            assert r.status_code == 503 and r.json()["error"]["code"] == "source_unavailable"
            assert "no sealed copy" in r.json()["error"]["message"]
        stale = [x for x in ws.audit.query(action="sync", entity="customer/3").to_pylist() if '"served_stale": true' in x["details"]
                 or '"served_stale":true' in x["details"]]
        assert len(stale) == 3 and {x["actor"] for x in stale} == {"analyst"} and stale[0]["outcome"] == "error"
    finally:
        web.stop()
        ws.close()


def test_without_serve_stale_the_request_fails_clearly(moved):
    path, tokens = moved
    _refresh_always(path, serve_stale=False)
    ws = microdb.open(path)
    try:
        with pytest.raises(SourceError, match=r"customer/3: on-demand refresh failed \(set serve_stale = true"):
            ws.entity("customer/3").sql("SELECT 1")
        web = HttpThread(create_app(ws, browser=False), "127.0.0.1", 0)
        try:
            r = httpx.get(f"http://127.0.0.1:{web.port}/entities/customer/3",
                          headers={"Authorization": f"Bearer {tokens['ops']}"}, timeout=30)
        finally:
            web.stop()
        assert r.status_code == 503 and "serve_stale" in r.json()["error"]["message"]
        assert ws.audit.query(action="sync", entity="customer/3", outcome="error").num_rows == 2
    finally:
        ws.close()


def test_postgres_schema_renamed_under_a_running_server(tmp_path):
    from fixtures.bank import generate
    from fixtures.load import drop_postgres, load_postgres

    dsn = require_postgres()
    schema = load_postgres(generate(customers=40, seed=9), dsn, schema=unique_name())
    moved = schema + "_gone"
    try:
        path = make_workspace(tmp_path / "ws", {"bank": f"{dsn}?schema={schema}"})
        add_discovered(path, "bank", "customers")
        _refresh_always(path, serve_stale=True)
        ops = {"Authorization": f"Bearer {add_logins(path)['ops']}"}  # a raw role: this workspace has no roles
        ws = microdb.open(path)
        ws.sync("customer")
        key = ws.store.keys("customer", limit=1)[0]
        web = HttpThread(create_app(ws, browser=False), "127.0.0.1", 0)
        body = {"entity": f"customer/{key}", "sql": "SELECT count(*) AS n FROM customers"}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{web.port}", timeout=30) as c:
                assert c.post("/query", json=body).status_code == 401  # tokens are still required
                with psycopg.connect(dsn, autocommit=True) as con:
                    con.execute(f'ALTER SCHEMA "{schema}" RENAME TO "{moved}"')
                v0 = ws.store.info("customer", key).version
                r = c.post("/query", headers=ops, json=body)
                assert r.status_code == 200 and r.json()["rows"] == [{"n": 1}], r.text
                assert "stale" in r.headers["warning"] and ws.store.info("customer", key).version == v0
                assert ws.audit.query(action="sync", entity=f"customer/{key}", outcome="error", actor="ops").num_rows == 1
                with psycopg.connect(dsn, autocommit=True) as con:
                    con.execute(f'ALTER SCHEMA "{moved}" RENAME TO "{schema}"')
                r = c.post("/query", headers=ops, json=body)
                assert r.status_code == 200 and "warning" not in r.headers and "warnings" not in r.json()
                assert ws.store.info("customer", key).version > v0  # reachable again: refreshed
        finally:
            web.stop()
            ws.close()
    finally:
        drop_postgres(moved, dsn)
        drop_postgres(schema, dsn)


def test_serve_stale_over_the_wire_sends_a_notice(moved):
    from microdb.server.backend import WorkspaceBackend
    from microdb.server.pgwire import PgServer

    path, _ = moved
    _refresh_always(path, serve_stale=True)
    ws = microdb.open(path)
    handle = PgServer(WorkspaceBackend(ws), "127.0.0.1", 0).serve_in_thread()
    notices: list[str] = []
    try:
        with psycopg.connect(host="127.0.0.1", port=handle.port, user="ops", dbname="microdb", autocommit=True,
                             connect_timeout=5, options="-c microdb.entity=customer/3") as con:
            con.add_notice_handler(lambda diag: notices.append(f"{diag.severity}: {diag.message_primary}"))
            rows = con.execute("SELECT count(*) FROM customers").fetchall()
            assert rows == [(1,)]
            con.execute("SET microdb.entity = 'customer/30'")  # never synced: nothing to fall back on
            with pytest.raises(psycopg.Error, match="no sealed copy"):
                con.execute("SELECT count(*) FROM customers")
        assert len(notices) == 1 and notices[0].startswith("WARNING: customer/3 is stale")
    finally:
        handle.stop()
        ws.close()
