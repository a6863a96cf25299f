"""Provisioning masked and synthetic entities into PostgreSQL and MariaDB (and SQLite,
DuckDB): the targets' own constraints accept every row, counts match, upserts are
idempotent, failures leave nothing behind, and bad input fails with a clear message."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import PG_DSN, require_mysql, require_postgres, unique_name
from microdb.errors import AccessDenied, SchemaError, SourceError

CUSTOMERS = 500
ROLE = "tester"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The demo workspace with 500 customers, synced, and one 500-entity synthetic bundle."""
    import microdb
    from microdb.init import init_workspace

    path = tmp_path_factory.mktemp("provision")
    init_workspace(path, demo=True, customers=CUSTOMERS, seed=5)
    w = microdb.open(path)
    w.sync("customer")
    yield w
    w.close()


@pytest.fixture(scope="module")
def bundle_id(ws, tmp_path_factory):
    """A 500-entity rules bundle; if the demo charter rejects it, provisioning refuses it
    until an override is recorded."""
    from microdb import synthesis
    from microdb.provision import provision

    model = ws.synth_fit("customer", generator="rules", seed=1)
    b = ws.synth_sample(model, CUSTOMERS, seed=1)
    if b.status == "rejected":
        scratch = tmp_path_factory.mktemp("rejected")
        with pytest.raises(AccessDenied, match="rejected"):
            provision(ws, f"sqlite:///{scratch}/r.sqlite", bundle=b.id)
        synthesis.override(ws, b.id, "provisioning tests need a rules bundle")
    return b.id


@pytest.fixture
def pg_schema():
    import psycopg

    require_postgres()
    name = unique_name("prov")
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def my_db():
    import pymysql

    conn = require_mysql()
    name = unique_name("prov")
    yield name
    con = pymysql.connect(**conn)
    with con.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    con.close()


def pg_url(schema: str) -> str:
    return f"{PG_DSN}?schema={schema}"


def my_url(db: str) -> str:
    return f"mysql://root@127.0.0.1:3306/{db}"


def pg_rows(sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(PG_DSN) as con:
        return con.execute(sql).fetchall()


def my_rows(sql: str) -> list[tuple]:
    import pymysql

    con = pymysql.connect(**require_mysql())
    try:
        with con.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        con.close()


def checksum(fetch, qualify, tables) -> dict[str, str]:
    """Order-independent digest of every table's rows."""
    out = {}
    for t in tables:
        rows = sorted(repr(tuple(str(v) for v in r)) for r in fetch(f"SELECT * FROM {qualify(t)}"))
        out[t] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return out


def expected_rows(ws, role=ROLE, keys=None):
    from microdb.subset import gather

    es = gather(ws, "customer", keys or ws.store.keys("customer"), role)
    return es.rows(), es


# ------------------------------------------------------------------------- PostgreSQL


def test_postgres_masked_customers(ws, pg_schema):
    from microdb.provision import provision

    res = provision(ws, pg_url(pg_schema), etype="customer", role=ROLE)
    counts, es = expected_rows(ws)
    assert res.entities == CUSTOMERS and res.rows == counts
    for table, n in counts.items():
        assert pg_rows(f'SELECT count(*) FROM "{pg_schema}"."{table}"')[0][0] == n
    # the target's own constraints: primary keys on every table but the key-less one, and
    # every foreign key (validated over all rows when added)
    fks = pg_rows("SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint c "
                  f"JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = '{pg_schema}' AND contype = 'f'")
    pairs = {(a.split(".")[-1].strip('"'), b.split(".")[-1].strip('"')) for a, b in fks}
    assert {("accounts", "customers"), ("cards", "accounts"), ("transactions", "accounts"), ("transactions", "cards"),
            ("transactions", "merchants"), ("transactions", "devices"), ("customers", "countries"),
            ("addresses", "customers"), ("consents", "customers")} <= pairs
    assert res.skipped_links == []
    # the rows are the masked view: customer 42 as the role sees it
    mine = ws.hydrate("customer/42", ROLE).tables["customers"].to_pylist()[0]
    got = pg_rows(f'SELECT email, national_id, date_of_birth FROM "{pg_schema}".customers WHERE customer_id = {mine["customer_id"]}')
    assert got == [(mine["email"], mine["national_id"], mine["date_of_birth"])]
    raw = ws.hydrate("customer/42", "admin").tables["customers"].to_pylist()[0]
    assert mine["customer_id"] != raw["customer_id"] and got[0][0] != raw["email"]
    # indexes on foreign-key columns
    idx = pg_rows(f"SELECT indexname FROM pg_indexes WHERE schemaname = '{pg_schema}' AND tablename = 'transactions'")
    assert any("card_id" in r[0] for r in idx)


def test_postgres_upsert_is_idempotent_and_repairs(ws, pg_schema):
    from microdb.provision import provision

    url = pg_url(pg_schema)
    first = provision(ws, url, etype="customer", role=ROLE)
    tables = list(first.rows)
    qualify = lambda t: f'"{pg_schema}"."{t}"'  # noqa: E731
    before = checksum(pg_rows, qualify, tables)
    again = provision(ws, url, etype="customer", role=ROLE, mode="upsert")
    assert again.rows == first.rows
    assert checksum(pg_rows, qualify, tables) == before
    # a changed row is put back, a missing child row comes back
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as con:
        con.execute(f"UPDATE {qualify('customers')} SET segment = 'tampered'")
        con.execute(f"DELETE FROM {qualify('transactions')} WHERE transaction_id IN "
                    f"(SELECT transaction_id FROM {qualify('transactions')} LIMIT 5)")
    assert checksum(pg_rows, qualify, tables) != before
    provision(ws, url, etype="customer", role=ROLE, mode="upsert")
    assert checksum(pg_rows, qualify, tables) == before


def test_postgres_failure_midway_leaves_nothing(ws, pg_schema, monkeypatch):
    from microdb.provision import PostgresTarget, provision

    original = PostgresTarget.append
    calls = {"n": 0}

    def flaky(self, plan, table, fresh):
        calls["n"] += 1
        if plan.name == "transactions" and calls["n"] > 12:
            raise SourceError("injected failure while loading")
        return original(self, plan, table, fresh)

    monkeypatch.setattr(PostgresTarget, "append", flaky)
    with pytest.raises(SourceError, match="injected"):
        provision(ws, pg_url(pg_schema), etype="customer", role=ROLE, batch_rows=1000)
    assert calls["n"] > 12  # it failed in the middle of the transactions table
    assert pg_rows(f"SELECT count(*) FROM information_schema.tables WHERE table_schema = '{pg_schema}'") == [(0,)]
    assert pg_rows(f"SELECT count(*) FROM pg_namespace WHERE nspname = '{pg_schema}'") == [(0,)]
    # on existing tables an interrupted upsert keeps every row as it was
    monkeypatch.setattr(PostgresTarget, "append", original)
    res = provision(ws, pg_url(pg_schema), etype="customer", role=ROLE)
    qualify = lambda t: f'"{pg_schema}"."{t}"'  # noqa: E731
    before = checksum(pg_rows, qualify, list(res.rows))
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as con:
        con.execute(f"UPDATE {qualify('accounts')} SET status = 'tampered'")
    tampered = checksum(pg_rows, qualify, list(res.rows))

    def failing_upsert(self, plan, table):
        raise SourceError("injected failure while upserting")

    monkeypatch.setattr(PostgresTarget, "upsert", failing_upsert)
    monkeypatch.setattr(PostgresTarget, "append", flaky)
    calls["n"] = 0
    with pytest.raises(SourceError, match="injected"):
        provision(ws, pg_url(pg_schema), etype="customer", role=ROLE, mode="upsert", batch_rows=1000)
    assert checksum(pg_rows, qualify, list(res.rows)) == tampered != before


def test_postgres_bundle(ws, pg_schema, bundle_id):
    from microdb.provision import provision

    res = provision(ws, pg_url(pg_schema), bundle=bundle_id)
    bundle = ws.bundle(bundle_id)
    expected = {n: t.num_rows for n, t in bundle.tables().items()}
    assert res.rows == expected and res.entities == CUSTOMERS and res.bundle == bundle_id
    for table, n in expected.items():
        assert pg_rows(f'SELECT count(*) FROM "{pg_schema}"."{table}"')[0][0] == n
    fks = pg_rows("SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                  f"WHERE n.nspname = '{pg_schema}' AND contype = 'f'")[0][0]
    assert fks >= 9
    qualify = lambda t: f'"{pg_schema}"."{t}"'  # noqa: E731
    before = checksum(pg_rows, qualify, list(expected))
    provision(ws, pg_url(pg_schema), bundle=bundle_id, mode="upsert")
    assert checksum(pg_rows, qualify, list(expected)) == before


# ---------------------------------------------------------------------------- MariaDB


def test_mysql_masked_customers_upsert_and_failure(ws, my_db, monkeypatch):
    from microdb.provision import MysqlTarget, provision

    url = my_url(my_db)
    res = provision(ws, url, etype="customer", role="analyst")
    counts, _ = expected_rows(ws, "analyst")
    assert res.rows == counts
    for table, n in counts.items():
        assert my_rows(f"SELECT count(*) FROM `{my_db}`.`{table}`")[0][0] == n
    fks = my_rows("SELECT TABLE_NAME, REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS "
                  f"WHERE CONSTRAINT_SCHEMA = '{my_db}'")
    assert {("transactions", "cards"), ("cards", "accounts"), ("accounts", "customers"),
            ("transactions", "devices")} <= set(fks)
    qualify = lambda t: f"`{my_db}`.`{t}`"  # noqa: E731
    before = checksum(my_rows, qualify, list(counts))
    provision(ws, url, etype="customer", role="analyst", mode="upsert")
    assert checksum(my_rows, qualify, list(counts)) == before
    # an upsert that fails midway rolls back every batch it had written
    import pymysql

    con = pymysql.connect(**require_mysql(), autocommit=True)
    with con.cursor() as cur:
        cur.execute(f"UPDATE {qualify('customers')} SET segment = 'tampered'")
    con.close()
    tampered = checksum(my_rows, qualify, list(counts))
    original = MysqlTarget._load
    calls = {"n": 0}

    def flaky(self, table_sql, plan, table):
        calls["n"] += 1
        if plan.name == "transactions" and calls["n"] > 14:
            raise SourceError("injected failure while loading")
        return original(self, table_sql, plan, table)

    monkeypatch.setattr(MysqlTarget, "_load", flaky)
    with pytest.raises(SourceError, match="injected"):
        provision(ws, url, etype="customer", role="analyst", mode="upsert", batch_rows=1000)
    assert checksum(my_rows, qualify, list(counts)) == tampered


def test_mysql_create_failure_drops_what_it_made(ws, my_db, monkeypatch):
    from microdb.provision import MysqlTarget, provision

    original = MysqlTarget._load
    calls = {"n": 0}

    def flaky(self, table_sql, plan, table):
        calls["n"] += 1
        if calls["n"] > 6:
            raise SourceError("injected failure while loading")
        return original(self, table_sql, plan, table)

    monkeypatch.setattr(MysqlTarget, "_load", flaky)
    with pytest.raises(SourceError, match="injected"):
        provision(ws, my_url(my_db), etype="customer", role=ROLE, batch_rows=1000)
    assert my_rows(f"SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{my_db}'") == [(0,)]
    # into an existing database: the tables it created are dropped again
    my_rows(f"CREATE DATABASE `{my_db}`")
    calls["n"] = 0
    with pytest.raises(SourceError, match="injected"):
        provision(ws, my_url(my_db), etype="customer", role=ROLE, batch_rows=1000)
    assert my_rows(f"SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{my_db}'") == [(0,)]


def test_mysql_bundle(ws, my_db, bundle_id):
    from microdb.provision import provision

    res = provision(ws, my_url(my_db), bundle=bundle_id)
    for table, n in res.rows.items():
        assert my_rows(f"SELECT count(*) FROM `{my_db}`.`{table}`")[0][0] == n
    assert res.rows["customers"] == CUSTOMERS


# ------------------------------------------------------------------- SQLite & DuckDB


def test_sqlite_and_duckdb_targets(ws, tmp_path):
    import sqlite3

    import duckdb

    from microdb.provision import provision

    counts, _ = expected_rows(ws)
    res = provision(ws, f"sqlite:///{tmp_path}/t.sqlite", etype="customer", role=ROLE)
    assert res.rows == counts
    con = sqlite3.connect(tmp_path / "t.sqlite")
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert len(con.execute("PRAGMA foreign_key_list(transactions)").fetchall()) == 4
    assert con.execute("SELECT count(*) FROM transactions").fetchone()[0] == counts["transactions"]
    con.close()
    before = _sqlite_sum(tmp_path / "t.sqlite", counts)
    provision(ws, f"sqlite:///{tmp_path}/t.sqlite", etype="customer", role=ROLE, mode="upsert")
    assert _sqlite_sum(tmp_path / "t.sqlite", counts) == before

    res = provision(ws, f"duckdb:///{tmp_path}/t.duckdb", etype="customer", role=ROLE, schema="test_data")
    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    for table, n in counts.items():
        assert con.execute(f"SELECT count(*) FROM test_data.{table}").fetchone()[0] == n
    fks = con.execute("SELECT count(*) FROM duckdb_constraints() WHERE schema_name = 'test_data' "
                  "AND constraint_type = 'FOREIGN KEY'").fetchone()[0]
    con.close()
    assert fks >= 9
    provision(ws, f"duckdb:///{tmp_path}/t.duckdb", etype="customer", role=ROLE, schema="test_data", mode="upsert")
    res = provision(ws, f"duckdb:///{tmp_path}/t.duckdb", etype="customer", role=ROLE, schema="test_data",
                    mode="truncate", keys=["1", "2", "3"])
    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    assert con.execute("SELECT count(*) FROM test_data.customers").fetchone()[0] == 3
    con.close()


def _sqlite_sum(path: Path, counts) -> dict[str, str]:
    import sqlite3

    con = sqlite3.connect(path)
    try:
        return checksum(lambda q: con.execute(q).fetchall(), lambda t: f'"{t}"', list(counts))
    finally:
        con.close()


# --------------------------------------------------------------------------- subsets


def test_subset_is_referentially_complete(ws, tmp_path):
    import duckdb

    from microdb.provision import provision

    res = provision(ws, f"duckdb:///{tmp_path}/s.duckdb", etype="customer", role=ROLE, keys=["1", "7", "42"])
    assert res.entities == 3 and res.rows["customers"] == 3
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    # only the reference rows the three customers use, and all of them
    used = con.execute("SELECT count(DISTINCT merchant_id) FROM transactions WHERE merchant_id IS NOT NULL").fetchone()[0]
    assert con.execute("SELECT count(*) FROM merchants").fetchone()[0] == used < 300
    dangling = con.execute("SELECT count(*) FROM transactions t LEFT JOIN devices d USING (device_id) "
                       "WHERE t.device_id IS NOT NULL AND d.device_id IS NULL").fetchone()[0]
    con.close()
    assert dangling == 0


def test_stratified_sample(ws):
    from microdb.subset import Choice, _strata, choose

    et = ws.entity_type("customer")
    keys = ws.store.keys("customer")
    strata = _strata(ws, et, keys, "transactions", "is_fraud", ROLE).to_pylist()
    fraud = {k for k, s in zip(keys, strata) if s}
    picked = choose(ws, "customer", Choice(sample=60, stratify="transactions.is_fraud", seed=3), ROLE)
    assert len(picked) == 60 == len(set(picked))
    share = len(fraud) / len(keys)
    assert abs(sum(1 for k in picked if k in fraud) - 60 * share) <= 1
    assert picked == choose(ws, "customer", Choice(sample=60, stratify="transactions.is_fraud", seed=3), ROLE)
    assert picked != choose(ws, "customer", Choice(sample=60, stratify="transactions.is_fraud", seed=4), ROLE)
    plain = choose(ws, "customer", Choice(sample=25, seed=1), ROLE)
    assert len(plain) == 25 and set(plain) <= set(keys)


@pytest.fixture(scope="module")
def pg_ws(pg_bank, tmp_path_factory):
    """A workspace over the bank fixture in one PostgreSQL schema, every customer synced."""
    import microdb
    from conftest import add_discovered, make_workspace
    from fixtures.demo import ROLES

    url, schema = pg_bank
    path = make_workspace(tmp_path_factory.mktemp("pgws"), {"bank": url}, ROLES)
    add_discovered(path, "bank", "customers")
    w = microdb.open(path)
    w.sync("customer")
    yield w, schema
    w.close()


PREDICATES = [
    ("transactions.is_fraud",
     "SELECT DISTINCT a.customer_id FROM {s}.transactions t JOIN {s}.accounts a USING (account_id) WHERE t.is_fraud"),
    ("EXISTS (SELECT 1 FROM cards c JOIN accounts a USING (account_id) WHERE c.status = 'blocked') "
     "AND customers.segment = 'retail'",
     "SELECT c.customer_id FROM {s}.customers c WHERE c.segment = 'retail' AND EXISTS (SELECT 1 FROM {s}.cards k "
     "JOIN {s}.accounts a USING (account_id) WHERE a.customer_id = c.customer_id AND k.status = 'blocked')"),
    ("(SELECT count(*) FROM accounts) >= 3 OR NOT EXISTS (SELECT 1 FROM transactions)",
     "SELECT c.customer_id FROM {s}.customers c WHERE (SELECT count(*) FROM {s}.accounts a "
     "WHERE a.customer_id = c.customer_id) >= 3 OR NOT EXISTS (SELECT 1 FROM {s}.transactions t JOIN {s}.accounts a "
     "USING (account_id) WHERE a.customer_id = c.customer_id)"),
    ("transactions.amount > 900 AND accounts.currency = 'EUR' AND transactions.account_id = accounts.account_id",
     "SELECT DISTINCT a.customer_id FROM {s}.transactions t JOIN {s}.accounts a USING (account_id) "
     "WHERE t.amount > 900 AND a.currency = 'EUR'"),
]


@pytest.mark.parametrize("role", ["admin", "analyst"])
@pytest.mark.parametrize("predicate,source_sql", PREDICATES, ids=["fraud", "exists-and-root", "count-or-none", "join"])
def test_predicate_matches_sql_on_the_source(pg_ws, predicate, source_sql, role):
    from microdb.subset import Choice, choose

    w, schema = pg_ws
    expected = sorted(str(r[0]) for r in pg_rows(source_sql.format(s=f'"{schema}"')))
    got = sorted(choose(w, "customer", Choice(where=predicate), role))
    assert got == expected and 0 < len(got) < w.store.count("customer")


def test_bad_predicates_are_refused(pg_ws):
    from microdb.errors import QueryError, QueryRefused
    from microdb.subset import Choice, choose

    w, _ = pg_ws
    with pytest.raises(QueryError, match="needs a table"):
        choose(w, "customer", Choice(where="status = 'blocked'"), "admin")  # in accounts and cards
    with pytest.raises(QueryError, match="not an entity table"):
        choose(w, "customer", Choice(where="vault.secret = 1"), "admin")
    with pytest.raises(QueryRefused):
        choose(w, "customer", Choice(where="EXISTS (SELECT 1 FROM read_csv('/etc/passwd'))"), "admin")
    with pytest.raises(QueryError):
        choose(w, "customer", Choice(where="1; DROP TABLE customers"), "admin")


# ----------------------------------------------------------------------------- errors


def test_unreachable_targets_are_named_and_audited(ws):
    from microdb.provision import provision

    with pytest.raises(SourceError, match=r"postgresql://…@127\.0\.0\.1:1/test is unreachable"):
        provision(ws, "postgresql://postgres:s3cret@127.0.0.1:1/test", etype="customer", role=ROLE)
    with pytest.raises(SourceError, match="unreachable"):
        provision(ws, "mysql://root:s3cret@127.0.0.1:1/x", etype="customer", role=ROLE)
    log = (ws.root / ".microdb" / "audit" / "audit.jsonl").read_text()
    assert "s3cret" not in log
    last = json.loads(log.strip().splitlines()[-1])
    assert last["action"] == "provision" and last["outcome"] == "error" and "unreachable" in last["error"]


def test_conflicting_table_is_named_and_nothing_written(ws, pg_schema):
    import psycopg

    from microdb.provision import provision

    with psycopg.connect(PG_DSN, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{pg_schema}"')
        con.execute(f'CREATE TABLE "{pg_schema}".accounts (account_id bigint PRIMARY KEY, nickname text)')
    with pytest.raises(SchemaError, match=r"accounts exists with other columns: it lacks column\(s\) customer_id.*nickname"):
        provision(ws, pg_url(pg_schema), etype="customer", role=ROLE, mode="upsert")
    with pytest.raises(SchemaError, match="already has table"):
        provision(ws, pg_url(pg_schema), etype="customer", role=ROLE)
    assert pg_rows(f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{pg_schema}'") == [("accounts",)]


def test_unmappable_type_is_named(tmp_path, pg_schema):
    import pyarrow.parquet as pq

    import microdb
    from conftest import add_discovered, make_workspace
    from microdb.provision import provision

    data = tmp_path / "files"
    data.mkdir()
    pq.write_table(pa.table({"owner_id": [1, 2], "tags": pa.array([{"a": 1}, {"a": 2}])}), data / "owners.parquet")
    pq.write_table(pa.table({"pet_id": [10, 11], "owner_id": [1, 2]}), data / "pets.parquet")
    rel = '[[relations]]\nchild = "files.pets"\ncolumns = ["owner_id"]\nparent = "files.owners"\nparent_columns = ["owner_id"]\n'
    path = make_workspace(tmp_path / "ws", {"files": f"parquet://{data}"}, rel)
    add_discovered(path, "files", "owners", key=["owner_id"])
    w = microdb.open(path)
    try:
        w.sync("owner")
        with pytest.raises(SchemaError, match=r"owners\.tags: type struct<a: int64> cannot be provisioned"):
            provision(w, pg_url(pg_schema), etype="owner")
    finally:
        w.close()
    assert pg_rows(f"SELECT count(*) FROM pg_namespace WHERE nspname = '{pg_schema}'") == [(0,)]


def test_retired_bundle_is_refused(ws, tmp_path):
    from microdb import synthesis
    from microdb.provision import provision

    model = ws.synth_fit("customer", generator="rules", seed=2)
    b = ws.synth_sample(model, 20, seed=2)
    synthesis.retire(ws, b.id, "test")
    with pytest.raises(AccessDenied):
        provision(ws, f"sqlite:///{tmp_path}/r.sqlite", bundle=b.id)
    assert not (tmp_path / "r.sqlite").exists() or (tmp_path / "r.sqlite").stat().st_size == 0


def test_audit_and_lineage(ws, tmp_path):
    from microdb.provision import provision

    provision(ws, f"duckdb:///{tmp_path}/a.duckdb", etype="customer", role="analyst", where="transactions.is_fraud")
    log = ws.audit.query(action="provision").to_pylist()
    rec = log[-1]
    details = rec["details"] if isinstance(rec["details"], dict) else json.loads(rec["details"])
    assert rec["outcome"] == "ok" and rec["role"] == "analyst"
    assert details["target"].endswith("a.duckdb") and details["tables"]["customers"] == details["entities"]
    assert details["selection"] == {"where": "transactions.is_fraud"}
    events = [json.loads(line) for line in (ws.root / ".microdb" / "lineage.jsonl").read_text().splitlines()]
    done = [e for e in events if e["job"]["name"] == "provision.customer" and e["eventType"] == "COMPLETE"][-1]
    assert {o["name"] for o in done["outputs"]} >= {"main.customers", "main.transactions", "main.merchants"}
    assert done["inputs"][0]["name"] == "store/customer"


def test_schema_only_and_export(ws, tmp_path):
    import duckdb
    import pyarrow.parquet as pq

    from microdb.provision import export_set, mount, provision

    res = provision(ws, f"sqlite:///{tmp_path}/e.sqlite", etype="customer", role=ROLE, mode="schema_only")
    assert res.rows == {}
    path, rows = export_set(ws, "customer", tmp_path / "out", keys=["3", "4"], role="analyst")
    assert pq.read_table(path / "customers.parquet").num_rows == 2 == rows["customers"]
    path, _ = export_set(ws, "customer", tmp_path / "out.duckdb", where="transactions.is_fraud", role="analyst")
    con = duckdb.connect(str(path))
    assert con.execute("SELECT count(*) FROM customers").fetchone()[0] == rows_fraud(ws)
    con.close()
    folder, n = mount(ws, tmp_path / "mnt", "customer", keys=["5", "6"], role=ROLE)
    con = duckdb.connect(str(folder / "5.duckdb"))
    mine = ws.hydrate("customer/5", ROLE).tables
    for name, t in mine.items():
        got = con.sql(f'SELECT * FROM "{name}"').to_arrow_table()
        assert got.num_rows == t.num_rows
    assert con.execute("SELECT email FROM customers").fetchall() == [(mine["customers"]["email"][0].as_py(),)]
    con.close()


def rows_fraud(ws) -> int:
    from microdb.subset import Choice, choose

    return len(choose(ws, "customer", Choice(where="transactions.is_fraud"), "analyst"))
