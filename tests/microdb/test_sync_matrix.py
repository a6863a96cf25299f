"""Discovery and bulk sync over every kind of source, compared with the source data."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import microdb
from conftest import add_discovered, make_workspace
from fixtures.bank import BIG_CUSTOMER_ID, EMPTY_CUSTOMER_ID

TREE = {
    "customers": None,
    "addresses": "customers",
    "consents": "customers",
    "accounts": "customers",
    "cards": "accounts",
    "transactions": "accounts",
}
REFERENCES = {"countries", "merchants", "devices"}
KINDS = ["embedded", "duckdb", "postgresql", "mysql"]


@pytest.fixture(scope="module", params=KINDS)
def synced(request, tmp_path_factory, bank_tables):
    kind = request.param
    path = tmp_path_factory.mktemp(kind)
    if kind == "embedded":
        from microdb.init import init_workspace

        init_workspace(path, demo=True, customers=300, seed=3)
    elif kind == "duckdb":
        from fixtures.load import write_duckdb

        db = write_duckdb(bank_tables, path / "bank.duckdb")
        make_workspace(path, {"bank": f"duckdb://{db}"})
        add_discovered(path, "bank", "customers")
    elif kind == "postgresql":
        url, _ = request.getfixturevalue("pg_bank")
        make_workspace(path, {"bank": url})
        add_discovered(path, "bank", "customers")
    else:
        url, _ = request.getfixturevalue("mysql_bank")
        make_workspace(path, {"bank": url})
        add_discovered(path, "bank", "customers")
    ws = microdb.open(path)
    result = ws.sync("customer")
    yield kind, ws, result
    ws.close()


def _all_rows(bank_tables) -> dict[str, pa.Table]:
    return {name: t for group in bank_tables.values() for name, t in group.items()}


def expected_entity(bank_tables, key: int) -> dict[str, pa.Table]:
    t = _all_rows(bank_tables)
    own = lambda name: t[name].filter(pc.equal(t[name]["customer_id"], key))  # noqa: E731
    accounts = own("accounts")
    ids = accounts["account_id"]
    return {
        "customers": own("customers"),
        "addresses": own("addresses"),
        "consents": own("consents"),
        "accounts": accounts,
        "cards": t["cards"].filter(pc.is_in(t["cards"]["account_id"], ids)),
        "transactions": t["transactions"].filter(pc.is_in(t["transactions"]["account_id"], ids)),
    }


def _rows(table: pa.Table) -> list[dict]:
    pk = table.column_names[0]
    return table.sort_by(pk).to_pylist()


def test_discovery_finds_the_tree(synced):
    _, ws, _ = synced
    et = ws.entity_type("customer")
    assert {t.name: t.parent for t in et.tables} == TREE
    assert et.tables[0].name == "customers"
    assert {r.name for r in et.references} == REFERENCES
    assert et.table("cards").columns == ("account_id",)


def test_every_entity_is_synced(synced, bank_tables):
    _, ws, result = synced
    customers = _all_rows(bank_tables)["customers"].num_rows
    assert result.entities == customers
    assert ws.store.count("customer") == customers
    assert result.rows["transactions"] == _all_rows(bank_tables)["transactions"].num_rows


@pytest.mark.parametrize("key", [BIG_CUSTOMER_ID, EMPTY_CUSTOMER_ID, 3, 57, 150, 299])
def test_entity_holds_exactly_its_source_rows(synced, bank_tables, key):
    _, ws, _ = synced
    tables = ws.entity(f"customer/{key}").tables()
    expected = expected_entity(bank_tables, key)
    for name, exp in expected.items():
        got = tables[name]
        assert got.column_names == exp.column_names, name
        assert _rows(got) == _rows(exp), f"{name} of customer/{key}"
    if key == BIG_CUSTOMER_ID:
        assert tables["transactions"].num_rows >= 3000
    if key == EMPTY_CUSTOMER_ID:
        assert tables["accounts"].num_rows == 0 and tables["transactions"].num_rows == 0


def test_reference_tables_are_stored_once(synced, bank_tables):
    _, ws, result = synced
    everything = _all_rows(bank_tables)
    for name in REFERENCES:
        assert result.references[name] == everything[name].num_rows
    refs = ws.store.references("customer")
    assert set(refs) == REFERENCES
    sealed = ws.store.get("customer", "3")
    assert set(sealed.tables) == set(TREE)  # no reference table copied into the entity
    # but the micro-database shows them for joins
    assert REFERENCES <= set(ws.entity("customer/3").tables())


def test_sql_on_an_entity_joins_across_sources(synced, bank_tables):
    _, ws, _ = synced
    exp = expected_entity(bank_tables, BIG_CUSTOMER_ID)["transactions"]
    got = ws.entity(f"customer/{BIG_CUSTOMER_ID}").sql(
        "SELECT count(*) AS n, sum(amount) AS total, count(DISTINCT m.name) AS merchants "
        "FROM transactions t LEFT JOIN merchants m USING (merchant_id)"
    ).to_pylist()[0]
    assert got["n"] == exp.num_rows
    assert got["total"] == pc.sum(exp["amount"]).as_py()
    assert got["merchants"] > 1


def test_source_queries_do_not_grow_with_entities(synced):
    kind, ws, result = synced
    et = ws.entity_type("customer")
    # one read per table and per reference table (catalogs are cached after the first sync)
    again = ws.sync("customer")
    assert again.source_queries == len(et.tables) + len(et.references)
    one = ws.sync("customer", keys=["3"])
    many = ws.sync("customer", keys=[str(k) for k in range(3, 203)])
    assert many.entities == 200
    assert many.source_queries == one.source_queries


def test_direct_source_query_agrees(synced):
    kind, ws, _ = synced
    if kind == "postgresql":
        import psycopg

        from conftest import PG_DSN

        schema = ws.config.sources["bank"].url.split("schema=")[1]
        with psycopg.connect(PG_DSN) as con:
            rows = con.execute(
                f'SELECT t.transaction_id FROM "{schema}".transactions t JOIN "{schema}".accounts a '
                f"USING (account_id) WHERE a.customer_id = %s ORDER BY 1",
                (BIG_CUSTOMER_ID,),
            ).fetchall()
    elif kind == "mysql":
        import pymysql

        db = ws.config.sources["bank"].url.rsplit("/", 1)[1]
        con = pymysql.connect(host="127.0.0.1", user="root", database=db)
        with con.cursor() as cur:
            cur.execute(
                "SELECT t.transaction_id FROM transactions t JOIN accounts a USING (account_id) "
                "WHERE a.customer_id = %s ORDER BY 1",
                (BIG_CUSTOMER_ID,),
            )
            rows = cur.fetchall()
        con.close()
    else:
        src = ws.sources["payments" if kind == "embedded" else "bank"]
        acc_src = ws.sources["core" if kind == "embedded" else "bank"]
        acc = acc_src.read("accounts", columns=["account_id", "customer_id"])
        ids = acc.filter(pc.equal(acc["customer_id"], BIG_CUSTOMER_ID))["account_id"]
        tx = src.read("transactions", columns=["transaction_id", "account_id"])
        rows = [(v,) for v in sorted(tx.filter(pc.is_in(tx["account_id"], ids))["transaction_id"].to_pylist())]
    got = ws.entity(f"customer/{BIG_CUSTOMER_ID}").sql("SELECT transaction_id FROM transactions ORDER BY 1").to_pylist()
    assert [r["transaction_id"] for r in got] == [r[0] for r in rows]
