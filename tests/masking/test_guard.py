"""Tests for the SQL guard: a hostile corpus end to end, legitimate analytics, cache, limits."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from masking.guard import (
    SAFE_FUNCTIONS,
    TABLE_FUNCTIONS,
    GuardedQuery,
    SqlGuard,
    _check_duckdb_tree,
    _DuckDBParser,
    run_guarded,
)
from microdb.errors import ConfigError, QueryError, QueryRefused

SECRET = "123-45-6789"
from conftest import load_corpus  # noqa: E402

ALLOWED = ("customers", "accounts", "transactions")
LOCKED = {"enable_external_access": False, "lock_configuration": True, "memory_limit": "1GB", "threads": 2}


def build_micro(tmp: Path) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection]:
    """A locked database: masked tables on the query cursor, secrets everywhere else."""
    con = duckdb.connect(":memory:", config=dict(LOCKED))
    raw = pa.table({"id": [1, 2, 3], "name": ["Ann", "Bob", "Cy"], "ssn": [SECRET, "987-65-4321", "555-12-3456"]})
    other = con.cursor()
    other.register("raw_customers", raw)
    other.execute("CREATE TABLE vault AS SELECT * FROM raw_customers")
    other.execute(f"SET VARIABLE secret_var = '{SECRET}'")
    pacsv.write_csv(raw, tmp / "secret.csv")
    pq.write_table(raw, tmp / "secret.parquet")
    (tmp / "secret.json").write_text(f'{{"ssn": "{SECRET}"}}\n')
    cur = con.cursor()
    cur.register("customers", pa.table({
        "id": [1, 2, 3, 4],
        "name": ["tok_a1", "tok_b2", "tok_c3", "tok_d4"],
        "ssn": ["***-**-6789", "***-**-4321", "***-**-3456", None],
        "segment": ["retail", "retail", "private", "sme"],
    }))
    cur.register("accounts", pa.table({
        "id": [10, 11, 12, 13, 14],
        "customer_id": [1, 1, 2, 3, 4],
        "kind": ["checking", "savings", "checking", "loan", "checking"],
        "opened": pa.array([19000, 19100, 19200, 19300, 19400], pa.int32()).cast(pa.date32()),
        "balance": [120.5, 3000.0, -40.0, -15000.0, 0.0],
    }))
    cur.register("transactions", pa.table({
        "id": list(range(100, 112)),
        "account_id": [10, 10, 10, 11, 12, 12, 13, 13, 14, 10, 11, 12],
        "amount": [12.5, -3.0, 40.0, 100.0, -7.25, 9.99, -500.0, 250.0, 1.0, 60.0, -20.0, 5.0],
        "ts": pa.array([1_700_000_000_000_000 + i * 86_400_000_000 for i in range(12)], pa.timestamp("us")),
        "merchant": ["Shop A", "Cafe", "Shop B", "Payroll", "Cafe", "Books", "Bank", "Payroll", "Cafe", "Shop A", "Fees", "Cafe"],
    }))
    return con, cur


@pytest.fixture()
def micro(tmp_path: Path):
    con, cur = build_micro(tmp_path)
    yield con, cur, tmp_path
    con.close()


@pytest.fixture()
def guard() -> SqlGuard:
    return SqlGuard(ALLOWED, max_rows=1000)


def test_corpus_is_large_enough(tmp_path: Path) -> None:
    cases = load_corpus(tmp_path)
    assert len([c for c in cases if not c[2]]) >= 80
    assert len({name for name, _, _ in cases}) == len(cases), "case names must be unique"


def test_every_hostile_case_is_refused(guard: SqlGuard, tmp_path: Path) -> None:
    passed = []
    for name, sql, allowed in load_corpus(tmp_path):
        if allowed:
            continue
        try:
            guarded = guard.check(sql)
        except (QueryRefused, QueryError) as err:
            assert err.message.startswith(("refused: ", "SQL syntax error")), (name, err.message)
            continue
        passed.append((name, guarded.sql))
    assert passed == []


def test_allowed_cases_pass_the_guard(guard: SqlGuard, tmp_path: Path) -> None:
    for name, sql, allowed in load_corpus(tmp_path):
        if allowed:
            assert guard.check(sql).tables <= set(ALLOWED), name


def test_no_corpus_case_leaks_the_secret_end_to_end(micro, guard: SqlGuard) -> None:
    con, cur, tmp = micro
    raw_secret = pa.table({"ssn": [SECRET]})  # a Python-side replacement-scan target  # noqa: F841
    seen: list[str] = []
    started = time.perf_counter()
    for name, sql, allowed in load_corpus(tmp):
        try:
            result = run_guarded(cur, guard.check(sql), timeout_s=1.0)
            seen.append(repr(result.to_pylist()))
            assert allowed, f"{name} ran although it is not marked [allowed]"
        except (QueryRefused, QueryError) as err:
            seen.append(err.message)
    assert not [s for s in seen if SECRET in s or "123456789" in s]
    assert time.perf_counter() - started < 20
    # the query cursor still works and still has no access to the secret
    assert cur.execute("SELECT count(*) FROM customers").fetchone() == (4,)


def test_corpus_is_dangerous_without_the_guard(tmp_path: Path) -> None:
    """Proves the end-to-end setup can fail: run directly, many cases leak or change state."""
    leaked, executed = [], []
    con, cur = build_micro(tmp_path)
    for name, sql, allowed in load_corpus(tmp_path):
        if allowed:
            continue
        if executed and executed[-1] != "":  # the last case ran and may have changed state
            con.close()
            con, cur = build_micro(tmp_path)
            executed.append("")
        timer = threading.Timer(0.5, cur.interrupt)
        timer.start()
        try:
            cur.execute(sql)
            try:
                out = repr(cur.fetchmany(10))
            except duckdb.InvalidInputException:  # a statement without a result set
                out = ""
        except duckdb.Error:
            continue
        finally:
            timer.cancel()
        executed.append(name)
        if SECRET in out:
            leaked.append(name)
    con.close()
    executed = [name for name in executed if name]
    print(f"\nwithout the guard: {len(executed)} hostile cases ran, {len(leaked)} leaked the secret")
    assert len(leaked) >= 5, leaked
    assert len(executed) >= 30, executed


@pytest.mark.parametrize("sql", [
    "SELECT segment, count(*) AS n FROM customers GROUP BY segment ORDER BY segment",
    "SELECT c.name, sum(t.amount) AS total FROM customers c JOIN accounts a ON a.customer_id = c.id "
    "JOIN transactions t ON t.account_id = a.id GROUP BY c.name ORDER BY total DESC",
    "SELECT a.id, a.balance, rank() OVER (ORDER BY a.balance DESC) AS r FROM accounts a ORDER BY r, a.id",
    "SELECT account_id, amount, sum(amount) OVER (PARTITION BY account_id ORDER BY ts) AS running "
    "FROM transactions ORDER BY account_id, ts",
    "WITH spend AS (SELECT account_id, sum(amount) AS s FROM transactions GROUP BY ALL) "
    "SELECT a.kind, avg(s) AS avg_s FROM spend JOIN accounts a ON a.id = spend.account_id GROUP BY a.kind ORDER BY a.kind",
    "SELECT id, CASE WHEN balance < 0 THEN 'debt' WHEN balance = 0 THEN 'empty' ELSE 'credit' END AS state FROM accounts ORDER BY id",
    "SELECT date_trunc('month', ts) AS m, count(*) FROM transactions GROUP BY m ORDER BY m",
    "SELECT id, extract(year FROM opened) AS y, opened + INTERVAL 30 DAY AS due, date_diff('day', opened, DATE '2025-01-01') AS age FROM accounts ORDER BY id",
    "SELECT upper(merchant) AS m, length(merchant) AS l, substr(merchant, 1, 3) AS p, replace(merchant, ' ', '_') AS r FROM transactions ORDER BY id",
    "SELECT merchant FROM transactions WHERE regexp_matches(merchant, '^Shop [AB]$') ORDER BY id",
    "SELECT regexp_replace(name, '[0-9]', '#', 'g') AS n, regexp_extract(name, '_(.*)', 1) AS tail FROM customers ORDER BY id",
    "SELECT account_id, amount FROM transactions QUALIFY row_number() OVER (PARTITION BY account_id ORDER BY amount DESC) = 1 ORDER BY account_id",
    "SELECT * FROM transactions ORDER BY amount DESC LIMIT 3 OFFSET 1",
    "SELECT kind, count(*) FILTER (WHERE balance > 0) AS positive, max(balance) AS top FROM accounts GROUP BY kind HAVING count(*) >= 1 ORDER BY kind",
    "SELECT customer_id FROM accounts WHERE kind = 'checking' INTERSECT SELECT customer_id FROM accounts WHERE balance >= 0 ORDER BY 1",
    "SELECT id FROM customers UNION ALL SELECT customer_id FROM accounts EXCEPT SELECT 4 ORDER BY 1",
    "SELECT c.id, (SELECT count(*) FROM accounts a WHERE a.customer_id = c.id) AS n_accounts FROM customers c ORDER BY c.id",
    "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.customer_id = c.id AND a.balance < 0) ORDER BY id",
    "SELECT string_agg(merchant, ',' ORDER BY merchant) AS merchants, list_sort(list_distinct(list(merchant))) AS l FROM transactions",
    "SELECT account_id, lag(amount) OVER w AS prev, lead(amount) OVER w AS nxt FROM transactions WINDOW w AS (PARTITION BY account_id ORDER BY ts) ORDER BY account_id, ts",
    "SELECT coalesce(ssn, 'none') AS s, nullif(segment, 'sme') AS seg, greatest(id, 2) AS g FROM customers ORDER BY id",
    "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v(k, label) JOIN customers c ON c.id = v.k ORDER BY k",
    "SELECT strftime(ts, '%Y-%m-%d') AS d, round(amount * 1.1, 2) AS a FROM transactions ORDER BY id",
    "SELECT approx_count_distinct(merchant) AS m, median(amount) AS med, stddev_samp(amount) > 0 AS s FROM transactions",
    "SELECT x FROM unnest([3, 1, 2]) AS t(x) ORDER BY x",
    "SELECT n, n * n AS sq FROM range(5) AS r(n) ORDER BY n",
    "SELECT * FROM accounts PIVOT (sum(balance) FOR kind IN ('checking', 'savings')) ORDER BY id",
    "SELECT list_transform([1, 2, 3], lambda x: x * 2) AS doubled, [1, 2, 3][2] AS second, {'a': 1}.a AS a",
    "FROM customers SELECT id, name WHERE id < 3 ORDER BY id",
    "SELECT * EXCLUDE (ssn) FROM customers ORDER BY id",
    "WITH RECENT AS (SELECT * FROM transactions WHERE ts > TIMESTAMP '2023-11-18') SELECT count(*) FROM recent",
    "SELECT c.segment, a.kind, count(*) FROM customers c LEFT JOIN accounts a ON a.customer_id = c.id GROUP BY ROLLUP (c.segment, a.kind) ORDER BY 1, 2, 3",
])
def test_legitimate_queries_pass_and_match_direct_execution(micro, guard: SqlGuard, sql: str) -> None:
    _, cur, _ = micro
    guarded = guard.check(sql)
    assert guarded.tables <= set(ALLOWED)
    got = run_guarded(cur, guarded, timeout_s=5.0)
    expected = cur.sql(sql).to_arrow_table()
    assert got.num_rows == expected.num_rows
    assert [list(r.values()) for r in got.to_pylist()] == [list(r.values()) for r in expected.to_pylist()]


def test_guarded_query_fields(guard: SqlGuard) -> None:
    q = guard.check("select c.id from CUSTOMERS c join main.Accounts a on a.customer_id = c.id")
    assert isinstance(q, GuardedQuery)
    assert q.tables == frozenset({"customers", "accounts"})
    assert q.sql.startswith("SELECT * FROM (") and q.sql.endswith(") AS _q LIMIT 1001")
    assert re.fullmatch(r"[0-9a-f]{64}", q.fingerprint)
    same = "SELECT  c.id\nFROM CUSTOMERS c /* x */ JOIN main.Accounts a ON a.customer_id = c.id"
    assert guard.check(same).fingerprint == q.fingerprint
    assert guard.check("with customers as (select 1 as id) select id from customers").tables == frozenset()


def test_refusal_messages_say_what_and_why(guard: SqlGuard) -> None:
    cases = {
        "SELECT * FROM read_csv('x.csv')": "refused: table function read_csv — ",
        "SELECT current_setting('threads')": "refused: function current_setting — ",
        "ATTACH ':memory:' AS m": "refused: ATTACH statement — ",
        "SELECT * FROM vault": "refused: table vault — not a table of this micro-database",
        "SELECT 1; SELECT 2": "refused: 2 statements — exactly one statement is allowed",
        "WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r": "refused: WITH RECURSIVE — ",
    }
    for sql, prefix in cases.items():
        with pytest.raises(QueryRefused) as info:
            guard.check(sql)
        assert info.value.message.startswith(prefix), info.value.message


def test_syntax_error_names_line_and_column(guard: SqlGuard) -> None:
    with pytest.raises(QueryError, match=r"^SQL syntax error at line 2, col \d+: "):
        guard.check("SELECT id\nFROM customers WHERE (id = 1")


def test_length_and_depth_limits() -> None:
    g = SqlGuard(ALLOWED, max_length=50, max_depth=3)
    with pytest.raises(QueryRefused, match="longer than 50 characters"):
        g.check("SELECT id FROM customers WHERE id = 1 AND id = 1 AND id = 1")
    with pytest.raises(QueryRefused, match="nested deeper than 3 levels"):
        g.check("SELECT ((((1))))")
    assert g.check("SELECT (((1)))").sql


def test_duckdb_parser_check_stands_alone() -> None:
    """The second wall refuses on DuckDB's own parse even without the sqlglot rules."""
    parser = _DuckDBParser()
    ctx = SqlGuard(ALLOWED)._ctx
    refused = [
        "SELECT * FROM duckdb_settings()",
        "SELECT current_setting('threads')",
        "SELECT * FROM vault",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM 'secret.csv'",
        "SELECT main.upper('x')",
        "SELECT $1",
        "WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT 1 FROM r) SELECT * FROM r",
        "SELECT getvariable('x')",
        "SELECT * FROM customers, read_text('x')",
    ]
    for sql in refused:
        with pytest.raises(QueryRefused):
            _check_duckdb_tree(parser.parse(sql), ctx)
    with pytest.raises(QueryError, match="SQL syntax error"):
        _check_duckdb_tree(parser.parse("ATTACH ':memory:' AS m"), ctx)
    _check_duckdb_tree(parser.parse("WITH x AS (SELECT 1) SELECT upper(name) || 'a' FROM customers, x"), ctx)


def test_allow_lists_are_real_and_safe() -> None:
    con = duckdb.connect(":memory:")
    catalog = {
        name.lower(): kinds
        for name, kinds in con.execute(
            "SELECT function_name, list(DISTINCT function_type) FROM duckdb_functions() GROUP BY 1"
        ).fetchall()
    }
    parser_names = {"unnest", "grouping", "grouping_id", "coalesce", "try"}
    assert sorted(SAFE_FUNCTIONS - catalog.keys() - parser_names) == []
    assert not {"current_setting", "getvariable", "version", "read_csv", "query", "glob"} & SAFE_FUNCTIONS
    assert TABLE_FUNCTIONS <= {n for n, kinds in catalog.items() if "table" in kinds}
    for name in SAFE_FUNCTIONS - parser_names:
        kinds = set(catalog.get(name, ["scalar"]))
        assert kinds & {"scalar", "aggregate", "window", "macro"}, name


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="duckdb_settings"):
        SqlGuard(["duckdb_settings"])
    with pytest.raises(ConfigError, match="current_setting"):
        SqlGuard(ALLOWED, allowed_functions_extra=["current_setting"])
    with pytest.raises(ConfigError):
        SqlGuard(ALLOWED, max_rows=0)
    assert SqlGuard(ALLOWED, allowed_functions_extra=["my_udf"]).check("SELECT my_udf(id) FROM customers")


def test_cache_skips_reparsing_and_is_bounded(guard: SqlGuard) -> None:
    sql = "SELECT id, upper(name) FROM customers WHERE id > 1"
    first = guard.check(sql)
    assert guard.check(sql) is first
    info = guard.cache_info()
    assert (info.hits, info.misses, info.parses) == (1, 1, 1)
    for _ in range(2):
        with pytest.raises(QueryRefused):
            guard.check("SELECT * FROM vault")
    assert guard.cache_info().parses == 2
    small = SqlGuard(ALLOWED, cache_size=2)
    for q in ("SELECT 1", "SELECT 2", "SELECT 3", "SELECT 1"):
        small.check(q)
    assert small.cache_info().size == 2
    assert small.cache_info().parses == 4  # "SELECT 1" was evicted and parsed again


def test_cached_check_is_much_cheaper(guard: SqlGuard) -> None:
    sqls = [f"SELECT c.id, sum(t.amount) FROM customers c JOIN accounts a ON a.customer_id = c.id "
            f"JOIN transactions t ON t.account_id = a.id WHERE t.amount > {i} GROUP BY c.id" for i in range(50)]
    start = time.perf_counter()
    for sql in sqls:
        guard.check(sql)
    uncached = (time.perf_counter() - start) / len(sqls)
    start = time.perf_counter()
    for _ in range(20):
        for sql in sqls:
            guard.check(sql)
    cached = (time.perf_counter() - start) / (20 * len(sqls))
    print(f"\nguard.check: uncached {uncached * 1e3:.3f} ms, cached {cached * 1e6:.2f} µs")
    assert cached * 20 < uncached


def test_timeout_stops_a_cross_join_bomb(micro, guard: SqlGuard) -> None:
    _, cur, _ = micro
    guarded = guard.check("SELECT count(*) FROM range(1000) a, range(1000) b, range(1000) c, range(1000) d")
    start = time.perf_counter()
    with pytest.raises(QueryError, match=r"^query exceeded the timeout of 0.5 s$"):
        run_guarded(cur, guarded, timeout_s=0.5)
    assert time.perf_counter() - start < 3
    assert cur.execute("SELECT 42").fetchall() == [(42,)]  # the cursor is usable afterwards
    assert run_guarded(cur, guard.check("SELECT 1 AS one"), timeout_s=5).to_pylist() == [{"one": 1}]


def test_row_limit_fails_closed(micro) -> None:
    _, cur, _ = micro
    small = SqlGuard(ALLOWED, max_rows=5)
    with pytest.raises(QueryError, match=r"^result exceeds the row limit of 5$"):
        run_guarded(cur, small.check("SELECT * FROM transactions"), timeout_s=5)
    assert run_guarded(cur, small.check("SELECT * FROM transactions LIMIT 5"), timeout_s=5).num_rows == 5


def test_duckdb_errors_become_query_errors(micro, guard: SqlGuard) -> None:
    _, cur, _ = micro
    with pytest.raises(QueryError, match="no_such_column") as info:
        run_guarded(cur, guard.check("SELECT no_such_column FROM customers"), timeout_s=5)
    assert "\n" not in info.value.message


def test_cte_scope_is_respected_by_both_checks() -> None:
    guard = SqlGuard(ALLOWED)
    ctx = guard._ctx
    parser = _DuckDBParser()
    forward = "WITH a AS (SELECT * FROM vault), vault AS (SELECT 1 AS x) SELECT * FROM a"
    with pytest.raises(QueryRefused, match="table vault"):
        guard.check(forward)
    with pytest.raises(QueryRefused, match="table vault"):
        _check_duckdb_tree(parser.parse(forward), ctx)
    assert guard.check("WITH vault AS (SELECT 1 AS x), a AS (SELECT * FROM vault) SELECT * FROM a").tables == frozenset()
