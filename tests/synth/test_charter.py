"""The charter gate end to end on a workspace: the fraud case (fit, sample with fraud
over-represented, TSTR on the real holdout, report, decision), a rejected bundle that
cannot be used until an override is recorded, and config errors."""

from __future__ import annotations

import json
import re

import pytest

import microdb
from microdb import synthesis
from microdb.config import parse_config
from microdb.errors import AccessDenied, ConfigError
from microdb.init import init_workspace

from conftest import set_sections

CHARTER = {
    "purpose": "fraud model training",
    "audience": "data science",
    "approver": "dpo@example.com",
    "target": "transactions.is_fraud",
    "protected": ["customers.segment"],
    "quasi_identifiers": ["customers.segment", "addresses.city"],
    "sensitive": "customers.segment",
    "thresholds": {
        "integrity.ri_percent": ">= 100",
        "privacy.exact_copy_rate": "<= 0.05",
        "utility.tstr_auc": ">= 0.0",
    },
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    path = tmp_path_factory.mktemp("charterws")
    init_workspace(path, demo=True, customers=400, seed=5)
    set_sections(path, synth={"role": "analyst"}, charter=CHARTER)
    w = microdb.open(path)
    w.sync("customer")
    yield w
    w.close()


def test_fraud_case_end_to_end(ws):
    model = ws.synth_fit("customer", "copula", seed=3)
    bundle = ws.synth_sample(model, 300, seed=4, conditions=["transactions.is_fraud=1"], share=0.3)
    m = bundle.manifest
    assert m["status"] == "released", m["charter"]
    assert m["charter"]["purpose"] == "fraud model training" and m["charter"]["approver"] == "dpo@example.com"
    report = json.loads((bundle.directory / "report.json").read_text())
    metrics = report["metrics"]
    assert 0.0 <= metrics["utility.tstr_auc"] <= 1.0 and 0.0 <= metrics["utility.trtr_auc"] <= 1.0
    for name in ("fidelity.overall", "privacy.dcr_share", "privacy.mia_auc", "fairness.representation_gap"):
        assert metrics.get(name) is not None, (name, report.get("skipped", {}).get(name))
    html = (bundle.directory / "report.html").read_text()
    for section in ("Fidelity", "Utility", "Privacy", "Fairness"):
        assert re.search(section, html, re.I), section
    assert synthesis.verify(ws, bundle.id) == []  # the reports are listed in the manifest
    decisions = ws.audit.query(action="charter.decision")
    assert bundle.id in decisions["bundle"].to_pylist()


def test_rejected_bundle_needs_an_override(ws, tmp_path):
    strict = ws.config.model_copy(update={"charter": ws.config.charter.model_copy(
        update={"thresholds": {"fidelity.overall": ">= 0.999"}})})
    ws2 = microdb.Workspace(ws.root, strict)
    try:
        model = ws2.synth_fit("customer", "rules", seed=1)
        bundle = ws2.synth_sample(model, 30, seed=1)
        assert bundle.manifest["status"] == "rejected"
        assert bundle.manifest["charter"]["failed"] == ["fidelity.overall"]
        key = bundle.keys()[0]
        with pytest.raises(AccessDenied, match="rejected"):
            synthesis.export(ws2, bundle.id, tmp_path / "out")
        with pytest.raises(AccessDenied, match="rejected"):
            ws2.bundle_entity(bundle.id, key)
        with pytest.raises(ConfigError, match="reason"):
            synthesis.override(ws2, bundle.id, "  ")
        synthesis.override(ws2, bundle.id, "needed for a load test, approved by the DPO")
        assert ws2.bundle_entity(bundle.id, key).sql("SELECT count(*) AS n FROM customers").to_pylist() == [{"n": 1}]
        assert synthesis.export(ws2, bundle.id, tmp_path / "out")
        overrides = ws2.audit.query(action="charter.override")
        assert bundle.id in overrides["bundle"].to_pylist()
    finally:
        ws2.close()


def test_unknown_charter_metric_is_a_config_error():
    import tomllib

    text = 'version = 1\n[charter.thresholds]\n"fidelity.overal" = ">= 0.7"\n'
    with pytest.raises(ConfigError, match="fidelity.overal"):
        parse_config(tomllib.loads(text), "microdb.toml")
