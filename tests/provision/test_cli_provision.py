"""`microdb provision`, `microdb export` of many entities and `microdb mount`."""

from __future__ import annotations

import sqlite3
import sys

import duckdb
import pyarrow.parquet as pq
import pytest

from conftest import PG_DSN, require_postgres, unique_name


def run(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    from microdb.cli import main

    monkeypatch.setattr(sys, "argv", ["microdb", *args])
    monkeypatch.setenv("COLUMNS", "200")
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_provision_command(capsys, monkeypatch, demo_ws, tmp_path):
    w = str(demo_ws.root)
    target = f"sqlite:///{tmp_path}/t.sqlite"
    code, out, err = run(capsys, monkeypatch, "-w", w, "provision", "--target", target, "--type", "customer",
                         "--role", "analyst", "--where", "transactions.is_fraud")
    assert code == 0, err
    assert "provisioned" in out and "customers" in out
    con = sqlite3.connect(tmp_path / "t.sqlite")
    n = con.execute("SELECT count(*) FROM customers").fetchone()[0]
    assert n > 0 and con.execute("PRAGMA foreign_key_check").fetchall() == []
    con.close()
    code, _, err = run(capsys, monkeypatch, "-w", w, "provision", "--target", target, "--role", "analyst")
    assert code == 2 and "already has table(s)" in err
    code, out, err = run(capsys, monkeypatch, "-w", w, "provision", "--target", target, "--role", "analyst",
                         "--sample", "20", "--stratify", "customers.segment", "--truncate")
    assert code == 0, err
    con = sqlite3.connect(tmp_path / "t.sqlite")
    assert con.execute("SELECT count(*) FROM customers").fetchone()[0] == 20
    con.close()
    code, _, err = run(capsys, monkeypatch, "-w", w, "provision", "--target", target, "--upsert", "--truncate")
    assert code == 1 and "at most one" in err
    code, _, err = run(capsys, monkeypatch, "-w", w, "provision", "--target", "oracle://x/y")
    assert code == 2 and "unknown target" in err


def test_provision_command_postgres_schema(capsys, monkeypatch, demo_ws):
    import psycopg

    require_postgres()
    schema = unique_name("cli")
    try:
        code, out, err = run(capsys, monkeypatch, "-w", str(demo_ws.root), "provision", "--target", PG_DSN,
                             "--schema", schema, "--keys", "1,2,3", "--role", "tester")
        assert code == 0, err
        with psycopg.connect(PG_DSN) as con:
            assert con.execute(f'SELECT count(*) FROM "{schema}".customers').fetchone()[0] == 3
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_export_many_and_mount(capsys, monkeypatch, demo_ws, tmp_path):
    w = str(demo_ws.root)
    code, out, err = run(capsys, monkeypatch, "-w", w, "export", "customer", "--keys", "1,2,3", "--role", "analyst",
                         "-o", str(tmp_path / "three.duckdb"))
    assert code == 0, err
    con = duckdb.connect(str(tmp_path / "three.duckdb"))
    assert con.execute("SELECT count(*) FROM customers").fetchone()[0] == 3
    con.close()
    code, out, err = run(capsys, monkeypatch, "-w", w, "export", "customer", "--all", "-o", str(tmp_path / "pq"))
    assert code == 0, err
    assert pq.read_table(tmp_path / "pq" / "customers.parquet").num_rows == demo_ws.store.count("customer")
    code, _, err = run(capsys, monkeypatch, "-w", w, "export", "customer", "-o", str(tmp_path / "x.duckdb"))
    assert code == 1 and "for many" in err
    code, _, err = run(capsys, monkeypatch, "-w", w, "export", "customer/1", "--all", "-o", str(tmp_path / "x.duckdb"))
    assert code == 1
    code, out, err = run(capsys, monkeypatch, "-w", w, "mount", str(tmp_path / "mnt"), "--keys", "7,8", "--role", "tester")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "mnt").iterdir()) == ["7.duckdb", "8.duckdb"]
    con = duckdb.connect(str(tmp_path / "mnt" / "7.duckdb"))
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    con.close()
    assert {"customers", "transactions", "merchants"} <= tables


@pytest.mark.parametrize("args,message", [
    (("--where", "nosuch.col"), "not an entity table"),
    (("--stratify", "customers.segment"), "stratify needs a sample size"),
    (("--keys", "999999"), "not found"),
])
def test_provision_bad_selection(capsys, monkeypatch, demo_ws, tmp_path, args, message):
    code, _, err = run(capsys, monkeypatch, "-w", str(demo_ws.root), "provision", "--target",
                       f"sqlite:///{tmp_path}/b.sqlite", *args)
    assert code != 0 and message in err
