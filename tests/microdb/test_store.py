"""The sealed store: encryption, key handling, tampering, forgetting, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

import microdb
from microdb.errors import KeyMaterialError, SealError
from microdb.keys import Keyring
from microdb.store import SealedItem, Store


def _store(tmp_path: Path, key: bytes = b"k" * 32) -> Store:
    return Store(tmp_path / "store.sqlite", Keyring(key))


def _item(store: Store, key: str, secret: str) -> SealedItem:
    t = pa.table({"id": [1, 2], "secret": [secret, secret + "-2"]})
    sid = store.register_schema(t.schema)
    return SealedItem(key, {"things": (sid, t.to_batches()[0])}, 2)


def test_round_trip_and_no_plaintext_on_disk(tmp_path):
    store = _store(tmp_path)
    store.put("thing", [_item(store, "1", "PLAINTEXT-SSN-123-45-6789")])
    rec = store.get("thing", "1")
    assert rec.tables["things"]["secret"].to_pylist() == ["PLAINTEXT-SSN-123-45-6789", "PLAINTEXT-SSN-123-45-6789-2"]
    store.close()
    for f in tmp_path.iterdir():
        assert b"PLAINTEXT-SSN" not in f.read_bytes(), f


def test_wrong_master_key_is_refused(tmp_path):
    _store(tmp_path).close()
    with pytest.raises(KeyMaterialError, match="does not match"):
        _store(tmp_path, b"x" * 32)


def test_tampered_blob_names_the_entity(tmp_path):
    store = _store(tmp_path)
    store.put("thing", [_item(store, "7", "a"), _item(store, "8", "b")])
    con = sqlite3.connect(tmp_path / "store.sqlite")
    blob = bytearray(con.execute("SELECT blob FROM records WHERE ekey='7'").fetchone()[0])
    blob[5] ^= 0x01
    con.execute("UPDATE records SET blob=? WHERE ekey='7'", (bytes(blob),))
    con.commit()
    with pytest.raises(SealError, match="thing/7"):
        store.get("thing", "7")
    # a blob moved to another entity fails too (the address is authenticated)
    good = con.execute("SELECT wrapped_key, nonce, blob FROM records WHERE ekey='8'").fetchone()
    con.execute("UPDATE records SET wrapped_key=?, nonce=?, blob=? WHERE ekey='7'", good)
    con.commit()
    con.close()
    with pytest.raises(SealError, match="thing/7"):
        store.get("thing", "7")
    assert store.get("thing", "8").tables["things"]["secret"][0].as_py() == "b"


def test_master_key_sources(tmp_path, monkeypatch):
    from microdb.keys import MASTER_KEY_ENV, generate_key_file, load_master_key

    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    with pytest.raises(KeyMaterialError, match="no master key"):
        load_master_key(tmp_path / "missing.key")
    kf = tmp_path / "k.key"
    generate_key_file(kf)
    assert oct(kf.stat().st_mode & 0o777) == "0o600"
    assert len(load_master_key(kf)) == 32
    kf.chmod(0o644)
    with pytest.raises(KeyMaterialError, match="readable by group or others"):
        load_master_key(kf)
    monkeypatch.setenv(MASTER_KEY_ENV, "ab" * 32)
    assert load_master_key(tmp_path / "missing.key") == bytes.fromhex("ab" * 32)
    monkeypatch.setenv(MASTER_KEY_ENV, "too-short")
    with pytest.raises(KeyMaterialError, match="32 bytes"):
        load_master_key(kf)


def test_forget_destroys_the_record(demo_ws):
    ws = demo_ws
    rec = ws.store._con().execute("SELECT blob FROM records WHERE etype='customer' AND ekey='11'").fetchone()[0]
    assert ws.entity("customer/11").tables()["customers"].num_rows == 1
    ws.forget("customer/11")
    assert ws.store.info("customer", "11") is None
    data = b"".join(p.read_bytes() for p in ws.store.path.parent.glob("store.sqlite*"))
    assert rec[:64] not in data  # secure_delete + WAL truncation: the ciphertext is gone too
    with pytest.raises(microdb.EntityNotFound):
        ws.forget("customer/11")
    ws.sync("customer", keys=["11"])  # the shared workspace gets it back for other tests


CRASHER = textwrap.dedent(
    """
    import sys, time, microdb
    ws = microdb.open(sys.argv[1])
    def progress(phase, done, total):
        if phase == "sealing entities" and done:
            print("BATCH", done, flush=True)
            time.sleep(0.3)
    ws.sync("customer", progress=progress)
    print("DONE", flush=True)
    """
)


def test_sync_killed_halfway_leaves_old_or_new(tmp_path):
    from microdb.init import init_workspace

    init_workspace(tmp_path, demo=True, customers=300, seed=3)
    cfg = tmp_path / "microdb.toml"
    cfg.write_text(cfg.read_text().replace("[workspace]", "[store]\nbatch_size = 20\n\n[workspace]", 1))
    ws = microdb.open(tmp_path)
    ws.sync("customer")
    old = {k: ws.store.info("customer", k).version for k in ws.store.keys("customer")}
    old_segment = {r["customer_id"]: r["segment"] for r in ws.query("customer", "SELECT customer_id, segment FROM customers").to_pylist()}
    ws.close()
    con = sqlite3.connect(tmp_path / "data" / "crm.sqlite")
    con.execute("UPDATE customers SET segment = segment || '-v2'")
    con.commit()
    con.close()
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("BATCH") and int(line.split()[1]) >= 100:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ws = microdb.open(tmp_path)
    try:
        new_versions = 0
        for key, version in old.items():
            info = ws.store.info("customer", key)
            seg = ws.entity(f"customer/{key}", None).tables()["customers"]["segment"][0].as_py()
            if info.version == version:
                assert seg == old_segment[int(key)]
            else:
                new_versions += 1
                assert seg == old_segment[int(key)] + "-v2"
        assert 0 < new_versions < len(old), "the kill should land halfway"
    finally:
        ws.close()
