"""Synthetic bundles from a workspace: fit on the masked store, sample into sealed bundles,
query them, verify, export, retire; lineage and audit of every step."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import microdb
from microdb import synthesis
from microdb.errors import AccessDenied, ConfigError, MicrodbError, SealError
from microdb.init import init_workspace
from synth.integrity import check_integrity

from conftest import set_sections
from lineage_check import assert_valid

CUSTOMERS = 300
CONSTRAINTS = [
    "transactions.ts >= accounts.opened_at",
    "amount > 0",
    "customers.segment in ('retail', 'premium', 'sme', 'private')",
]
SYNTH = {
    "role": "analyst",
    "holdout": 0.2,
    "retention_days": 30,
    "constraints": {"customer": CONSTRAINTS},
    "params": {"neural": {"epochs": 2, "batch_size": 64}},
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthws")
    init_workspace(path, demo=True, customers=CUSTOMERS, seed=3)
    set_sections(path, synth=SYNTH, charter={})  # no charter: bundles are released unevaluated
    w = microdb.open(path)
    w.sync("customer")
    yield w
    w.close()


@pytest.fixture(scope="module")
def models(ws):
    return {g: ws.synth_fit("customer", g, seed=1) for g in ("rules", "copula", "neural")}


def _cli(ws, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microdb.cli", "-w", str(ws.root), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("generator", ["rules", "copula", "neural"])
def test_bundle_integrity_constraints_and_reproducibility(ws, models, generator):
    a = ws.synth_sample(models[generator], 60, seed=5)
    b = ws.synth_sample(models[generator], 60, seed=5)
    c = ws.synth_sample(models[generator], 60, seed=6)
    assert a.manifest["integrity"]["ri_percent"] == 100.0
    tables = a.tables()
    schema = a.schema
    refs = {n: t for n, t in tables.items() if not schema.is_tree_table(n)}
    report = check_integrity(schema, {t.name: tables[t.name] for t in schema.tables}, refs)
    assert report.ok and report.ri_percent == 100.0, report.violations
    assert tables["customers"].num_rows == 60
    # constraints hold on every row
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(name, table)
    late = con.sql("SELECT count(*) FROM transactions t JOIN accounts a USING (account_id) WHERE t.ts < a.opened_at").fetchall()[0][0]
    assert late == 0
    assert con.sql("SELECT count(*) FROM transactions WHERE amount <= 0").fetchall()[0][0] == 0
    assert set(tables["customers"].column("segment").to_pylist()) <= {"retail", "premium", "sme", "private"}
    # same seed -> identical tables; another seed -> different ones
    digest = lambda m: {n: i["parquet_sha256"] for n, i in m["tables"].items()}  # noqa: E731
    assert digest(a.manifest) == digest(b.manifest)
    assert digest(a.manifest) != digest(c.manifest)
    assert a.id != b.id and a.manifest["files"] != b.manifest["files"]  # sealed with different keys


def test_fraud_condition_share(ws, models):
    bundle = ws.synth_sample(models["copula"], 200, seed=11, conditions=["transactions.is_fraud=1"], share=0.3)
    fraud = bundle.tables()["transactions"].column("is_fraud")
    share = pc.mean(pc.cast(fraud, pa.float64())).as_py()
    assert abs(share - 0.3) <= 0.02
    assert bundle.manifest["conditions"] == [{"table": "transactions", "column": "is_fraud", "value": 1, "share": 0.3}]


def test_models_never_see_raw_pii(ws, models):
    """What the analyst role masks is excluded from learning; no real value of such a
    column reaches a bundle."""
    training = json.loads((models["neural"] / "training.json").read_text())
    for col in ("customers.email", "customers.national_id", "cards.pan", "accounts.iban", "addresses.street"):
        assert col in training["excluded_columns"]
    raw = {}
    for key in ws.store.keys("customer"):
        rec = ws.store.get("customer", key)
        for col in ("email", "national_id", "phone"):
            raw.setdefault(col, set()).update(v for v in rec.tables["customers"].column(col).to_pylist() if v)
    model_bytes = b"".join(p.read_bytes() for p in models["neural"].iterdir())
    bundle = ws.synth_sample(models["neural"], 100, seed=2)
    customers = bundle.tables()["customers"]
    for col, values in raw.items():
        assert not (set(customers.column(col).to_pylist()) & values), col
        assert not any(v.encode() in model_bytes for v in list(values)[:200]), col


def test_query_bundle_cli_and_api(ws, models):
    bundle = ws.synth_sample(models["copula"], 20, seed=3)
    key = bundle.keys()[0]
    sql = "SELECT count(*) AS n, sum(amount) AS total FROM transactions"
    api = ws.bundle_entity(bundle.id, key).sql(sql)
    res = _cli(ws, "query", f"bundle:{bundle.directory}/{key}", sql, "--format", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [{k: (str(v) if k == "total" and v is not None else v) for k, v in r.items()} for r in api.to_pylist()]
    ent = bundle.entity(key)
    assert ent["customers"].num_rows == 1
    assert api.column("n")[0].as_py() == ent["transactions"].num_rows
    with pytest.raises(MicrodbError):
        ws.bundle_entity(bundle.id, key).sql("COPY transactions TO '/tmp/x.csv'")
    with pytest.raises(MicrodbError, match="no entity"):
        ws.bundle_entity(bundle.id, "no-such-key")


def test_verify_detects_tampering(ws, models):
    bundle = ws.synth_sample(models["rules"], 10, seed=1)
    assert synthesis.verify(ws, bundle.id) == []
    target = bundle.directory / "data" / "transactions.parquet.sealed"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    problems = synthesis.verify(ws, bundle.id)
    assert any("transactions.parquet.sealed" in p and "modified" in p for p in problems)
    with pytest.raises(SealError, match="fails authentication"):
        ws.bundle(bundle.id).tables()
    res = _cli(ws, "bundle", "verify", bundle.id)
    assert res.returncode != 0 and "modified" in res.stdout


def test_export_then_retire_leaves_no_plaintext(ws, models):
    bundle = ws.synth_sample(models["rules"], 25, seed=9)
    export_dir = ws.root / "exports" / "plain"
    res = _cli(ws, "bundle", "export", bundle.id, "-o", str(export_dir))
    assert res.returncode == 0, res.stderr
    exported = duckdb.connect(str(export_dir / "bundle.duckdb"), read_only=True)
    assert exported.sql("SELECT count(*) FROM customers").fetchall()[0][0] == 25
    exported.close()
    emails = [e for e in bundle.tables()["customers"].column("email").to_pylist() if e]
    assert emails

    def plaintext_hits() -> list[str]:
        hits = []
        for path in ws.root.rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                hits += [f"{path}: {e}" for e in emails[:10] if e.encode() in blob]
        return hits

    assert plaintext_hits()  # the export is plain, so the scan can find the values
    res = _cli(ws, "bundle", "retire", bundle.id, "--reason", "test done")
    assert res.returncode == 0, res.stderr
    assert plaintext_hits() == []
    manifest = json.loads((bundle.directory / "manifest.json").read_text())
    assert manifest["status"] == "retired" and manifest["tombstone"]["reason"] == "test done"
    assert ws.bundles.key(bundle.id) is None
    with pytest.raises(AccessDenied, match="retired"):
        ws.bundle(bundle.id)
    actions = set(ws.audit.query().filter(pc.equal(ws.audit.query()["bundle"], bundle.id))["action"].to_pylist())
    assert {"synth.sample", "bundle.export", "bundle.retire"} <= actions
    lineage = (ws.root / ws.config.lineage.file).read_text()
    assert bundle.id in lineage


def test_lineage_and_audit_of_fit_and_sample(ws, models):
    bundle = ws.synth_sample(models["copula"], 5, seed=4)
    events = [json.loads(line) for line in (ws.root / ws.config.lineage.file).read_text().splitlines()]
    runs = {e["run"]["runId"]: e for e in events if e["eventType"] == "COMPLETE"}
    sample_run = runs[bundle.manifest["lineage"]["sample_run"]]
    assert sample_run["job"]["name"] == "synth.sample.customer"
    facet = sample_run["run"]["facets"]["microdb"]
    assert facet["bundle"] == bundle.id and facet["seed"] == 4 and facet["policy_hash"]
    outputs = {o["name"]: o for o in sample_run["outputs"]}
    assert f"bundles/{bundle.id}" in outputs
    fields = [f["name"] for f in outputs[f"bundles/{bundle.id}/transactions"]["facets"]["schema"]["fields"]]
    assert "is_fraud" in fields and "amount" in fields
    fit_run = runs[bundle.manifest["lineage"]["fit_run"]]
    assert fit_run["job"]["name"] == "synth.fit.customer"
    assert {i["name"] for i in fit_run["inputs"]} >= {"store/customer/customers", "store/customer/transactions"}
    for event in events:  # every event of the workspace validates with the client's own models
        assert_valid(event)
    fits = ws.audit.query(action="synth.fit", outcome="ok")
    assert fits.num_rows and set(fits["role"].to_pylist()) == {"analyst"}


def test_dp_epsilon_reaches_the_manifest(ws):
    model = ws.synth_fit("customer", "neural", {"dp_epsilon": 3.0, "epochs": 1, "max_children": 8}, seed=2)
    bundle = ws.synth_sample(model, 10, seed=1)
    privacy = bundle.manifest["privacy"]
    assert privacy["epsilon"] > 0 and privacy["epsilon"] <= 3.0 + 1e-6 and privacy["delta"] == 1e-5


def test_bad_input_is_refused_clearly(ws, models):
    with pytest.raises(MicrodbError, match="nope"):
        ws.synth_sample(models["copula"], 5, conditions=["transactions.nope=1"])
    with pytest.raises(MicrodbError, match="condition"):
        ws.synth_sample(models["copula"], 5, conditions=["transactions is fraud"])
    with pytest.raises(MicrodbError):
        ws.synth_sample(models["copula"], 5, conditions=["customers.segment='martian'"])
    with pytest.raises(MicrodbError, match="amount"):
        ws.synth_fit("customer", "copula", constraints=["amount > 1000000"], seed=1)
    with pytest.raises(MicrodbError, match="not in the store"):
        ws.synth_fit("customer", "copula", sample_from=["no-such-customer"])
    with pytest.raises(ConfigError, match="unknown parameters"):
        ws.synth_fit("customer", "copula", {"epochz": 3})
    with pytest.raises(ConfigError, match="not empty"):
        ws.synth_sample(models["rules"], 5, out=models["rules"])


def test_gc_retires_old_bundles(ws, models):
    bundle = ws.synth_sample(models["rules"], 5, seed=12)
    assert bundle.id not in synthesis.gc(ws)
    retired = synthesis.gc(ws, now=time.time() + 31 * 86400)
    assert bundle.id in retired
    assert ws.bundles.find(bundle.id).status == "retired"
    assert not any(Path(bundle.directory, "data").glob("*"))
