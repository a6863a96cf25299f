"""One matrix over every kind of source: the same small tables, written to SQLite, DuckDB,
Parquet, PostgreSQL and MariaDB, must come back with the same catalog and the same rows."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from microdb.errors import ConfigError, SchemaError, SourceError
from microdb.sources import ForeignKey, KeyIn, Since, Source, open_source

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_START = "pg_ctlcluster --skip-systemctl-redirect 15 main start"
MYSQL_START = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
KINDS = ["sqlite", "duckdb", "parquet", "postgresql", "mysql"]
CATALOG_QUERIES = {"sqlite": 2, "duckdb": 2, "parquet": 0, "postgresql": 2, "mysql": 2}

# ---------------------------------------------------------------------------- the data

DEC = pa.decimal128(12, 2)
TS = pa.timestamp("us")
NAMES = ["Zoë Ångström", "東京 太郎", None, "O'Brien", "back\\slash", "emoji 😀", "plain", None]


def _customers() -> pa.Table:
    n = 40
    return pa.table({
        "id": pa.array(range(1, n + 1), pa.int64()),
        "name": pa.array([NAMES[i % len(NAMES)] for i in range(n)], pa.string()),
        "balance": pa.array([None if i % 7 == 3 else Decimal(i * 1234 - 9000) / 100 for i in range(n)], DEC),
        "born": pa.array([date(1950, 1, 1) + timedelta(days=397 * i) for i in range(n)], pa.date32()),
        "created_at": pa.array([datetime(2020, 1, 1, 8, 30) + timedelta(hours=37 * i, microseconds=123457 * i)
                                for i in range(n)], TS),
        "active": pa.array([None if i % 9 == 4 else i % 2 == 0 for i in range(n)], pa.bool_()),
        "score": pa.array([i / 3 for i in range(n)], pa.float64()),
    })


def _accounts() -> pa.Table:
    rows = [(c, s) for c in range(1, 41) for s in range(1, 1 + c % 3)]
    return pa.table({
        "customer_id": pa.array([c for c, _ in rows], pa.int64()),
        "seq": pa.array([s for _, s in rows], pa.int64()),
        "iban": pa.array([f"DE{c:04d}{s:02d}" for c, s in rows], pa.string()),
        "opened": pa.array([date(2015, 1, 1) + timedelta(days=c * 10 + s) for c, s in rows], pa.date32()),
        "updated_at": pa.array(
            [datetime(2024, 1, 1) + timedelta(hours=c * 5 + s, microseconds=7 * c) for c, s in rows], TS
        ),
    })


def _movements(accounts: pa.Table) -> pa.Table:
    pairs = list(zip(accounts["customer_id"].to_pylist(), accounts["seq"].to_pylist()))
    rows = [(n, s, c) for c, s in pairs for n in range(1, 1 + (c + s) % 4)]
    return pa.table({  # column order differs from both keys on purpose
        "n": pa.array([n for n, _, _ in rows], pa.int64()),
        "account_seq": pa.array([s for _, s, _ in rows], pa.int64()),
        "customer_id": pa.array([c for _, _, c in rows], pa.int64()),
        "amount": pa.array([Decimal(n * 100 + c) / 100 for n, _, c in rows], DEC),
        "at": pa.array([datetime(2024, 6, 1) + timedelta(minutes=n * 13 + c) for n, _, c in rows], TS),
    })


ACCOUNTS = _accounts()
DATA = {"customers": _customers(), "accounts": ACCOUNTS, "movements": _movements(ACCOUNTS)}
PK = {"customers": ("id",), "accounts": ("customer_id", "seq"), "movements": ("customer_id", "account_seq", "n")}
FK = {
    "customers": (),
    "accounts": (ForeignKey(("customer_id",), "customers", ("id",)),),
    "movements": (ForeignKey(("customer_id", "account_seq"), "accounts", ("customer_id", "seq")),),
}

# ---------------------------------------------------------------------------- writers

_SQL_TYPES = {  # kind -> Arrow type -> declared type
    "sqlite": {pa.int64(): "INTEGER", pa.string(): "TEXT", DEC: "NUMERIC(12,2)", pa.date32(): "DATE",
               TS: "TIMESTAMP", pa.bool_(): "BOOLEAN", pa.float64(): "REAL"},
    "duckdb": {pa.int64(): "BIGINT", pa.string(): "VARCHAR", DEC: "DECIMAL(12,2)", pa.date32(): "DATE",
               TS: "TIMESTAMP", pa.bool_(): "BOOLEAN", pa.float64(): "DOUBLE"},
    "postgresql": {pa.int64(): "bigint", pa.string(): "text", DEC: "numeric(12,2)", pa.date32(): "date",
                   TS: "timestamp", pa.bool_(): "boolean", pa.float64(): "double precision"},
    "mysql": {pa.int64(): "BIGINT", pa.string(): "VARCHAR(100)", DEC: "DECIMAL(12,2)", pa.date32(): "DATE",
              TS: "DATETIME(6)", pa.bool_(): "BOOLEAN", pa.float64(): "DOUBLE"},
}


def _ddl(kind: str, name: str, quote: str, qualify: str = "") -> str:
    q = lambda n: f"{quote}{n}{quote}"  # noqa: E731
    table = DATA[name]
    lines = [f"{q(f.name)} {_SQL_TYPES[kind][f.type]}{' NOT NULL' if f.name in PK[name] else ''}" for f in table.schema]
    lines.append(f"PRIMARY KEY ({', '.join(map(q, PK[name]))})")
    for fk in FK[name]:
        lines.append(f"FOREIGN KEY ({', '.join(map(q, fk.columns))}) REFERENCES {qualify}{q(fk.ref_table)} "
                     f"({', '.join(map(q, fk.ref_columns))})")
    suffix = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if kind == "mysql" else ""
    return f"CREATE TABLE {qualify}{q(name)} ({', '.join(lines)}){suffix}"


def _rows(table: pa.Table, sqlite: bool = False) -> list[tuple]:
    def lite(v):
        if isinstance(v, datetime):
            return v.isoformat(sep=" ")
        if isinstance(v, (date, Decimal)):
            return str(v)
        return int(v) if isinstance(v, bool) else v

    rows = list(zip(*(c.to_pylist() for c in table.columns)))
    return [tuple(lite(v) for v in r) for r in rows] if sqlite else rows


def _write_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    for name, table in DATA.items():
        con.execute(_ddl("sqlite", name, '"'))
        marks = ", ".join("?" * table.num_columns)
        con.executemany(f'INSERT INTO "{name}" VALUES ({marks})', _rows(table, sqlite=True))
    con.commit()
    con.close()


def _write_duckdb(path: Path) -> None:
    con = duckdb.connect(str(path))
    for name, table in DATA.items():
        con.execute(_ddl("duckdb", name, '"'))
        con.register("incoming", table)
        con.execute(f'INSERT INTO "{name}" SELECT * FROM incoming')
        con.unregister("incoming")
    con.close()


def _write_parquet(folder: Path) -> None:
    folder.mkdir()
    pq.write_table(DATA["customers"], folder / "customers.parquet")
    pq.write_table(DATA["accounts"], folder / "accounts.parquet")
    part = folder / "movements"  # a partitioned table: one folder of files
    part.mkdir()
    half = DATA["movements"].num_rows // 2
    pq.write_table(DATA["movements"].slice(0, half), part / "a.parquet")
    pq.write_table(DATA["movements"].slice(half), part / "b.parquet")


def require_postgres():
    import psycopg

    try:
        return psycopg.connect(PG_URL, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({exc}); start it with: {PG_START}", pytrace=False)


def require_mysql():
    import pymysql

    try:
        return pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=5, autocommit=True,
                               charset="utf8mb4")
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB is not reachable at 127.0.0.1:3306 ({exc}); start it with: {MYSQL_START}", pytrace=False)


def _unique() -> str:
    return f"mdbtest_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", params=KINDS)
def kind_source(request, tmp_path_factory) -> Iterator[tuple[str, Callable[[], Source]]]:
    """(kind, open): ``open()`` gives a fresh Source (counter at zero) over the test data."""
    kind = request.param
    opened: list[Source] = []

    def opener(url: str) -> Callable[[], Source]:
        def open_() -> Source:
            src = open_source("t", url)
            opened.append(src)
            return src
        return open_

    folder = tmp_path_factory.mktemp(kind)
    if kind == "sqlite":
        _write_sqlite(folder / "t.sqlite")
        yield kind, opener(f"sqlite://{(folder / 't.sqlite').as_posix()}")
    elif kind == "duckdb":
        _write_duckdb(folder / "t.duckdb")
        yield kind, opener(f"duckdb://{(folder / 't.duckdb').as_posix()}")
    elif kind == "parquet":
        _write_parquet(folder / "data")
        yield kind, opener(f"parquet://{(folder / 'data').as_posix()}")
    elif kind == "postgresql":
        con, schema = require_postgres(), _unique()
        try:
            con.execute(f'CREATE SCHEMA "{schema}"')
            for name, table in DATA.items():
                con.execute(_ddl(kind, name, '"', f'"{schema}".'))
                marks = ", ".join(["%s"] * table.num_columns)
                con.cursor().executemany(f'INSERT INTO "{schema}"."{name}" VALUES ({marks})', _rows(table))
            yield kind, opener(f"{PG_URL}?schema={schema}")
        finally:
            for src in opened:
                src.close()
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            con.close()
    else:
        con, db = require_mysql(), _unique()
        try:
            with con.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
                for name, table in DATA.items():
                    cur.execute(_ddl(kind, name, "`", f"`{db}`."))
                    marks = ", ".join(["%s"] * table.num_columns)
                    cur.executemany(f"INSERT INTO `{db}`.`{name}` VALUES ({marks})", _rows(table))
            yield kind, opener(f"mysql://root@127.0.0.1:3306/{db}")
        finally:
            for src in opened:
                src.close()
            with con.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
            con.close()
    for src in opened:
        src.close()


def _sorted(table: pa.Table, name: str) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in PK[name]])


# ---------------------------------------------------------------------------- the matrix


def test_catalog(kind_source):
    kind, open_ = kind_source
    src = open_()
    catalog = src.catalog()
    assert src.queries == CATALOG_QUERIES[kind]
    assert src.catalog() is catalog and src.queries == CATALOG_QUERIES[kind]  # cached
    assert sorted(catalog.tables) == sorted(DATA)
    for name, table in DATA.items():
        info = catalog.table(name)
        assert [c.name for c in info.columns] == table.column_names
        assert [c.type for c in info.columns] == table.schema.types
        if kind == "parquet":
            assert (info.primary_key, info.foreign_keys) == ((), ())
        else:
            assert info.primary_key == PK[name]
            assert info.foreign_keys == FK[name]
            assert [c.name for c in info.columns if not c.nullable] == [c for c in table.column_names if c in PK[name]]


def test_read_everything_matches_the_data(kind_source):
    kind, open_ = kind_source
    src = open_()
    src.catalog()
    before = src.queries
    for name, table in DATA.items():
        got = src.read(name)
        assert got.schema == table.schema, f"{kind} {name}"
        assert _sorted(got, name).equals(table), f"{kind} {name}"
    assert src.queries - before == len(DATA)


def test_column_subset_in_requested_order(kind_source):
    _, open_ = kind_source
    src = open_()
    got = src.read("customers", ["score", "id", "name"])
    assert got.column_names == ["score", "id", "name"]
    assert got.schema.types == [pa.float64(), pa.int64(), pa.string()]
    assert got.sort_by("id").equals(DATA["customers"].select(["score", "id", "name"]))


def test_key_in_single_column(kind_source):
    kind, open_ = kind_source
    src = open_()
    src.catalog()
    before = src.queries
    keys = pa.table({"customer_id": pa.array([3, 5, 5, None, 999], pa.int64())})  # repeat, null, absent
    got = src.read("accounts", ["seq", "customer_id"], key_in=KeyIn(("customer_id",), keys))
    want = DATA["accounts"].filter(pc.is_in(DATA["accounts"]["customer_id"], pa.array([3, 5])))
    assert got.sort_by([("customer_id", "ascending"), ("seq", "ascending")]).equals(want.select(["seq", "customer_id"]))
    assert src.queries - before == 1
    # keys of another integer type are cast to the catalog's type
    small = pa.table({"id": pa.array([1, 2], pa.int32())})
    assert sorted(src.read("customers", ["id"], key_in=KeyIn(("id",), small))["id"].to_pylist()) == [1, 2]


def test_key_in_text_values_are_quoted(kind_source):
    _, open_ = kind_source
    src = open_()
    keys = pa.table({"name": ["O'Brien", "back\\slash", "東京 太郎", "nobody' OR '1'='1"]})
    got = src.read("customers", ["id", "name"], key_in=KeyIn(("name",), keys))
    want = DATA["customers"].filter(pc.is_in(DATA["customers"]["name"], keys["name"])).select(["id", "name"])
    assert got.sort_by("id").equals(want)
    assert want.num_rows == 15


def test_key_in_composite(kind_source):
    _, open_ = kind_source
    src = open_()
    src.catalog()
    before = src.queries
    keys = pa.table({
        "account_seq": pa.array([1, 2, 1, 2, 1], pa.int64()),
        "customer_id": pa.array([2, 2, 7, 7, 999], pa.int64()),  # (7, 2) exists, (2, 2) does and (999, 1) not
    })
    got = src.read("movements", key_in=KeyIn(("customer_id", "account_seq"), keys))
    m = DATA["movements"]
    pairs = set(zip(keys["customer_id"].to_pylist(), keys["account_seq"].to_pylist()))
    mask = pa.array([p in pairs for p in zip(m["customer_id"].to_pylist(), m["account_seq"].to_pylist())])
    want = m.filter(mask)
    assert want.num_rows > 0
    assert _sorted(got, "movements").equals(_sorted(want, "movements"))
    assert src.queries - before == 1


def test_key_in_many_keys_is_chunked_and_empty_keys_read_nothing(kind_source):
    kind, open_ = kind_source
    src = open_()
    src.catalog()
    before = src.queries
    keys = pa.table({"id": pa.array(range(-24_990, 11), pa.int64())})  # 25,001 keys, 10 of them present
    got = src.read("customers", ["id"], key_in=KeyIn(("id",), keys))
    assert sorted(got["id"].to_pylist()) == list(range(1, 11))
    assert src.queries - before == (1 if kind in ("parquet", "duckdb") else 3)
    empty = src.read("customers", ["id", "born"], key_in=KeyIn(("id",), pa.table({"id": pa.array([], pa.int64())})))
    assert empty.num_rows == 0 and empty.schema == pa.schema([("id", pa.int64()), ("born", pa.date32())])
    assert src.queries - before == (1 if kind in ("parquet", "duckdb") else 3)


def test_since_watermark(kind_source):
    _, open_ = kind_source
    src = open_()
    a = DATA["accounts"]
    cutoff = a["updated_at"][20].as_py()  # a stored value: strictly greater must exclude it
    got = src.read("accounts", ["customer_id", "seq", "updated_at"], since=Since("updated_at", cutoff))
    want = a.filter(pc.greater(a["updated_at"], pa.scalar(cutoff, TS))).select(["customer_id", "seq", "updated_at"])
    assert want.num_rows > 0
    assert _sorted(got, "accounts").equals(_sorted(want, "accounts"))
    both = src.read("accounts", ["seq"], key_in=KeyIn(("customer_id",), pa.table({"customer_id": [40, 1]})),
                    since=Since("updated_at", cutoff))
    assert both.num_rows == a.filter(pc.and_(pc.equal(a["customer_id"], 40),
                                             pc.greater(a["updated_at"], pa.scalar(cutoff, TS)))).num_rows
    dated = src.read("customers", ["id"], since=Since("born", datetime(1990, 1, 1)))
    assert sorted(dated["id"].to_pylist()) == [
        i for i, b in zip(DATA["customers"]["id"].to_pylist(), DATA["customers"]["born"].to_pylist())
        if b > date(1990, 1, 1)
    ]


def test_unknown_names_fail_with_schema_errors(kind_source):
    _, open_ = kind_source
    src = open_()
    with pytest.raises(SchemaError, match=r"source 't' has no table 'nope' \(tables: accounts, customers, movements\)"):
        src.read("nope")
    with pytest.raises(SchemaError, match=r"table 'customers' has no column 'nope'"):
        src.read("customers", ["id", "nope"])
    with pytest.raises(SchemaError, match="nope"):
        src.read("customers", key_in=KeyIn(("nope",), pa.table({"nope": [1]})))
    with pytest.raises(SchemaError, match="not a date or timestamp"):
        src.read("customers", since=Since("name", datetime(2020, 1, 1)))
    with pytest.raises(SchemaError, match="at least one column"):
        src.read("customers", [])
    with pytest.raises(SchemaError, match="asked for twice"):
        src.read("customers", ["id", "id"])
    with pytest.raises(SchemaError, match="do not fit"):
        src.read("customers", key_in=KeyIn(("id",), pa.table({"id": ["x"]})))


def test_ping_and_close(kind_source):
    _, open_ = kind_source
    src = open_()
    src.ping()
    src.close()
    with pytest.raises(SourceError, match="closed"):
        src.read("customers")


# ---------------------------------------------------------------------------- failures


def test_unreachable_postgres_names_the_source_and_hides_credentials():
    src = open_source("crm", "postgresql://postgres:secret@127.0.0.1:1/test")
    with pytest.raises(SourceError, match=r"source 'crm' \(postgresql://…@127.0.0.1:1/test\) is unreachable: ") as err:
        src.catalog()
    assert "secret" not in str(err.value)
    hidden = open_source("crm", "postgresql://127.0.0.1:1/test?user=postgres&password=secret&schema=s")
    with pytest.raises(SourceError, match="password=…") as err:
        hidden.catalog()
    assert "secret" not in str(err.value)
    with pytest.raises(SourceError, match="is unreachable"):
        src.ping()


def test_unreachable_mysql():
    with pytest.raises(SourceError, match=r"source 'm' \(mysql://…@127.0.0.1:1/x\) is unreachable: "):
        open_source("m", "mysql://root@127.0.0.1:1/x").catalog()


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(SourceError, match=f"SQLite file {tmp_path}/missing.sqlite does not exist"):
        open_source("crm", "sqlite:missing.sqlite", base_dir=tmp_path).catalog()
    with pytest.raises(SourceError, match="DuckDB file .*missing.duckdb does not exist"):
        open_source("d", f"duckdb://{tmp_path}/missing.duckdb").read("x")
    with pytest.raises(SourceError, match=f"folder {tmp_path}/nope does not exist"):
        open_source("p", f"parquet://{tmp_path}/nope").catalog()


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown URL scheme .*known: csv, duckdb, mariadb, mysql, parquet"):
        open_source("x", "oracle://host/db")


def test_relative_and_absolute_file_urls(tmp_path):
    (tmp_path / "data").mkdir()
    _write_sqlite(tmp_path / "data" / "t.sqlite")
    for url in ("sqlite:data/t.sqlite", "sqlite://data/t.sqlite", f"sqlite://{tmp_path}/data/t.sqlite"):
        src = open_source("t", url, base_dir=tmp_path)
        assert src.path == tmp_path / "data" / "t.sqlite"
        assert src.read("customers", ["id"]).num_rows == 40
        src.close()


def test_sources_are_read_only(tmp_path):
    _write_sqlite(tmp_path / "t.sqlite")
    src = open_source("t", f"sqlite://{tmp_path}/t.sqlite")
    with pytest.raises(SourceError, match="readonly"):
        src._fetch('DELETE FROM "customers"', "delete")
    src.close()
    con = require_postgres()
    con.close()
    pg = open_source("pg", PG_URL)
    with pytest.raises(SourceError, match="read-only transaction"):
        pg._fetch("CREATE TEMP TABLE mdbtest_never (a int)", "create")
    pg.close()


def test_sqlite_values_of_the_wrong_type_fail_closed(tmp_path):
    con = sqlite3.connect(tmp_path / "bad.sqlite")
    con.execute("CREATE TABLE t (id INTEGER, d DATE)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(None, None)] * 3000 + [("seven", "2024-01-01"), (1, "soon")])
    con.commit()
    con.close()
    src = open_source("bad", f"sqlite://{tmp_path}/bad.sqlite")
    with pytest.raises(SchemaError, match=r"column t.id holds values that are not int64"):
        src.read("t", ["id"])
    with pytest.raises(SchemaError, match=r"column t.d holds values that are not date32"):
        src.read("t", ["d"])


def test_csv_folder_schema_is_inferred_once_and_overridable(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "people.csv").write_text("id,name,amount,born\n1,Zoë,1.50,2001-02-03\n2,,2.25,2002-03-04\n3,x,3,\n")
    src = open_source("c", f"csv://{folder}", {"column_types": {"people": {"amount": "DECIMAL(10,2)"}}})
    info = src.catalog().table("people")
    assert [(c.name, c.type) for c in info.columns] == [
        ("id", pa.int64()), ("name", pa.string()), ("amount", pa.decimal128(10, 2)), ("born", pa.date32())]
    got = src.read("people", ["amount", "id"], key_in=KeyIn(("id",), pa.table({"id": [1, 3]})))
    assert got.sort_by("id").to_pylist() == [{"amount": Decimal("1.50"), "id": 1}, {"amount": Decimal("3.00"), "id": 3}]
    assert src.queries == 1
    assert src.read("people")["name"].to_pylist() == ["Zoë", None, "x"]
    with pytest.raises(ConfigError, match="lacks"):
        open_source("c", f"csv://{folder}", {"column_types": {"people": {"nope": "TEXT"}}}).catalog()
