"""The workspace served over the Postgres wire: psycopg and psql see the same masked rows
as the Python API, logins map to roles, parameters bind safely, everything is audited."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import psycopg
import pytest

import microdb
from conftest import load_corpus
from microdb.server.backend import WorkspaceBackend, bind_params
from microdb.server.pgwire import PgServer, ScramVerifier

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from microdb.init import init_workspace

    path = tmp_path_factory.mktemp("served")
    init_workspace(path, demo=True, customers=120, seed=4)
    with (path / "microdb.toml").open("a") as fh:
        fh.write(f'\n[server.users.analyst]\nrole = "analyst"\npassword_verifier = "{ScramVerifier.from_password(PASSWORD)}"\n'
                 '\n[server.users.ops]\nrole = "admin"\ntrusted_local = true\n')
    ws = microdb.open(path)
    ws.sync("customer")
    handle = PgServer(WorkspaceBackend(ws), "127.0.0.1", 0).serve_in_thread()
    yield ws, handle.port
    handle.stop()
    ws.close()


def connect(port: int, user: str = "analyst", password: str | None = PASSWORD, **kw) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="microdb",
                           autocommit=True, connect_timeout=5, **kw)


def test_same_masked_rows_as_the_api(served):
    ws, port = served
    sql = "SELECT customer_id, national_id, email, date_of_birth FROM customers"
    with connect(port) as con:
        con.execute("SET microdb.entity = 'customer/42'")
        rows = con.execute(sql).fetchall()
    api = ws.entity("customer/42", role="analyst").sql(sql).to_pylist()
    assert rows == [tuple(r.values()) for r in api]
    assert rows[0][1] == "***"


def test_parameters_startup_option_and_fanout(served):
    ws, port = served
    with connect(port, options="-c microdb.entity=customer/1") as con:
        n = con.execute("SELECT count(*) FROM transactions WHERE amount > %s AND channel = %s", (100, "pos")).fetchone()[0]
        hostile = con.execute("SELECT count(*) FROM customers WHERE segment = %s", ("x' OR '1'='1",)).fetchone()[0]
    api = ws.entity("customer/1", role="analyst").sql(
        "SELECT count(*) AS n FROM transactions WHERE amount > 100 AND channel = 'pos'").to_pylist()[0]["n"]
    assert n == api and n > 0
    assert hostile == 0  # a parameter is a value, never SQL
    with connect(port) as con:
        con.execute("SET microdb.entity = 'customer/1,2,3'")
        rows = con.execute("SELECT count(*) AS n FROM accounts").fetchall()  # entity_key is added first
        assert [r[0] for r in rows] == ["1", "2", "3"]
        assert rows[1][1] == 0  # customer 2 has no accounts


def test_auth_and_errors(served):
    ws, port = served
    with pytest.raises(psycopg.OperationalError):
        connect(port, password="wrong")
    with pytest.raises(psycopg.OperationalError):
        connect(port, user="mallory", password="x")
    with connect(port, user="ops", password=None) as con:  # trusted local login, raw role
        con.execute("SET microdb.entity = 'customer/42'")
        nid = con.execute("SELECT national_id FROM customers").fetchone()[0]
        assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", nid)
    with connect(port) as con:
        with pytest.raises(psycopg.Error, match="no entity chosen"):
            con.execute("SELECT 1")
        con.execute("SET microdb.entity = 'customer/42'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            con.execute("SELECT * FROM read_csv('/etc/passwd')")
        assert con.execute("SELECT count(*) FROM customers").fetchone()[0] == 1  # still usable
    recs = ws.audit.query(actor="analyst").to_pylist()
    assert {"ok", "refused"} <= {r["outcome"] for r in recs}
    assert any(r["actor"] == "mallory" and r["action"] == "login" for r in ws.audit.query(action="login").to_pylist())


def test_bypass_corpus_over_the_wire(served, tmp_path):
    ws, port = served
    secrets = {str(v) for v in ws.entity("customer/42", role="admin").tables()["customers"]
               .select(["national_id", "email", "phone"]).to_pylist()[0].values()}
    with connect(port) as con:
        con.execute("SET microdb.entity = 'customer/42'")
        for name, sql, _ in load_corpus(tmp_path)[:60]:
            try:
                text = str(con.execute(sql.replace("vault", "customers")).fetchall())
            except psycopg.Error as exc:
                text = str(exc)
            assert not [s for s in secrets if s in text], name


def test_bind_params_quotes_values():
    assert bind_params("SELECT * FROM t WHERE a = $1 AND b = $2", ["it's", 3]) == "SELECT * FROM t WHERE a = 'it''s' AND b = 3"


def test_serve_command_with_psql_and_sigterm(served, tmp_path):
    ws, _ = served
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "microdb.cli", "-w", str(ws.root), "serve", "--pg", "127.0.0.1:0", "--http", "off"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        port = re.search(r"127\.0\.0\.1:(\d+)", line).group(1)
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", port, "-U", "analyst", "-d", "microdb", "-At", "-c",
                              "SET microdb.entity = 'customer/42'", "-c", "SELECT national_id FROM customers"],
                             env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "***"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_psql_describe_commands(served):
    """psql's \\d, \\dt and \\d TABLE answer from the tables the role sees (withheld columns absent)."""
    ws, port = served
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PGOPTIONS": "-c microdb.entity=customer/42"}

    def psql(command: str) -> str:
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "analyst", "-d", "microdb", "-c", command],
                             env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    listing = psql("\\d")
    tables = ws.entity("customer/42", role="analyst").tables()
    for name in tables:
        assert re.search(rf"public\s*\|\s*{name}\s*\|\s*table", listing), (name, listing)
    assert "transactions" in psql("\\dt")
    described = psql("\\d transactions")
    assert 'Table "public.transactions"' in described
    for field in tables["transactions"].schema:
        assert re.search(rf"^\s*{field.name}\s*\|", described, re.M), (field.name, described)
    assert re.search(r"^\s*amount\s*\|\s*numeric", described, re.M)
    assert re.search(r"^\s*ts\s*\|\s*timestamp", described, re.M)
    assert "Did not find any relation" in subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "analyst", "-d", "microdb", "-c", "\\d no_such_table"],
        env=env, capture_output=True, text=True, timeout=30).stderr
