"""The foundation tests, unchanged, on both store backends: sync, query, on-demand, forget,
export. The S3 runs reuse the test functions of tests/microdb with an S3-backed workspace."""

from __future__ import annotations

import duckdb
import pytest
from conftest import TEST_CUSTOMERS, use_s3_store

import microdb
from tests.microdb import test_api, test_on_demand, test_sync_matrix


@pytest.fixture(scope="module")
def s3_synced(tmp_path_factory, s3_server):
    from microdb.init import init_workspace

    path = tmp_path_factory.mktemp("s3ws")
    init_workspace(path, demo=True, customers=TEST_CUSTOMERS, seed=3)
    use_s3_store(path, s3_server)
    ws = microdb.open(path)
    assert type(ws.store).__name__ == "S3Store"
    result = ws.sync("customer")
    yield "embedded", ws, result
    ws.close()


MATRIX = [
    "test_discovery_finds_the_tree",
    "test_every_entity_is_synced",
    "test_reference_tables_are_stored_once",
    "test_sql_on_an_entity_joins_across_sources",
    "test_source_queries_do_not_grow_with_entities",
    "test_direct_source_query_agrees",
]


@pytest.mark.parametrize("name", MATRIX)
def test_sync_matrix_on_s3(s3_synced, bank_tables, name):
    fn = getattr(test_sync_matrix, name)
    args = {"synced": s3_synced, "bank_tables": bank_tables}
    fn(**{k: v for k, v in args.items() if k in fn.__code__.co_varnames[: fn.__code__.co_argcount]})


@pytest.mark.parametrize("key", [test_sync_matrix.BIG_CUSTOMER_ID, test_sync_matrix.EMPTY_CUSTOMER_ID, 3, 150])
def test_entity_holds_exactly_its_source_rows_on_s3(s3_synced, bank_tables, key):
    test_sync_matrix.test_entity_holds_exactly_its_source_rows(s3_synced, bank_tables, key)


def test_public_api_on_s3(s3_synced, tmp_path, monkeypatch):
    test_api.test_public_api(s3_synced[1], tmp_path, monkeypatch)


@pytest.fixture
def s3_fresh(tmp_path, s3_server):
    from microdb.init import init_workspace

    init_workspace(tmp_path, demo=True, customers=120, seed=5)
    use_s3_store(tmp_path, s3_server)
    return tmp_path


@pytest.mark.parametrize("name", [
    "test_first_access_projects_one_entity",
    "test_never_mode_needs_a_sync",
    "test_ttl_and_always",
    "test_changed_since_reprojects_only_changed_entities",
    "test_sync_emits_openlineage_events",
])
def test_on_demand_on_s3(s3_fresh, name):
    getattr(test_on_demand, name)(s3_fresh)


def test_sync_forget_export_on_each_backend(store_backend, tmp_path):
    from microdb.init import init_workspace

    path = tmp_path / "ws"
    init_workspace(path, demo=True, customers=80, seed=4)
    store_backend(path)
    with microdb.open(path) as ws:
        assert ws.sync("customer").entities == 80
        fan = ws.query("customer", "SELECT count(*) AS n FROM customers")
        assert fan.num_rows == 80
        out = ws.entity("customer/7", role="analyst").export(tmp_path / "c7.duckdb")
        con = duckdb.connect(str(out), read_only=True)
        assert con.execute("SELECT count(*) FROM customers").fetchall() == [(1,)]
        con.close()
        assert ws.forget("customer/7") is True
        assert ws.store.info("customer", "7") is None
        assert ws.store.count("customer") == 79
        with pytest.raises(microdb.EntityNotFound):
            ws.forget("customer/7")
    with microdb.open(path) as ws:  # a new process view agrees
        assert ws.store.count("customer") == 79
        assert ws.entity("customer/7").tables()["customers"].num_rows == 1  # on demand: projected again
