"""The Python API a user sees: open, entity, sql, pl, query, export."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

import microdb


def test_public_api(demo_ws, tmp_path, monkeypatch):
    assert set(microdb.__all__) >= {"open", "Workspace", "Entity", "MicrodbError", "QueryRefused"}
    monkeypatch.setenv("MICRODB_WORKSPACE", str(demo_ws.root))
    ws = microdb.open()  # found through the environment
    try:
        ent = ws.entity("customer/42")
        assert ent.address == "customer/42" and ent.role == "admin"
        table = ent.sql("SELECT count(*) AS n FROM accounts")
        assert isinstance(table, pa.Table) and table.column_names == ["n"]
        frame = ent.pl("SELECT account_id, iban FROM accounts ORDER BY account_id")
        assert isinstance(frame, pl.DataFrame) and frame.columns == ["account_id", "iban"]
        masked = ws.entity("customer/42", role="analyst").pl("SELECT iban FROM accounts ORDER BY 1")
        assert masked["iban"].to_list() != sorted(frame["iban"].to_list())
        fan = ws.query("customer", "SELECT count(*) AS n FROM cards", keys=["1", "2"])
        assert fan.column_names == ["entity_key", "n"] and fan.num_rows == 2
        path = ent.export(tmp_path / "c42.duckdb")
        assert path.stat().st_size > 0
        with pytest.raises(microdb.QueryRefused):
            ent.sql("COPY accounts TO 'x.csv'")
    finally:
        ws.close()
