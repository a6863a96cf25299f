"""On-demand projection (always / ttl / never) and incremental sync by watermark."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime

import pytest

import microdb
from microdb.errors import EntityNotFound


@pytest.fixture
def fresh(tmp_path):
    from microdb.init import init_workspace

    init_workspace(tmp_path, demo=True, customers=120, seed=5)
    return tmp_path


def _set(path, **values) -> None:
    cfg = path / "microdb.toml"
    text = cfg.read_text()
    for k, v in values.items():
        text = text.replace({"on_demand": 'on_demand = "ttl"', "ttl": 'ttl = "1h"'}[k], f'{k} = "{v}"')
    cfg.write_text(text)


def test_first_access_projects_one_entity(fresh):
    ws = microdb.open(fresh)
    try:
        assert ws.store.count("customer") == 0
        et = ws.entity_type("customer")
        for name in {t.source for t in et.tables}:
            ws.sources.catalog(name)
        q0 = ws.sources.queries()
        n = ws.entity("customer/5").sql("SELECT count(*) AS n FROM customers").to_pylist()[0]["n"]
        assert n == 1
        assert ws.store.count("customer") == 1
        # one read per table and per reference table: no scan of other entities
        assert ws.sources.queries() - q0 == len(et.tables) + len(et.references)
        with pytest.raises(EntityNotFound, match="not found"):
            ws.entity("customer/100000").tables()
    finally:
        ws.close()


def test_never_mode_needs_a_sync(fresh):
    _set(fresh, on_demand="never")
    ws = microdb.open(fresh)
    try:
        with pytest.raises(EntityNotFound, match="on_demand = never"):
            ws.entity("customer/5").tables()
        ws.sync("customer", keys=["5"])
        assert ws.entity("customer/5").tables()["customers"].num_rows == 1
    finally:
        ws.close()


def test_ttl_and_always(fresh):
    _set(fresh, ttl="1s")
    ws = microdb.open(fresh)
    try:
        ws.entity("customer/5").tables()
        v1 = ws.store.info("customer", "5").version
        ws.entity("customer/5").tables()
        assert ws.store.info("customer", "5").version == v1  # fresh: no re-projection
        time.sleep(1.2)
        ws.entity("customer/5").tables()
        assert ws.store.info("customer", "5").version > v1  # expired: projected again
    finally:
        ws.close()
    _set(fresh, on_demand="always")
    ws = microdb.open(fresh)
    try:
        v2 = ws.store.info("customer", "5").version
        ws.entity("customer/5").sql("SELECT 1")
        assert ws.store.info("customer", "5").version > v2
    finally:
        ws.close()


def test_changed_since_reprojects_only_changed_entities(fresh):
    ws = microdb.open(fresh)
    try:
        ws.sync("customer")
        before = {k: ws.store.info("customer", k).version for k in ws.store.keys("customer")}
        con = sqlite3.connect(fresh / "data" / "core.sqlite")
        acc = con.execute("SELECT account_id FROM accounts WHERE customer_id = 9 LIMIT 1").fetchone()[0]
        con.execute("UPDATE accounts SET status = 'frozen', updated_at = '2031-01-01 00:00:00.000000' WHERE account_id = ?", (acc,))
        con.commit()
        con.close()
        con = sqlite3.connect(fresh / "data" / "crm.sqlite")
        con.execute("UPDATE customers SET updated_at = '2031-02-01 00:00:00.000000' WHERE customer_id = 12")
        con.commit()
        con.close()
        res = ws.sync("customer", changed_since=datetime(2030, 1, 1))
        assert res.entities == 2
        changed = {k for k, v in before.items() if ws.store.info("customer", k).version != v}
        assert changed == {"9", "12"}
        status = ws.entity("customer/9").sql(f"SELECT status FROM accounts WHERE account_id = {acc}").to_pylist()
        assert status == [{"status": "frozen"}]
    finally:
        ws.close()


def test_sync_emits_openlineage_events(fresh):
    import json

    ws = microdb.open(fresh)
    try:
        ws.sync("customer", keys=["5"])
    finally:
        ws.close()
    events = [json.loads(line) for line in (fresh / ".microdb" / "lineage.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    done = events[-1]
    assert done["job"]["name"] == "sync.customer"
    assert {d["name"] for d in done["inputs"]} >= {"customers", "accounts", "transactions", "merchants"}
    assert done["outputs"][0]["name"] == "store/customer"
    assert done["run"]["facets"]["microdb"]["parameters"]["scope"] == "keys"
