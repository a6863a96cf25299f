"""Sampling in shards by seed streams: the same bundle in-process, on spawned processes and
on Ray, keys renumbered across shards with 100% referential integrity."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

import microdb
from conftest import set_sections
from microdb.executors import get_executor
from microdb.init import init_workspace
from synth.integrity import check_integrity


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards")
    init_workspace(path, demo=True, customers=200, seed=4)
    set_sections(path, synth={"role": "analyst", "shard_entities": 40,
                              "constraints": {"customer": ["unique(customers.email)", "amount > 0"]}}, charter={})
    w = microdb.open(path)
    w.sync("customer")
    yield w
    w.close()


def _digest(bundle) -> dict[str, str]:
    return {n: i["parquet_sha256"] for n, i in bundle.manifest["tables"].items()}


def test_shards_merge_with_integrity_and_unique_keys(ws):
    model = ws.synth_fit("customer", "copula", seed=1)
    bundle = ws.synth_sample(model, 130, seed=9)  # 4 shards of 40 or fewer
    tables = bundle.tables()
    schema = bundle.schema
    assert tables["customers"].num_rows == 130
    report = check_integrity(schema, {t.name: tables[t.name] for t in schema.tables},
                             {n: t for n, t in tables.items() if not schema.is_tree_table(n)})
    assert report.ok and report.ri_percent == 100.0, report.violations
    for t in schema.tables:
        for col in t.primary_key:
            values = tables[t.name].column(col)
            assert pc.count_distinct(values).as_py() == len(values), f"{t.name}.{col}"
    emails = tables["customers"].column("email")
    assert pc.count_distinct(emails).as_py() == len(emails)
    again = ws.synth_sample(model, 130, seed=9)
    assert _digest(again) == _digest(bundle)


@pytest.mark.parametrize("name", ["process", "ray"])
def test_every_executor_gives_the_same_bundle(ws, name):
    model = ws.synth_fit("customer", "rules", seed=2)
    local = ws.synth_sample(model, 100, seed=3)
    with get_executor(name, workers=2) as ex:
        remote = ws.synth_sample(model, 100, seed=3, executor=ex)
    assert _digest(remote) == _digest(local)
    assert remote.manifest["shard_entities"] == 40


def test_fit_with_an_executor_learns_the_same_model(ws):
    """Training entities unsealed in parallel tasks give the same model files."""
    from microdb import synthesis

    plain = ws.synth_fit("customer", "copula", seed=5)
    with get_executor("process", workers=2) as ex:
        parallel = synthesis.fit(ws, "customer", generator="copula", seed=5, executor=ex)
    files = [p.name for p in plain.iterdir() if p.name != "training.json"]
    assert "model.json" in files
    for name in files:
        assert (plain / name).read_bytes() == (parallel / name).read_bytes(), name
