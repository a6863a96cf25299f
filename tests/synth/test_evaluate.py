"""Evaluation of synthetic bundles on constructed cases with known answers: a bundle that
copies training entities, an independent sample of the same distribution (the ideal
generator), independent noise, a subgroup deliberately served worse, shifted columns,
and a copula generator conditioned on fraud."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_generators import bank_data

from fixtures.bank import BIG_CUSTOMER_ID
from microdb.errors import ConfigError, SchemaError
from synth import Condition, get_generator
from synth.conditions import comparable, from_comparable
from synth.evaluate import DEFAULT_THRESHOLDS, METRICS, EvalSpec, drift, evaluate, judge, render_html
from synth.evaluate.drift import ks_noise
from synth.evaluate.fidelity import spearman, wasserstein
from synth.evaluate.frames import ancestor_index, compared_columns, parent_index
from synth.evaluate.html import SECTIONS
from synth.evaluate.learn import auc, f1
from synth.integrity import select_entities

ATTACKER = EvalSpec(quasi_identifiers=("customers.date_of_birth", "customers.country_code", "customers.created_at"),
                    sensitive="customers.segment")


def split(tables, schema, ids_mod: int):
    ids = tables[schema.root].column("customer_id").to_numpy()
    return select_entities(schema, tables, (ids % 2 == ids_mod) & (ids != BIG_CUSTOMER_ID))


@pytest.fixture(scope="module")
def bank():
    """Training and holdout halves of one bank, references, and an independent sample of
    the same distribution (another seed): what a perfect generator would emit."""
    schema, tables, references = bank_data(600, seed=3)
    _, other, _ = bank_data(300, seed=9)
    ids = other["customers"].column("customer_id").to_numpy()
    fresh = select_entities(schema, other, ids != BIG_CUSTOMER_ID)
    return schema, split(tables, schema, 0), split(tables, schema, 1), references, fresh


def noisy(schema, tables, rng, rows: dict[str, np.ndarray] | None = None, keep=(), relink=True):
    """Every compared column replaced by independent noise (numbers uniform over the real
    range, categories uniform over the real values); only on ``rows`` when given; with
    ``relink`` child rows also move to random parents."""
    out = dict(tables)
    for t, c, kind in compared_columns(schema, tables):
        if f"{t}.{c}" in keep:
            continue
        table = out[t]
        column = table.column(c).combine_chunks()
        n = table.num_rows
        if kind == "numeric":
            x = comparable(column)
            low, high = np.nanmin(x), np.nanmax(x)
            fake = from_comparable(rng.uniform(low, high, n), column.type, np.zeros(n, bool))
        else:
            values = pc.unique(column)
            fake = values.take(pa.array(rng.integers(0, len(values), n)))
        if rows is not None:
            fake = pc.if_else(pa.array(rows[t]), fake, column)
        out[t] = table.set_column(table.schema.get_field_index(c), c, fake)
    if relink:
        for t in schema.tables:
            if t.parent is None:
                continue
            parent = out[t.parent]
            table = out[t.name]
            pick = pa.array(rng.integers(0, parent.num_rows, table.num_rows))
            for col, pcol in zip(t.columns, t.parent_columns):
                table = table.set_column(table.schema.get_field_index(col), col, parent.column(pcol).take(pick))
            out[t.name] = table
    return out


def members_of(schema, tables, column: str, value: str) -> dict[str, np.ndarray]:
    """For every tree table, which rows belong to root entities with ``column = value``."""
    hit = pc.equal(tables[schema.root].column(column), value).to_numpy(zero_copy_only=False)
    parents = parent_index(schema, tables)
    out = {}
    for t in schema.tables:
        owner = ancestor_index(schema, parents, t.name, schema.root)
        out[t.name] = np.where(owner >= 0, hit[np.maximum(owner, 0)], False)
    return out


@pytest.fixture(scope="module")
def copy_report(bank):
    schema, train, holdout, references, _ = bank
    return evaluate(schema, train, holdout, train, references, ATTACKER)


@pytest.fixture(scope="module")
def fresh_report(bank):
    schema, train, holdout, references, fresh = bank
    return evaluate(schema, train, holdout, fresh, references, ATTACKER)


@pytest.fixture(scope="module")
def fraud_report(bank):
    """Copula generator fitted on the training half, sampled with 30 % fraud, judged with a target."""
    schema, train, holdout, references, _ = bank
    gen = get_generator("copula")
    gen.fit(schema, train, references, seed=1)
    synthetic = gen.sample(train["customers"].num_rows, seed=2,
                           conditions=[Condition("transactions", "is_fraud", True, 0.3)])
    spec = EvalSpec(target="transactions.is_fraud", protected=("customers.segment",), min_group_size=15,
                    conditioned=("transactions.is_fraud",))
    calls = []
    report = evaluate(schema, train, holdout, synthetic, references, spec,
                      progress=lambda step, done, total: calls.append((step, done, total)))
    return report, calls


# ------------------------------------------------------------------ known answers


def test_copy_of_training_is_caught_and_rejected(copy_report):
    m = copy_report["metrics"]
    assert m["fidelity.overall"] == pytest.approx(1.0)
    assert m["privacy.dcr_share"] >= 0.95
    assert m["privacy.mia_auc"] >= 0.95
    assert m["privacy.exact_copy_rate"] == 1.0
    assert m["privacy.entity_copy_rate"] >= 0.95
    assert m["privacy.dcr_train_median"] == 0.0 < m["privacy.dcr_baseline_median"]
    assert m["privacy.nndr_median"] == 0.0
    assert m["privacy.attribute_inference_risk"] > 0.8
    assert m["privacy.singling_out_risk"] > 0.8
    assert m["privacy.linkability_risk"] > 0.8
    decision = judge(copy_report)
    assert decision["status"] == "rejected"
    assert {"privacy.dcr_share", "privacy.mia_auc", "privacy.exact_copy_rate"} <= set(decision["failed"])
    assert "fidelity.overall" not in decision["failed"]


def test_independent_sample_is_private_and_faithful(fresh_report):
    m = fresh_report["metrics"]
    assert 0.4 <= m["privacy.dcr_share"] <= 0.6
    assert 0.4 <= m["privacy.mia_auc"] <= 0.6
    assert m["privacy.exact_copy_rate"] == 0.0 and m["privacy.entity_copy_rate"] == 0.0
    assert m["privacy.nndr_median"] > 0.5
    for attack in ("attribute_inference_risk", "singling_out_risk", "linkability_risk"):
        assert m[f"privacy.{attack}"] < 0.2, attack
    assert m["fidelity.overall"] > 0.85
    assert abs(m["fidelity.overall"] - m["fidelity.baseline_overall"]) < 0.05
    assert m["privacy.k_anonymity"] == 1  # a microsecond timestamp is a quasi-identifier: no one hides
    assert judge(fresh_report)["status"] == "released"
    json.dumps(fresh_report)


def test_independent_noise_has_low_fidelity(bank, fresh_report):
    schema, train, holdout, references, fresh = bank
    report = evaluate(schema, train, holdout, noisy(schema, fresh, np.random.default_rng(5)), references)
    m, good = report["metrics"], fresh_report["metrics"]
    assert m["fidelity.overall"] < 0.7
    assert m["fidelity.overall"] < good["fidelity.overall"] - 0.2
    for section in ("column_shapes", "column_pairs", "cardinality", "intertable_trends", "temporal"):
        assert m[f"fidelity.{section}"] < good[f"fidelity.{section}"], section
    assert m["fidelity.wasserstein_mean"] > 2 * good["fidelity.wasserstein_mean"]
    assert judge(report)["status"] == "rejected"
    assert "fidelity.overall" in judge(report)["failed"]


def test_biased_subgroup_shows_a_fairness_gap(bank):
    schema, train, holdout, references, fresh = bank
    spec = EvalSpec(protected=("customers.segment",), min_group_size=15)
    fair = evaluate(schema, train, holdout, fresh, references, spec)
    rows = members_of(schema, fresh, "segment", "premium")
    biased_bundle = noisy(schema, fresh, np.random.default_rng(6), rows=rows, keep={"customers.segment"},
                          relink=False)
    biased = evaluate(schema, train, holdout, biased_bundle, references, spec)
    groups = biased["fairness"]["attributes"]["customers.segment"]["groups"]
    assert groups["premium"]["status"] == "ok"
    worst = min((g for g, e in groups.items() if e["status"] == "ok"), key=lambda g: groups[g]["fidelity"])
    assert worst == "premium"
    assert biased["metrics"]["fairness.fidelity_gap"] > fair["metrics"]["fairness.fidelity_gap"] + 0.1
    assert fair["metrics"]["fairness.fidelity_gap"] < 0.1
    assert fair["metrics"]["fairness.representation_gap"] < 0.1
    assert judge(biased, {"fairness.fidelity_gap": "<= 0.1"})["status"] == "rejected"
    assert judge(fair, {"fairness.fidelity_gap": "<= 0.1"})["status"] == "released"


def test_drift_flags_shifted_columns_only(bank):
    schema, train, holdout, _, _ = bank
    same = drift(schema, train, holdout, threshold=0.1)
    assert same["status"] == "stable" and same["drifted"] == []
    shifted = dict(holdout)
    tx = shifted["transactions"]
    amount = pc.multiply(tx.column("amount").cast(pa.float64()), 1.6).cast(tx.schema.field("amount").type)
    shifted["transactions"] = tx.set_column(tx.schema.get_field_index("amount"), "amount", amount)
    customers = shifted["customers"]
    segment = pc.if_else(pc.less(customers.column("customer_id"), 400), "retail", customers.column("segment"))
    shifted["customers"] = customers.set_column(customers.schema.get_field_index("segment"), "segment", segment)
    moved = drift(schema, train, shifted, threshold=0.1)
    assert moved["status"] == "drift"
    assert set(moved["drifted"]) == {"transactions.amount", "customers.segment"}
    assert moved["columns"]["transactions.amount"]["distance"] > 0.1
    assert not moved["columns"]["transactions.channel"]["drifted"]
    assert moved["columns"]["transactions.channel"]["distance"] == same["columns"]["transactions.channel"]["distance"]
    # a small sample: the same distance is within noise, so it is not flagged
    assert ks_noise(20, 20) > 0.4
    with pytest.raises(ConfigError, match="threshold"):
        drift(schema, train, holdout, threshold=0)


def test_fraud_tstr_with_copula_generator(fraud_report):
    report, _ = fraud_report
    util = report["utility"]
    assert util["status"] == "ok"
    assert abs(util["positive_rate"]["synthetic"] - 0.3) < 0.02
    assert util["positive_rate"]["holdout"] < 0.03
    assert util["records"]["holdout"] > 1000
    m = report["metrics"]
    assert m["utility.trtr_auc"] > 0.65
    assert m["utility.tstr_auc"] > 0.55
    assert m["utility.auc_ratio"] == pytest.approx(m["utility.tstr_auc"] / m["utility.trtr_auc"])
    assert 0.0 <= m["utility.tstr_f1"] <= 1.0
    assert report["integrity"]["ok"] and m["integrity.ri_percent"] == 100.0
    assert 0.35 <= m["privacy.dcr_share"] <= 0.65
    assert m["privacy.exact_copy_rate"] == 0.0
    groups = report["fairness"]["attributes"]["customers.segment"]["groups"]
    assert "tstr_auc" in groups["retail"] and groups["retail"]["status"] == "ok"
    # steered on purpose: shown, but left out of the fidelity score
    fid = report["fidelity"]
    assert "transactions.is_fraud" not in fid["items"]["column_shapes"]
    assert not any("is_fraud" in item for item in fid["items"]["column_pairs"])
    assert fid["distributions"]["transactions.is_fraud"]["labels"] == ["false", "true"]
    assert fid["conditioned"] == ["transactions.is_fraud"]


def test_entity_level_target(bank):
    schema, train, holdout, references, fresh = bank
    report = evaluate(schema, train, holdout, fresh, references,
                      EvalSpec(target="transactions.is_fraud", level="entity"))
    util = report["utility"]
    assert util["status"] == "ok" and util["level"] == "entity"
    assert util["records"]["train"] == train["customers"].num_rows
    assert util["positive_rate"]["train"] > 0.03  # entities with any fraud: far more than rows with fraud
    assert report["metrics"]["utility.tstr_auc"] > 0.55


def test_progress_reports_every_stage(fraud_report):
    _, calls = fraud_report
    stages = [step for step, done, total in calls if ":" not in step]
    assert stages == ["integrity", "fidelity", "fidelity baseline", "utility", "privacy", "fairness", "done"]
    assert calls[-1] == ("done", 6, 6)
    assert any(step.startswith("privacy: ") for step, _, _ in calls)
    dones = [done for _, done, _ in calls]
    assert dones == sorted(dones)


# ------------------------------------------------------------------ declarations and the charter


def test_missing_declarations_are_skipped_with_reasons(bank):
    schema, train, _, references, fresh = bank
    report = evaluate(schema, train, {}, fresh, references)
    skipped = report["skipped"]
    assert "EvalSpec.target" in report["utility"]["reason"] or "holdout" in report["utility"]["reason"]
    assert "holdout" in skipped["privacy.dcr_share"] and "holdout" in skipped["privacy.mia_auc"]
    assert "EvalSpec.quasi_identifiers" in skipped["privacy.k_anonymity"]
    assert "EvalSpec.protected" in skipped["fairness.fidelity_gap"]
    assert "holdout" in skipped["fidelity.baseline_overall"]
    assert all(report["metrics"][name] is None for name in skipped)
    assert report["metrics"]["privacy.exact_copy_rate"] == 0.0
    decision = judge(report)
    assert decision["status"] == "rejected"  # fails closed: the default charter needs a holdout
    dcr = next(c for c in decision["checks"] if c["metric"] == "privacy.dcr_share")
    assert not dcr["ok"] and "holdout" in dcr["reason"]


def test_spec_and_input_errors(bank):
    schema, train, holdout, references, fresh = bank
    with pytest.raises(ConfigError, match="transactions.nope.*no column 'nope'"):
        evaluate(schema, train, holdout, fresh, references, EvalSpec(target="transactions.nope"))
    with pytest.raises(ConfigError, match="excluded"):
        evaluate(schema, train, holdout, fresh, references, EvalSpec(sensitive="customers.email"))
    with pytest.raises(ConfigError, match="level"):
        EvalSpec(level="household")
    with pytest.raises(ConfigError, match="unknown keys.*colour"):
        EvalSpec.from_dict({"target": "transactions.is_fraud", "colour": "red"})
    assert EvalSpec.from_dict(EvalSpec(protected=("customers.segment",)).to_dict()).protected == ("customers.segment",)
    with pytest.raises(ConfigError, match="boolean or categorical"):
        evaluate(schema, train, holdout, fresh, references, EvalSpec(target="transactions.amount"))
    broken = dict(fresh)
    broken["transactions"] = fresh["transactions"].drop_columns(["channel"])
    with pytest.raises(SchemaError, match="synthetic: column transactions.channel missing"):
        evaluate(schema, train, holdout, broken, references)


def test_judge_parses_thresholds_and_fails_closed(fresh_report):
    decision = judge(fresh_report, {"fidelity.overall": ">= 0.5", "privacy.mia_auc": "<0.9", "privacy.dcr_share": 0.1})
    assert decision["status"] == "released"
    assert [c["op"] for c in decision["checks"]] == [">=", "<", ">="]
    check = decision["checks"][0]
    assert check == {"metric": "fidelity.overall", "op": ">=", "threshold": 0.5,
                     "value": fresh_report["metrics"]["fidelity.overall"], "ok": True}
    assert judge(fresh_report, {"fidelity.overall": ">= 0.99"})["failed"] == ["fidelity.overall"]
    skipped = judge(fresh_report, {"utility.tstr_auc": ">= 0.5"})
    assert skipped["status"] == "rejected" and "EvalSpec.target" in skipped["checks"][0]["reason"]
    with pytest.raises(ConfigError, match="unknown metric 'privacy.dcr'.*privacy.dcr_share"):
        judge(fresh_report, {"privacy.dcr": "<= 0.6"})
    with pytest.raises(ConfigError, match="'fidelity.overall' must look like"):
        judge(fresh_report, {"fidelity.overall": "at least 0.7"})
    with pytest.raises(ConfigError, match="no thresholds"):
        judge(fresh_report, {})
    assert set(DEFAULT_THRESHOLDS) <= set(METRICS)
    assert set(fresh_report["metrics"]) == set(METRICS)


def test_html_report_has_every_section(fraud_report, bank, tmp_path):
    report, _ = fraud_report
    schema, train, holdout, _, _ = bank
    report = {**report, "drift": drift(schema, train, holdout)}
    path = render_html(report, tmp_path / "out" / "report.html", decision=judge(report))

    class Outline(HTMLParser):
        def __init__(self):
            super().__init__()
            self.sections, self.svgs, self.refs, self.tags = [], 0, [], set()

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self.tags.add(tag)
            if tag == "section":
                self.sections.append(attrs.get("id"))
            if tag == "svg":
                self.svgs += 1
            self.refs += [attrs[k] for k in ("src", "href") if k in attrs]

    text = path.read_text(encoding="utf-8")
    outline = Outline()
    outline.feed(text)
    assert outline.sections == list(SECTIONS)
    assert outline.svgs >= 8
    assert "script" not in outline.tags and "link" not in outline.tags and "img" not in outline.tags
    assert all(ref.startswith("#") for ref in outline.refs), outline.refs
    for needle in ("Charter decision", "TSTR", "transactions.is_fraud", "privacy.dcr_share",
                   "distance to closest record", "subgroups of customers.segment", "Status: <b>stable</b>"):
        assert needle in text, needle
    assert text.count("<h2>") == len(SECTIONS)


# ------------------------------------------------------------------ building blocks


def test_metric_building_blocks():
    rng = np.random.default_rng(0)
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.ones(4)) == 0.5
    assert auc(np.array([1, 1]), np.array([0.1, 0.2])) is None
    assert f1(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == 0.5
    x = rng.normal(size=5000)
    assert wasserstein(x, x + 2.0) == pytest.approx(2.0, abs=1e-9)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert abs(spearman(x, rng.normal(size=5000))) < 0.05
