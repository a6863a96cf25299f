"""The command line: the happy path and every kind of bad input, each a clear message
and a non-zero exit."""

from __future__ import annotations

import json
import sys

import duckdb
import pytest

from conftest import make_workspace
from fixtures.bank import BIG_CUSTOMER_ID


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


@pytest.fixture(scope="module")
def ws_path(demo_ws):
    return str(demo_ws.root)


def test_get_query_and_formats(capsys, monkeypatch, ws_path, tmp_path):
    code, out, err = run(capsys, monkeypatch, "-w", ws_path, "get", "customer/42")
    assert code == 0, err
    assert "customer/42 · customers (1 rows)" in out and "transactions" in out
    code, out, _ = run(capsys, monkeypatch, "-w", ws_path, "query", "customer/42", "SELECT count(*) AS n FROM accounts", "-f", "json")
    assert code == 0
    assert json.loads(out)[0]["n"] >= 0
    code, out, _ = run(capsys, monkeypatch, "-w", ws_path, "query", "customer/42", "SELECT customer_id FROM customers", "-f", "csv")
    assert out.splitlines() == ['"customer_id"', "42"]
    pq = tmp_path / "out.parquet"
    code, _, _ = run(capsys, monkeypatch, "-w", ws_path, "query", "customer/42", "SELECT * FROM transactions", "-f", "parquet", "-o", str(pq))
    assert code == 0 and pq.exists()


def test_fanout_adds_the_entity_key(capsys, monkeypatch, ws_path):
    code, out, err = run(capsys, monkeypatch, "-w", ws_path, "query", "customer", "SELECT count(*) AS n FROM transactions",
                         "--keys", f"{BIG_CUSTOMER_ID},2,3", "-f", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["entity_key"] for r in rows] == [str(BIG_CUSTOMER_ID), "2", "3"]
    assert rows[0]["n"] >= 3000 and rows[1]["n"] == 0
    code, out, err = run(capsys, monkeypatch, "-w", ws_path, "query", "customer", "SELECT segment FROM customers", "--all", "-f", "json")
    assert code == 0, err
    assert len(json.loads(out)) == 300


def test_export_writes_a_real_duckdb_file(capsys, monkeypatch, ws_path, tmp_path):
    target = tmp_path / "c42.duckdb"
    code, out, err = run(capsys, monkeypatch, "-w", ws_path, "export", "customer/42", "-o", str(target))
    assert code == 0, err
    con = duckdb.connect(str(target), read_only=True)
    names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert {"customers", "accounts", "transactions", "merchants"} <= names
    assert con.execute("SELECT customer_id FROM customers").fetchall() == [(42,)]
    con.close()
    code, _, err = run(capsys, monkeypatch, "-w", ws_path, "export", "customer/42", "-o", str(target))
    assert code != 0 and "exists" in err


@pytest.mark.parametrize(
    "args, message, exit_code",
    [
        (["get", "nosuchtype/1"], "unknown entity type 'nosuchtype'", 2),
        (["get", "customer/99999999"], "customer/99999999 not found in crm.customers", 4),
        (["get", "customer/abc"], "not a valid key", 4),
        (["get", "customer"], "not an entity address", 4),
        (["query", "customer/42", "SELEC * FROM customers"], "syntax error", 6),
        (["query", "customer/42", "DELETE FROM customers"], "refused", 6),
        (["query", "customer/42", "INSERT INTO customers SELECT * FROM customers"], "refused", 6),
        (["query", "customer/42", "SELECT * FROM nosuchtable"], "nosuchtable", 6),
        (["discover", "--source", "nosuch", "--root", "customers"], "unknown source 'nosuch'", 2),
        (["discover", "--source", "crm", "--root", "nosuch"], "nosuch", 2),
        (["sync", "customer"], "choose exactly one of", 1),
    ],
)
def test_bad_input_gives_a_clear_error(capsys, monkeypatch, ws_path, args, message, exit_code):
    code, out, err = run(capsys, monkeypatch, "-w", ws_path, *args)
    assert code == exit_code, (out, err)
    assert message in err
    assert "Traceback" not in err


def test_malformed_and_invalid_config(capsys, monkeypatch, tmp_path):
    bad = tmp_path / "bad"
    make_workspace(bad, {"crm": "sqlite:///nowhere.sqlite"})
    (bad / "microdb.toml").write_text("version = 1\n[sources.crm\nurl = 'x'\n")
    code, _, err = run(capsys, monkeypatch, "-w", str(bad), "sync", "customer", "--all")
    assert code == 2 and "malformed TOML" in err and "line 2" in err
    (bad / "microdb.toml").write_text(
        "version = 1\n[sources.crm]\nurl = 'sqlite:///x.sqlite'\n[entities.c]\nroot = 'a'\nttl = 'soon'\n"
        "[entities.c.tables.a]\nsource = 'nope'\ntable = 'a'\n[entities.c.tables.b]\nsource = 'crm'\ntable = 'b'\n"
    )
    code, _, err = run(capsys, monkeypatch, "-w", str(bad), "sync", "c", "--all")
    assert code == 2
    assert "entities.c.ttl" in err and "not a duration" in err  # all problems in one message
    (bad / "microdb.toml").write_text(
        "version = 1\n[sources.crm]\nurl = 'sqlite:///x.sqlite'\n[entities.c]\nroot = 'a'\n"
        "[entities.c.tables.a]\nsource = 'nope'\ntable = 'a'\n[entities.c.tables.b]\nsource = 'crm'\ntable = 'b'\n"
    )
    code, _, err = run(capsys, monkeypatch, "-w", str(bad), "sync", "c", "--all")
    assert code == 2
    assert "entities.c.tables.a.source: unknown source 'nope'" in err
    assert "entities.c.tables.b.parent: missing" in err


def test_unreachable_database(capsys, monkeypatch, tmp_path):
    path = make_workspace(tmp_path / "ws", {"bank": "postgresql://postgres@127.0.0.1:1/test"})
    code, _, err = run(capsys, monkeypatch, "-w", str(path), "discover", "--source", "bank", "--root", "customers")
    assert code == 3
    assert "unreachable" in err and "127.0.0.1:1" in err


def test_not_a_workspace(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "-w", str(tmp_path), "get", "customer/1")
    assert code == 2 and "not a microdb workspace" in err


def test_pii_scan_and_kcheck(capsys, monkeypatch, ws_path, tmp_path):
    draft = tmp_path / "draft.toml"
    code, out, err = run(capsys, monkeypatch, "-w", ws_path, "pii", "scan", "--source", "crm", "--source", "core",
                         "--policy-draft", "draft", "-o", str(draft))
    assert code == 0, err
    for col, tag in [("customers.national_id", "national_id"), ("customers.email", "email"), ("accounts.iban", "iban"),
                     ("cards.pan", "pan")]:
        assert any(col in line and tag in line for line in out.splitlines()), (col, out)
    assert "customers.segment" not in out  # not personal data
    import tomllib

    from masking.policy import compile_policy

    doc = tomllib.loads(draft.read_text())
    cols = doc["policies"]["draft"]["columns"]
    assert cols["customers.segment"] == "keep" and "customers.national_id" in cols
    compile_policy({"r": {"policy": "draft"}}, doc["policies"])  # the draft is a valid policy
    qi = "customers.date_of_birth,customers.segment,customers.country_code"
    _, raw_out, _ = run(capsys, monkeypatch, "-w", ws_path, "pii", "kcheck", "customer", "--columns", qi, "--role", "admin")
    _, masked_out, err = run(capsys, monkeypatch, "-w", ws_path, "pii", "kcheck", "customer", "--columns", qi, "--role", "analyst")
    classes = lambda text: int(text.split(" classes")[0].rsplit(" ", 1)[1])  # noqa: E731
    assert classes(masked_out) < classes(raw_out), (raw_out, masked_out, err)
