"""Discovery and sync on a schema of another shape: four levels, composite keys,
self-references and a reference of a reference, in SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3

import pytest

import microdb
from conftest import add_discovered, make_workspace, require_postgres, unique_name
from microdb.errors import SchemaError

DDL = """
CREATE TABLE categories (category_id INTEGER PRIMARY KEY, label TEXT);
CREATE TABLE regions (region_code VARCHAR(8) PRIMARY KEY, name TEXT);
CREATE TABLE products (sku VARCHAR(16) PRIMARY KEY, label TEXT, category_id INTEGER REFERENCES categories(category_id));
CREATE TABLE shops (
    region_code VARCHAR(8) NOT NULL REFERENCES regions(region_code), shop_no INTEGER NOT NULL, name TEXT,
    parent_region VARCHAR(8), parent_shop INTEGER,
    PRIMARY KEY (region_code, shop_no),
    FOREIGN KEY (parent_region, parent_shop) REFERENCES shops(region_code, shop_no));
CREATE TABLE orders (
    region_code VARCHAR(8) NOT NULL, shop_no INTEGER NOT NULL, order_no INTEGER NOT NULL, placed DATE,
    PRIMARY KEY (region_code, shop_no, order_no),
    FOREIGN KEY (region_code, shop_no) REFERENCES shops(region_code, shop_no));
CREATE TABLE order_lines (
    region_code VARCHAR(8) NOT NULL, shop_no INTEGER NOT NULL, order_no INTEGER NOT NULL, line_no INTEGER NOT NULL,
    sku VARCHAR(16) REFERENCES products(sku), qty INTEGER,
    PRIMARY KEY (region_code, shop_no, order_no, line_no),
    FOREIGN KEY (region_code, shop_no, order_no) REFERENCES orders(region_code, shop_no, order_no));
CREATE TABLE line_events (
    event_id INTEGER PRIMARY KEY, region_code VARCHAR(8), shop_no INTEGER, order_no INTEGER, line_no INTEGER,
    kind TEXT, prev_event INTEGER REFERENCES line_events(event_id),
    FOREIGN KEY (region_code, shop_no, order_no, line_no) REFERENCES order_lines(region_code, shop_no, order_no, line_no));
CREATE TABLE visitors (name TEXT, seen DATE);
"""


def rows() -> dict[str, list[tuple]]:
    data: dict[str, list[tuple]] = {
        "categories": [(1, "food"), (2, "tools")],
        "regions": [("EU", "Europe"), ("US", "United States"), ("APAC", "Asia Pacific")],
        "products": [(f"SKU{i}", f"product {i}", 1 + i % 2) for i in range(8)],
        "shops": [], "orders": [], "order_lines": [], "line_events": [], "visitors": [("ann", "2024-01-01")],
    }
    event = 0
    for r, region in enumerate(["EU", "US", "APAC"]):
        for shop in range(1, 4):
            parent = (region, 1) if shop > 1 else (None, None)
            data["shops"].append((region, shop, f"{region}-{shop}", *parent))
            for order in range((r + shop) % 4):  # some shops have no orders
                data["orders"].append((region, shop, order, f"2024-0{1 + order}-1{shop}"))
                for line in range(1 + order):
                    data["order_lines"].append((region, shop, order, line, f"SKU{(order + line) % 8}", line + 1))
                    prev = None
                    for kind in ("created", "shipped")[: 1 + line % 2]:
                        event += 1
                        data["line_events"].append((event, region, shop, order, line, kind, prev))
                        prev = event
    return data


def _fill(execute, executemany, placeholder: str) -> None:
    for stmt in DDL.split(";"):
        if stmt.strip():
            execute(stmt)
    order = ["categories", "regions", "products", "shops", "orders", "order_lines", "line_events", "visitors"]
    data = rows()
    for table in order:
        vals = data[table]
        marks = ", ".join([placeholder] * len(vals[0]))
        executemany(f"INSERT INTO {table} VALUES ({marks})", vals)


@pytest.fixture(params=["sqlite", "postgresql"])
def shop_ws(request, tmp_path):
    if request.param == "sqlite":
        db = tmp_path / "shops.sqlite"
        con = sqlite3.connect(db)
        _fill(con.execute, con.executemany, "?")
        con.commit()
        con.close()
        url = f"sqlite://{db}"
        cleanup = None
    else:
        import psycopg

        dsn = require_postgres()
        schema = unique_name()
        con = psycopg.connect(dsn, autocommit=True)
        con.execute(f'CREATE SCHEMA "{schema}"')
        con.execute(f'SET search_path TO "{schema}"')
        cur = con.cursor()
        _fill(cur.execute, cur.executemany, "%s")
        url = f"{dsn}?schema={schema}"

        def cleanup() -> None:
            con.execute(f'DROP SCHEMA "{schema}" CASCADE')
            con.close()

    make_workspace(tmp_path / "ws", {"shops": url})
    yield tmp_path / "ws"
    if cleanup:
        cleanup()


def test_four_level_composite_tree(shop_ws):
    name = add_discovered(shop_ws, "shops", "shops")
    assert name == "shop"
    ws = microdb.open(shop_ws)
    try:
        et = ws.entity_type("shop")
        assert {t.name: t.parent for t in et.tables} == {
            "shops": None, "orders": "shops", "order_lines": "orders", "line_events": "order_lines"
        }
        assert max(t.depth for t in et.tables) == 3
        assert et.table("order_lines").columns == ("region_code", "shop_no", "order_no")
        assert {r.name for r in et.references} == {"regions", "products", "categories"}
        res = ws.sync("shop")
        assert res.entities == 9
        data = rows()
        for region, shop in [("EU", 1), ("US", 3), ("APAC", 2), ("EU", 3)]:
            ent = ws.entity(f"shop/{region}/{shop}")
            tables = ent.tables()
            for table in ["orders", "order_lines", "line_events"]:
                idx = 1 if table == "line_events" else 0
                exp = sorted(r for r in data[table] if r[idx] == region and r[idx + 1] == shop)
                got = sorted(tuple(str(v) if hasattr(v, "isoformat") else v for v in row.values())
                             for row in tables[table].to_pylist())
                assert got == exp, f"{table} of shop/{region}/{shop}"
            n = ent.sql("SELECT count(*) AS n FROM line_events e JOIN order_lines l USING (region_code, shop_no, order_no, line_no) "
                        "JOIN products p USING (sku) JOIN categories c USING (category_id)").to_pylist()[0]["n"]
            assert n == sum(1 for r in data["line_events"] if r[1] == region and r[2] == shop)
    finally:
        ws.close()


def test_root_without_primary_key_is_refused(shop_ws):
    with pytest.raises(SchemaError, match="visitors has no primary key"):
        add_discovered(shop_ws, "shops", "visitors")
    name = add_discovered(shop_ws, "shops", "visitors", key=["name"])
    assert name == "visitor"
