"""The pytest plugin, exercised by running real test files with pytester."""

from __future__ import annotations


from conftest import PG_DSN, require_postgres

pytest_plugins = ["pytester"]

INNER = '''
import pytest

SCHEMAS = []


def test_entity(microdb_entity):
    c = microdb_entity("customer/42", role="tester")
    assert c.sql("SELECT count(*) AS n FROM customers").column("n")[0].as_py() == 1
    raw = microdb_entity("customer/42", role="admin").tables()["customers"]["email"][0].as_py()
    assert c.tables()["customers"]["email"][0].as_py() != raw


@pytest.mark.microdb_postgres(entities=["customer/1", "customer/42"], role="analyst")
def test_entities_in_postgres(microdb_postgres):
    SCHEMAS.append(microdb_postgres.schema)
    with microdb_postgres.connect() as con:
        assert con.execute("SELECT count(*) FROM customers").fetchone()[0] == 2
        n = con.execute("SELECT count(*) FROM transactions").fetchone()[0]
        fks = con.execute("SELECT count(*) FROM pg_constraint c JOIN pg_namespace s ON s.oid = c.connamespace "
                          "WHERE s.nspname = current_schema() AND contype = 'f'").fetchone()[0]
    assert n == microdb_postgres.result.rows["transactions"] > 0
    assert fks >= 9


@pytest.mark.microdb_postgres(where="transactions.is_fraud", role="tester")
def test_predicate_in_postgres(microdb_postgres):
    SCHEMAS.append(microdb_postgres.schema)
    with microdb_postgres.connect() as con:
        clean = con.execute("SELECT count(*) FROM customers c WHERE NOT EXISTS (SELECT 1 FROM accounts a "
                            "JOIN transactions t USING (account_id) WHERE a.customer_id = c.customer_id "
                            "AND t.is_fraud)").fetchone()[0]
    assert clean == 0 and microdb_postgres.result.entities > 0


def test_bundle(microdb_bundle):
    b = microdb_bundle(generator="rules", entities=30, seed=1, override="plugin test")
    assert b.tables()["customers"].num_rows == 30
    assert microdb_bundle(generator="rules", entities=30, seed=1, override="plugin test") is b


@pytest.mark.microdb_postgres(bundle={"generator": "rules", "entities": 30, "seed": 1, "override": "plugin test"})
def test_bundle_in_postgres(microdb_postgres):
    SCHEMAS.append(microdb_postgres.schema)
    with microdb_postgres.connect() as con:
        assert con.execute("SELECT count(*) FROM customers").fetchone()[0] == 30


def test_zz_record_schemas(tmp_path_factory):
    import pathlib
    pathlib.Path("schemas.txt").write_text("\\n".join(SCHEMAS))
'''


def test_plugin_fixtures(pytester, demo_ws):
    import psycopg

    require_postgres()
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("--microdb-workspace", str(demo_ws.root), "--microdb-postgres", PG_DSN,
                                "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=6)
    schemas = (pytester.path / "schemas.txt").read_text().split()
    assert len(schemas) == 3 and len(set(schemas)) == 3
    with psycopg.connect(PG_DSN) as con:
        left = con.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,)).fetchall()
    assert left == []  # every temporary schema was dropped


def test_plugin_fails_loudly_without_a_workspace(pytester, monkeypatch):
    monkeypatch.delenv("MICRODB_WORKSPACE", raising=False)
    pytester.makepyfile(test_inner="def test_it(microdb_entity):\n    microdb_entity('customer/1')\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no workspace given; pass --microdb-workspace DIR*"])


def test_plugin_rejects_bad_markers(pytester, demo_ws):
    pytester.makepyfile(test_inner='''
import pytest

@pytest.mark.microdb_postgres(entities=["customer/1"], colour="red")
def test_it(microdb_postgres):
    pass
''')
    result = pytester.runpytest("--microdb-workspace", str(demo_ws.root), "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown argument(s) colour*"])
