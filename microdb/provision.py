"""Provisioning: masked or synthetic entities into a target database — the test-data provider.

``provision(ws, "postgresql://…", etype="customer", where="transactions.is_fraud", role="tester")``
chooses entities (:mod:`microdb.subset`), assembles them with the reference rows they use,
and writes them into PostgreSQL, MySQL/MariaDB, SQLite or DuckDB with the source schema:
column types mapped per dialect with sqlglot, primary keys, the foreign keys known to
microdb (declared in the sources, ``[[relations]]``, the entity's parent joins) and an
index per foreign key where the target does not make one itself. Parents are written
before children, reference tables once, through each target's bulk path: ADBC ingestion
(binary COPY) into PostgreSQL, ``LOAD DATA LOCAL INFILE`` into MySQL/MariaDB, Arrow
ingestion into SQLite (ADBC) and DuckDB.

Modes: ``create`` (tables must not exist), ``schema_only``, ``truncate`` (replace the rows
of existing tables, create missing ones) and ``upsert`` (insert or update by primary key;
a re-run with the same entities changes nothing). A table that exists with other
columns is a conflict, named with its columns, before anything is written.

Atomicity: on PostgreSQL, SQLite and DuckDB the whole run — DDL and every batch — is one
transaction: a failure leaves the target as it was. MySQL commits DDL implicitly, so the
tables are created first and every row is loaded in one InnoDB transaction; on failure
the rows are rolled back and the tables (and the database) this run created are dropped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from microdb.entity import EntityType
from microdb.errors import AccessDenied, ConfigError, MicrodbError, SchemaError, SourceError
from microdb.sources.base import display_url, file_path
from microdb.subset import ENTITY_COLUMN, Choice, EntitySet, Link, choose, gather, links, _no_progress

if TYPE_CHECKING:
    from microdb.workspace import Workspace

MODES = ("create", "schema_only", "truncate", "upsert")
BATCH_ROWS = 200_000
Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- result


@dataclass
class ProvisionResult:
    """What a run wrote: rows per table (parents first), in how long, and what it left out."""

    target: str
    schema: str | None
    mode: str
    entity_type: str
    entities: int
    rows: dict[str, int]
    seconds: float = 0.0
    withheld: list[str] = field(default_factory=list)
    skipped_links: list[str] = field(default_factory=list)
    bundle: str | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ColumnPlan:
    name: str
    type: pa.DataType
    not_null: bool


@dataclass(frozen=True)
class TablePlan:
    """One target table: columns, primary key, foreign keys to other planned tables."""

    name: str
    columns: tuple[ColumnPlan, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[Link, ...]
    replace_by: Link | None = None  # no primary key: an upsert replaces the rows of these parents

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def key_columns(self) -> set[str]:
        return set(self.primary_key) | {c for fk in self.foreign_keys for c in fk.columns}


def plan_tables(ws: Workspace, et: EntityType, data: dict[str, pa.Table]) -> tuple[list[TablePlan], list[str]]:
    """Target tables for ``data`` (the columns a role sees), parents first, and the links
    that could not become constraints (with why).

    The primary key is the source's; a table whose source declares none (Parquet, CSV)
    gets the entity key (root table) or the columns other tables reference, when they
    are unique and non-null in ``data``."""
    sources = {t.name: (t.source, t.table) for t in et.tables}
    sources.update({r.name: (r.source, r.table) for r in et.references})
    known = links(ws, et)
    pks: dict[str, tuple[str, ...]] = {}
    infos = {}
    for name, table in data.items():
        source, tname = sources[name]
        info = ws.sources.catalog(source).table(tname)
        infos[name] = info
        candidates = [tuple(info.primary_key)] if info.primary_key else []
        if not candidates:
            if name == et.root and et.key:
                candidates.append(tuple(et.key))
            candidates += sorted({link.parent_columns for link in known if link.parent == name and link.child != name},
                                 key=len)
        pks[name] = next((c for c in candidates if _is_key(table, c, declared=c == tuple(info.primary_key))), ())
    skipped: list[str] = []
    fks: dict[str, list[Link]] = {n: [] for n in data}
    for link in known:
        what = f"{link.child}({', '.join(link.columns)}) -> {link.parent}({', '.join(link.parent_columns)})"
        if link.child not in data or link.parent not in data:
            continue
        if link.child == link.parent:
            skipped.append(f"{what}: self-reference (rows of one table are not ordered)")
            continue
        pk = pks[link.parent]
        if not pk or set(link.parent_columns) != set(pk):
            skipped.append(f"{what}: not the primary key of {link.parent}")
            continue
        if any(c not in data[link.child].column_names for c in link.columns):
            skipped.append(f"{what}: a column is withheld from the role")
            continue
        order = {p: c for c, p in zip(link.columns, link.parent_columns)}
        fks[link.child].append(Link(link.child, tuple(order[p] for p in pk), link.parent, pk))
    plans = {}
    for name, table in data.items():
        declared = {c.name: c for c in infos[name].columns}
        cols = []
        for fld in table.schema:
            col = declared.get(fld.name)
            not_null = fld.name in pks[name] or (col is not None and not col.nullable and table.column(fld.name).null_count == 0)
            cols.append(ColumnPlan(fld.name, fld.type, not_null))
        replace_by = None
        if not pks[name] and name in {t.name for t in et.tables} and et.table(name).parent is not None:
            t = et.table(name)
            if all(c in table.column_names for c in t.columns) and all(c in data.get(t.parent, table).column_names
                                                                         for c in t.parent_columns):
                replace_by = Link(name, t.columns, t.parent, t.parent_columns)
        plans[name] = TablePlan(name, tuple(cols), pks[name], tuple(fks[name]), replace_by)
    return _parents_first(plans), skipped


def _is_key(table: pa.Table, columns: tuple[str, ...], declared: bool) -> bool:
    """Whether ``columns`` can be the table's primary key: present, and (unless the source
    declares it) unique and non-null in the rows."""
    if not columns or any(c not in table.column_names for c in columns):
        return False
    if declared or table.num_rows == 0:
        return True
    part = table.select(list(columns))
    if any(part.column(c).null_count for c in columns):
        return False
    return part.group_by(list(columns), use_threads=False).aggregate([]).num_rows == table.num_rows


def _parents_first(plans: dict[str, TablePlan]) -> list[TablePlan]:
    ordered: list[TablePlan] = []
    pending = dict(plans)
    while pending:
        placed = {p.name for p in ordered}
        ready = [p for p in pending.values() if all(fk.parent in placed for fk in p.foreign_keys)]
        if not ready:
            raise SchemaError(f"foreign keys form a cycle among tables {', '.join(sorted(pending))}: cannot order the load")
        for p in ready:
            ordered.append(p)
            del pending[p.name]
    return ordered


# --------------------------------------------------------------------------- types


def sql_type(t: pa.DataType, dialect: str, *, key: bool, where: str, max_len: int = 0) -> exp.DataType:
    """The column type for Arrow type ``t`` in ``dialect``; SchemaError naming ``where``
    (TABLE.COLUMN) for types microdb does not provision (nested, intervals …)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    name: str | None = None
    if pa.types.is_boolean(t):
        name = "BOOLEAN"
    elif pa.types.is_integer(t):
        if pa.types.is_uint64(t):
            name = "DECIMAL(20, 0)"
        elif t.bit_width <= 16 and pa.types.is_signed_integer(t):
            name = "SMALLINT"
        elif t.bit_width <= 16 or (t.bit_width == 32 and pa.types.is_signed_integer(t)):
            name = "INT"
        else:
            name = "BIGINT"
    elif pa.types.is_float32(t):
        name = "REAL"
    elif pa.types.is_float64(t):
        name = "DOUBLE"
    elif pa.types.is_decimal(t):
        limit = {"duckdb": 38, "mysql": 65}.get(dialect, 1000)
        if t.precision > limit:
            raise SchemaError(f"column {where}: {t} has more digits than {dialect} decimals hold ({limit})")
        name = f"DECIMAL({t.precision}, {t.scale})"
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        if dialect == "mysql" and key:
            if max_len > 768:
                raise SchemaError(f"column {where}: key values up to {max_len} characters exceed MySQL's index limit (768)")
            name = f"VARCHAR({max(255, max_len)})"
        else:
            name = "TEXT"
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        if dialect == "mysql":
            name = f"VARBINARY({max(255, max_len)})" if key else "LONGBLOB"
        else:
            name = "BLOB"
    elif pa.types.is_date(t):
        name = "DATE"
    elif pa.types.is_timestamp(t):
        if dialect == "mysql":
            return exp.DataType.build("DATETIME(6)", dialect="mysql")
        name = "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    elif pa.types.is_time(t):
        name = "TIME"
    if name is None:
        raise SchemaError(f"column {where}: type {t} cannot be provisioned into {dialect} "
                          "(flat columns only: numbers, text, binary, dates, times, timestamps, decimals)")
    return exp.DataType.build(name)


def _max_len(table: pa.Table | None, column: str) -> int:
    if table is None or table.num_rows == 0:
        return 0
    col = table.column(column)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        n = pc.max(pc.utf8_length(col)).as_py()
    elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        n = pc.max(pc.binary_length(col)).as_py()
    else:
        return 0
    return int(n or 0)


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


# --------------------------------------------------------------------------- targets


class Target(ABC):
    """A database provisioning writes into; one connection, one run."""

    dialect: ClassVar[str]
    transactional_ddl: ClassVar[bool] = True
    index_foreign_keys: ClassVar[bool] = True
    late_constraints: ClassVar[bool] = False  # add keys after the load (faster bulk load)

    def __init__(self, url: str, schema: str | None) -> None:
        self.url = url
        self.schema = schema
        self._con: Any = None

    @property
    def label(self) -> str:
        return f"target {display_url(self.url)}"

    def qualify(self, name: str) -> exp.Table:
        return exp.Table(this=_ident(name), db=_ident(self.schema) if self.schema else None)

    def dataset(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name

    def unreachable(self, reason: object) -> SourceError:
        return SourceError(f"{self.label} is unreachable: {' '.join(str(reason).split())} "
                           "(check that the server runs and the host, port, database and credentials are right)")

    def failed(self, what: str, reason: object) -> SourceError:
        text = " ".join(str(reason).split())
        return SourceError(f"{self.label}: {what} failed: {text[:600]}")

    # DDL ---------------------------------------------------------------------------------
    def create_sql(self, plan: TablePlan, data: pa.Table | None, *, keys: bool = True) -> list[str]:
        """CREATE TABLE (with keys unless ``keys`` is false) and its indexes, in this dialect."""
        defs: list[exp.Expression] = []
        key_cols = plan.key_columns()
        for col in plan.columns:
            where = f"{plan.name}.{col.name}"
            kind = sql_type(col.type, self.dialect, key=col.name in key_cols, where=where,
                            max_len=_max_len(data, col.name) if col.name in key_cols else 0)
            constraints = [exp.ColumnConstraint(kind=exp.NotNullColumnConstraint())] if col.not_null else []
            defs.append(exp.ColumnDef(this=_ident(col.name), kind=kind, constraints=constraints))
        if keys:
            defs += self._key_defs(plan)
        create = exp.Create(this=exp.Schema(this=self.qualify(plan.name), expressions=defs), kind="TABLE")
        sql = create.sql(dialect=self.dialect)
        if self.dialect == "mysql":
            sql += " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        return [sql] + (self.index_sql(plan) if keys else [])

    def _key_defs(self, plan: TablePlan) -> list[exp.Expression]:
        defs: list[exp.Expression] = []
        if plan.primary_key:
            defs.append(exp.PrimaryKey(expressions=[_ident(c) for c in plan.primary_key]))
        for fk in plan.foreign_keys:
            defs.append(self._fk(fk))
        return defs

    def _fk(self, fk: Link) -> exp.ForeignKey:
        ref = exp.Reference(this=exp.Schema(this=self.qualify(fk.parent), expressions=[_ident(c) for c in fk.parent_columns]))
        return exp.ForeignKey(expressions=[_ident(c) for c in fk.columns], reference=ref)

    def index_sql(self, plan: TablePlan) -> list[str]:
        if not self.index_foreign_keys:
            return []
        out = []
        for fk in plan.foreign_keys:
            if tuple(fk.columns) == tuple(plan.primary_key[: len(fk.columns)]):
                continue  # the primary key's index serves it
            name = f"ix_{plan.name}_{'_'.join(fk.columns)}"[:60]
            index = exp.Index(this=_ident(name), table=self.qualify(plan.name),
                              params=exp.IndexParameters(columns=[exp.column(c, quoted=True) for c in fk.columns]))
            out.append(exp.Create(this=index, kind="INDEX").sql(dialect=self.dialect))
        return out

    def constraint_sql(self, plan: TablePlan) -> list[str]:
        """ALTER TABLE … ADD for keys left out of CREATE TABLE (``late_constraints``)."""
        table = self.qualify(plan.name).sql(dialect=self.dialect)
        out = [f"ALTER TABLE {table} ADD {d.sql(dialect=self.dialect)}" for d in self._key_defs(plan)]
        return out + self.index_sql(plan)

    def upsert_sql(self, plan: TablePlan, stage: str) -> str:
        """INSERT … SELECT from ``stage`` that updates rows whose primary key exists."""
        cols = ", ".join(_ident(c).sql(dialect=self.dialect) for c in plan.column_names)
        table = self.qualify(plan.name).sql(dialect=self.dialect)
        rest = [c for c in plan.column_names if c not in plan.primary_key]
        pk = ", ".join(_ident(c).sql(dialect=self.dialect) for c in plan.primary_key)
        q = lambda c: _ident(c).sql(dialect=self.dialect)  # noqa: E731
        if self.dialect == "mysql":
            update = ", ".join(f"{q(c)} = VALUES({q(c)})" for c in rest) or f"{q(plan.primary_key[0])} = {q(plan.primary_key[0])}"
            return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON DUPLICATE KEY UPDATE {update}"
        where = " WHERE true" if self.dialect == "sqlite" else ""
        if not rest:
            return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage}{where} ON CONFLICT ({pk}) DO NOTHING"
        update = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in rest)
        changed = ""
        if self.dialect in ("postgres", "duckdb"):  # DuckDB: an update of a referenced row trips its FK check
            mine = ", ".join(f"{table}.{q(c)}" for c in rest)
            theirs = ", ".join(f"excluded.{q(c)}" for c in rest)
            changed = f" WHERE ({mine}) IS DISTINCT FROM ({theirs})" if len(rest) > 1 else \
                f" WHERE {mine} IS DISTINCT FROM {theirs}"
        return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage}{where} ON CONFLICT ({pk}) DO UPDATE SET {update}{changed}"

    # the connection ------------------------------------------------------------------------
    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def existing(self) -> dict[str, list[str]]:
        """Tables of the target schema and their columns."""

    @abstractmethod
    def execute(self, sql: str, what: str) -> None: ...

    @abstractmethod
    def begin(self) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    def prepare_schema(self) -> None:
        """Create the target schema if it is missing."""

    def create(self, plan: TablePlan, data: pa.Table | None) -> None:
        for sql in self.create_sql(plan, data, keys=not self.late_constraints):
            self.execute(sql, f"creating {self.dataset(plan.name)}")

    def finish(self, plans: Sequence[TablePlan]) -> None:
        """After the load: keys and indexes of tables created with ``late_constraints``."""
        if self.late_constraints:
            for plan in plans:
                for sql in self.constraint_sql(plan):
                    self.execute(sql, f"adding keys to {self.dataset(plan.name)}")

    def clear(self, plans: Sequence[TablePlan]) -> None:
        """Remove every row of these existing tables (children first), in the transaction."""
        for plan in reversed(plans):
            self.execute(f"DELETE FROM {self.qualify(plan.name).sql(dialect=self.dialect)}",
                         f"emptying {self.dataset(plan.name)}")

    @abstractmethod
    def append(self, plan: TablePlan, table: pa.Table, fresh: bool) -> None:
        """Insert rows; ``fresh``: the table was created by this run with exactly these types."""

    @abstractmethod
    def _stage(self, plan: TablePlan, table: pa.Table) -> str:
        """Put ``table`` in a temporary staging table; return its name as SQL."""

    def upsert(self, plan: TablePlan, table: pa.Table) -> None:
        """Insert rows, updating those whose primary key exists (unchanged rows stay untouched)."""
        stage = self._stage(plan, table)
        self.execute(self.upsert_sql(plan, stage), f"upserting into {self.dataset(plan.name)}")

    def delete_matching(self, plan: TablePlan, columns: Sequence[str], keys: pa.Table) -> None:
        """Delete the rows of ``plan`` whose ``columns`` equal a row of ``keys``."""
        if keys.num_rows == 0:
            return
        q = lambda c: _ident(c).sql(dialect=self.dialect)  # noqa: E731
        stage = self._stage(plan, keys)
        cols = ", ".join(q(c) for c in columns)
        lhs = f"({cols})" if len(columns) > 1 else cols
        self.execute(f"DELETE FROM {self.qualify(plan.name).sql(dialect=self.dialect)} WHERE {lhs} IN "
                     f"(SELECT {cols} FROM {stage})", f"replacing rows of {self.dataset(plan.name)}")

    def after_load(self, plans: Sequence[TablePlan]) -> None:
        """Checks before commit (SQLite: foreign keys)."""

    def cleanup(self, created: Sequence[TablePlan]) -> None:
        """After a failed run on a target whose DDL is not transactional: drop what it made."""

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()
            except Exception:  # noqa: BLE001 - a broken connection cannot be closed more
                pass


def _plain_arrow(table: pa.Table) -> pa.Table:
    """Large/view/dictionary columns as their plain Arrow types."""
    fields = []
    for f in table.schema:
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        elif pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            t = pa.binary()
        fields.append(pa.field(f.name, t))
    schema = pa.schema(fields)
    return table if schema.equals(table.schema) else table.cast(schema)


class _AdbcTransaction:
    """Statements and transactions on an ADBC connection (``self._con``), which opens a
    transaction implicitly."""

    _con: Any
    _errors: tuple[type[BaseException], ...]

    def execute(self, sql: str, what: str) -> None:
        try:
            with self._con.cursor() as cur:
                cur.execute(sql)
        except self._errors as exc:
            raise self.failed(what, exc) from exc  # type: ignore[attr-defined]

    def begin(self) -> None:
        """ADBC opens a transaction implicitly (autocommit off)."""

    def commit(self) -> None:
        try:
            self._con.commit()
        except self._errors as exc:
            raise self.failed("commit", exc) from exc  # type: ignore[attr-defined]

    def rollback(self) -> None:
        if self._con is not None:
            try:
                self._con.rollback()
            except self._errors:
                pass  # the session is gone: the server rolled back


class PostgresTarget(_AdbcTransaction, Target):
    """``postgresql://user[:password]@host:port/db[?schema=NAME]``; loads with ADBC (COPY)."""

    dialect = "postgres"
    late_constraints = True

    def __init__(self, url: str, schema: str | None) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        given = next((v for k, v in query if k == "schema"), None)
        super().__init__(url, schema or given or "public")
        self._uri = urlunsplit(("postgresql", parts.netloc, parts.path,
                                urlencode([(k, v) for k, v in query if k != "schema"], quote_via=quote), ""))
        self._errors: tuple[type[BaseException], ...] = ()

    def connect(self) -> None:
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc_pg

        self._errors = (adbc_driver_manager.Error,)
        try:
            self._con = adbc_pg.connect(self._uri, autocommit=False)
        except adbc_driver_manager.Error as exc:
            raise self.unreachable(exc) from exc

    def _rows(self, sql: str) -> list[tuple]:
        try:
            with self._con.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        except self._errors as exc:
            raise self.failed("reading the catalog", exc) from exc

    def existing(self) -> dict[str, list[str]]:
        schema = exp.Literal.string(self.schema).sql(dialect="postgres")
        out: dict[str, list[str]] = {}
        for table, column in self._rows(
            "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = {schema} AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY c.relname, a.attnum"
        ):
            out.setdefault(table, []).append(column)
        self.rollback()
        return out

    def prepare_schema(self) -> None:
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(self.schema).sql(dialect='postgres')}",
                     f"creating schema {self.schema}")

    def clear(self, plans: Sequence[TablePlan]) -> None:
        if plans:
            names = ", ".join(self.qualify(p.name).sql(dialect="postgres") for p in plans)
            self.execute(f"TRUNCATE {names}", "emptying " + ", ".join(self.dataset(p.name) for p in plans))

    def _stage(self, plan: TablePlan, table: pa.Table) -> str:
        self.execute('DROP TABLE IF EXISTS pg_temp."__mdb_stage"', "dropping the staging table")
        try:
            with self._con.cursor() as cur:
                cur.adbc_ingest("__mdb_stage", _plain_arrow(table), mode="create", temporary=True)
        except self._errors as exc:
            raise self.failed(f"staging rows for {self.dataset(plan.name)}", exc) from exc
        return 'pg_temp."__mdb_stage"'

    def append(self, plan: TablePlan, table: pa.Table, fresh: bool) -> None:
        if fresh:
            try:
                with self._con.cursor() as cur:
                    cur.adbc_ingest(plan.name, _plain_arrow(table), mode="append", db_schema_name=self.schema)
            except self._errors as exc:
                raise self.failed(f"loading {self.dataset(plan.name)}", exc) from exc
            return
        stage = self._stage(plan, table)
        cols = ", ".join(_ident(c).sql(dialect="postgres") for c in plan.column_names)
        self.execute(f"INSERT INTO {self.qualify(plan.name).sql(dialect='postgres')} ({cols}) SELECT {cols} FROM {stage}",
                     f"loading {self.dataset(plan.name)}")


class MysqlTarget(Target):
    """``mysql://user[:password]@host:port/db`` (also ``mariadb://``); LOAD DATA LOCAL INFILE."""

    dialect = "mysql"
    transactional_ddl = False
    index_foreign_keys = False  # InnoDB indexes foreign keys itself

    def __init__(self, url: str, schema: str | None) -> None:
        parts = urlsplit(url)
        database = schema or unquote(parts.path.lstrip("/"))
        if not parts.hostname or not database:
            raise ConfigError(f"target {display_url(url)}: expected mysql://user@host:port/db (or --schema DB)")
        super().__init__(url, database)
        self._params = dict(host=parts.hostname, port=parts.port or 3306, user=unquote(parts.username or "root"),
                            password=unquote(parts.password or ""), charset="utf8mb4", autocommit=True,
                            local_infile=True, connect_timeout=10)
        self._made_database = False
        self._scratch: Path | None = None

    def connect(self) -> None:
        import pymysql

        try:
            self._con = pymysql.connect(**self._params)
        except pymysql.err.MySQLError as exc:
            raise self.unreachable(exc) from exc

    def execute(self, sql: str, what: str) -> None:
        import pymysql

        try:
            with self._con.cursor() as cur:
                cur.execute(sql)
        except pymysql.err.MySQLError as exc:
            raise self.failed(what, exc) from exc

    def existing(self) -> dict[str, list[str]]:
        import pymysql

        out: dict[str, list[str]] = {}
        try:
            with self._con.cursor() as cur:
                cur.execute("SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                            "ORDER BY TABLE_NAME, ORDINAL_POSITION", (self.schema,))
                for table, column in cur.fetchall():
                    out.setdefault(table, []).append(column)
        except pymysql.err.MySQLError as exc:
            raise self.failed("reading the catalog", exc) from exc
        return out

    def prepare_schema(self) -> None:
        import pymysql

        with self._con.cursor() as cur:
            try:
                cur.execute(f"CREATE DATABASE {_ident(self.schema).sql(dialect='mysql')} CHARACTER SET utf8mb4")
                self._made_database = True
            except pymysql.err.ProgrammingError as exc:
                if exc.args[0] != 1007:  # exists
                    raise self.failed(f"creating database {self.schema}", exc) from exc

    def begin(self) -> None:
        self._con.begin()

    def commit(self) -> None:
        import pymysql

        try:
            self._con.commit()
        except pymysql.err.MySQLError as exc:
            raise self.failed("commit", exc) from exc

    def rollback(self) -> None:
        import pymysql

        try:
            self._con.rollback()
        except pymysql.err.MySQLError:
            pass

    def cleanup(self, created: Sequence[TablePlan]) -> None:
        if self._made_database:
            self.execute(f"DROP DATABASE IF EXISTS {_ident(self.schema).sql(dialect='mysql')}", "dropping the new database")
            return
        for plan in reversed(created):
            self.execute(f"DROP TABLE IF EXISTS {self.qualify(plan.name).sql(dialect='mysql')}",
                         f"dropping {self.dataset(plan.name)}")

    def _load(self, table_sql: str, plan: TablePlan, table: pa.Table) -> None:
        """LOAD DATA LOCAL INFILE from a CSV of ``table`` (binary columns as hex)."""
        import pyarrow.csv as pacsv
        import pymysql

        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="microdb-provision-"))
        arrays, targets, sets = [], [], []
        for i, f in enumerate(table.schema):
            col = table.column(i)
            var = f"@v{i}"
            if pa.types.is_boolean(f.type):
                col = col.cast(pa.int8())
            elif pa.types.is_timestamp(f.type):
                if f.type.tz:
                    col = col.cast(pa.timestamp(f.type.unit))
                col = pc.strftime(col, "%Y-%m-%d %H:%M:%S") if len(col) else col.cast(pa.string())
            elif pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
                col = _hex(col)
                sets.append(f"{_ident(f.name).sql(dialect='mysql')} = UNHEX({var})")
                targets.append(var)
                arrays.append(col)
                continue
            elif pa.types.is_date(f.type) or pa.types.is_time(f.type) or pa.types.is_decimal(f.type):
                col = col.cast(pa.string())
            arrays.append(col)
            targets.append(_ident(f.name).sql(dialect="mysql"))
        path = self._scratch / "rows.csv"
        opts = pacsv.WriteOptions(include_header=False, quoting_style="all_valid", null_string="NULL")
        pacsv.write_csv(pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))]), str(path), opts)
        sql = (f"LOAD DATA LOCAL INFILE {self._con.escape(str(path))} INTO TABLE {table_sql} CHARACTER SET utf8mb4 "
               "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' LINES TERMINATED BY '\\n' "
               f"({', '.join(targets)})" + (f" SET {', '.join(sets)}" if sets else ""))
        try:
            with self._con.cursor() as cur:
                cur.execute(sql)
                loaded = cur.rowcount
                cur.execute("SHOW WARNINGS LIMIT 3")
                warnings = cur.fetchall()
        except pymysql.err.MySQLError as exc:
            hint = " (enable local_infile on the server)" if exc.args and exc.args[0] in (1148, 3948, 2068) else ""
            raise self.failed(f"loading {self.dataset(plan.name)}{hint}", exc) from exc
        finally:
            path.unlink(missing_ok=True)
        if warnings:
            raise self.failed(f"loading {self.dataset(plan.name)}", f"the server warned: {warnings}")
        if loaded != table.num_rows:
            raise self.failed(f"loading {self.dataset(plan.name)}", f"took {loaded} of {table.num_rows} rows")

    def append(self, plan: TablePlan, table: pa.Table, fresh: bool) -> None:
        self._load(self.qualify(plan.name).sql(dialect="mysql"), plan, table)

    def _stage(self, plan: TablePlan, table: pa.Table) -> str:
        stage = self.qualify("__mdb_stage").sql(dialect="mysql")
        cols = ", ".join(_ident(c).sql(dialect="mysql") for c in table.column_names)
        self.execute(f"DROP TEMPORARY TABLE IF EXISTS {stage}", "dropping the staging table")
        self.execute(f"CREATE TEMPORARY TABLE {stage} SELECT {cols} FROM {self.qualify(plan.name).sql(dialect='mysql')} "
                     "LIMIT 0", f"staging rows for {self.dataset(plan.name)}")
        self._load(stage, plan, table)
        return stage

    def close(self) -> None:
        super().close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def _hex(col: pa.ChunkedArray) -> pa.Array:
    """Binary values as upper-case hex strings (vectorized through numpy)."""
    import numpy as np

    arr = col.combine_chunks().cast(pa.large_binary())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]: offsets[-1]]
    digits = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
    out = np.empty(len(data) * 2, dtype=np.uint8)
    out[0::2] = digits[data >> 4]
    out[1::2] = digits[data & 0x0F]
    new_offsets = (offsets - offsets[0]) * 2
    return pa.LargeStringArray.from_buffers(len(arr), pa.py_buffer(new_offsets.astype(np.int64)), pa.py_buffer(out.tobytes()),
                                            arr.buffers()[0], arr.null_count).cast(pa.string())


class SqliteTarget(_AdbcTransaction, Target):
    """``sqlite:PATH`` (relative to the current directory; ``sqlite:///abs`` absolute)."""

    dialect = "sqlite"

    def __init__(self, url: str, schema: str | None) -> None:
        if schema not in (None, "main"):
            raise ConfigError(f"target {url}: SQLite has no schemas (got --schema {schema})")
        super().__init__(url, None)
        self.path = file_path(url)

    def connect(self) -> None:
        import adbc_driver_manager
        import adbc_driver_sqlite.dbapi as adbc_sqlite

        self._errors = (adbc_driver_manager.Error,)
        if not self.path.parent.is_dir():
            raise self.unreachable(f"folder {self.path.parent} does not exist")
        try:
            self._con = adbc_sqlite.connect(str(self.path), autocommit=False)
        except adbc_driver_manager.Error as exc:
            raise self.unreachable(exc) from exc

    def existing(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        with self._con.cursor() as cur:
            cur.execute("SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p "
                        "WHERE m.type = 'table' ORDER BY m.name, p.cid")
            for table, column in cur.fetchall():
                out.setdefault(table, []).append(column)
        return out

    @staticmethod
    def _sqlite_arrow(table: pa.Table) -> pa.Table:
        """Dates, times and timestamps as ISO text, decimals as text (SQLite's own forms)."""
        arrays = []
        for f, col in zip(table.schema, table.columns):
            if pa.types.is_timestamp(f.type):
                if f.type.tz:
                    col = col.cast(pa.timestamp(f.type.unit))
                col = pc.strftime(col, "%Y-%m-%d %H:%M:%S") if len(col) else col.cast(pa.string())
            elif pa.types.is_date(f.type) or pa.types.is_time(f.type) or pa.types.is_decimal(f.type):
                col = col.cast(pa.string())
            arrays.append(col)
        return _plain_arrow(pa.Table.from_arrays(arrays, names=table.column_names))

    def _ingest(self, name: str, table: pa.Table, what: str, **kw: Any) -> None:
        try:
            with self._con.cursor() as cur:
                cur.adbc_ingest(name, self._sqlite_arrow(table), **kw)
        except self._errors as exc:
            raise self.failed(what, exc) from exc

    def append(self, plan: TablePlan, table: pa.Table, fresh: bool) -> None:
        self._ingest(plan.name, table, f"loading {plan.name}", mode="append")

    def _stage(self, plan: TablePlan, table: pa.Table) -> str:
        self.execute('DROP TABLE IF EXISTS temp."__mdb_stage"', "dropping the staging table")
        self._ingest("__mdb_stage", table, f"staging rows for {plan.name}", mode="create", temporary=True)
        return 'temp."__mdb_stage"'

    def after_load(self, plans: Sequence[TablePlan]) -> None:
        with self._con.cursor() as cur:
            cur.execute("PRAGMA foreign_key_check")
            bad = cur.fetchall()
        if bad:
            table, _, parent, _ = bad[0]
            raise SchemaError(f"{self.label}: {len(bad)}+ rows of {table} reference rows missing from {parent} "
                              "(the foreign key does not hold for the provisioned rows)")


class DuckdbTarget(Target):
    """``duckdb:PATH``; Arrow scans inside one transaction."""

    dialect = "duckdb"
    index_foreign_keys = False  # DuckDB indexes key columns itself

    def __init__(self, url: str, schema: str | None) -> None:
        super().__init__(url, schema or "main")
        self.path = file_path(url)

    def connect(self) -> None:
        import duckdb

        if not self.path.parent.is_dir():
            raise self.unreachable(f"folder {self.path.parent} does not exist")
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            raise self.unreachable(exc) from exc

    def execute(self, sql: str, what: str) -> None:
        import duckdb

        try:
            self._con.execute(sql)
        except duckdb.Error as exc:
            raise self.failed(what, exc) from exc

    def existing(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        rows = self._con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = ? "
            "AND table_catalog = current_database() ORDER BY table_name, ordinal_position", [self.schema]).fetchall()
        for table, column in rows:
            out.setdefault(table, []).append(column)
        return out

    def prepare_schema(self) -> None:
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(self.schema).sql(dialect='duckdb')}", "creating the schema")

    def begin(self) -> None:
        self._con.begin()

    def commit(self) -> None:
        self.execute("COMMIT", "commit")
        self.execute("CHECKPOINT", "checkpoint")

    def rollback(self) -> None:
        import duckdb

        try:
            self._con.rollback()
        except duckdb.Error:
            pass

    def clear(self, plans: Sequence[TablePlan]) -> None:
        """DuckDB checks foreign keys eagerly, even on deletes inside one transaction: drop
        the tables (children first) and create them again."""
        for plan in reversed(plans):
            self.execute(f"DROP TABLE {self.qualify(plan.name).sql(dialect='duckdb')}", f"emptying {self.dataset(plan.name)}")
        for plan in plans:
            self.create(plan, None)

    def _stage(self, plan: TablePlan, table: pa.Table) -> str:
        self._con.register("__mdb_stage", table)
        return "__mdb_stage"

    def append(self, plan: TablePlan, table: pa.Table, fresh: bool) -> None:
        cols = ", ".join(_ident(c).sql(dialect="duckdb") for c in plan.column_names)
        stage = self._stage(plan, table)
        self.execute(f"INSERT INTO {self.qualify(plan.name).sql(dialect='duckdb')} ({cols}) SELECT {cols} FROM {stage}",
                     f"loading {self.dataset(plan.name)}")


_TARGETS: dict[str, type[Target]] = {
    "postgresql": PostgresTarget, "postgres": PostgresTarget, "mysql": MysqlTarget, "mariadb": MysqlTarget,
    "sqlite": SqliteTarget, "duckdb": DuckdbTarget,
}


def open_target(url: str, schema: str | None = None) -> Target:
    """The target for ``url`` (not connected yet)."""
    scheme = url.partition(":")[0].lower()
    cls = _TARGETS.get(scheme)
    if cls is None or ":" not in url:
        raise ConfigError(f"unknown target {display_url(url)!r}: use postgresql://…, mysql://…, sqlite:PATH or duckdb:PATH")
    return cls(url, schema)


# --------------------------------------------------------------------------- writing


def _check_existing(target: Target, plans: Sequence[TablePlan], existing: dict[str, list[str]], mode: str) -> None:
    clashes = [p.name for p in plans if p.name in existing and mode in ("create", "schema_only")]
    if clashes:
        raise SchemaError(f"{target.label} already has table(s) {', '.join(target.dataset(n) for n in clashes)} "
                          "(use --truncate to replace their rows, --upsert to merge, or another --schema)")
    for plan in plans:
        have = existing.get(plan.name)
        if have is None:
            continue
        missing = [c for c in plan.column_names if c not in have]
        extra = [c for c in have if c not in plan.column_names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"it lacks column(s) {', '.join(missing)}")
            if extra:
                parts.append(f"it has column(s) {', '.join(extra)} the provisioned rows do not")
            raise SchemaError(f"{target.label}: table {target.dataset(plan.name)} exists with other columns: "
                              + "; ".join(parts))
        if mode == "upsert" and not plan.primary_key and plan.replace_by is None:
            raise SchemaError(f"{target.label}: table {target.dataset(plan.name)} has no primary key in the source, "
                              "so rows cannot be upserted (use --truncate)")


def _write(target: Target, plans: Sequence[TablePlan], data: dict[str, pa.Table], mode: str,
           batch_rows: int, progress: Progress) -> dict[str, int]:
    """Create, clear and load in one transaction where the target allows; clean up otherwise."""
    existing = target.existing()
    _check_existing(target, plans, existing, mode)
    ordered = [p for p in plans]
    for plan in ordered:  # every type must map before anything is written
        target.create_sql(plan, data.get(plan.name))
    created: list[TablePlan] = []
    rows: dict[str, int] = {}
    total = 0 if mode == "schema_only" else sum(data[p.name].num_rows for p in ordered)
    done = 0
    if not target.transactional_ddl:
        target.prepare_schema()
    try:
        if not target.transactional_ddl:
            for plan in ordered:
                if plan.name not in existing:
                    target.create(plan, data.get(plan.name))
                    created.append(plan)
        target.begin()
        if target.transactional_ddl:
            target.prepare_schema()
            for plan in ordered:
                if plan.name not in existing:
                    target.create(plan, data.get(plan.name))
                    created.append(plan)
        if mode == "truncate":
            target.clear([p for p in ordered if p.name in existing])
        fresh = {p.name for p in created} | ({p.name for p in ordered} if mode == "truncate" and target.dialect == "duckdb" else set())
        progress("loading rows", 0, total)
        if mode != "schema_only":
            for plan in ordered:
                table = data[plan.name].select(plan.column_names)
                replace = mode == "upsert" and plan.name not in fresh and not plan.primary_key
                if replace and plan.replace_by is not None:
                    link = plan.replace_by
                    parents = data[link.parent].select(list(link.parent_columns)).rename_columns(list(link.columns))
                    parents = parents.group_by(list(link.columns), use_threads=False).aggregate([])
                    target.delete_matching(plan, link.columns, parents)
                for start in range(0, table.num_rows, batch_rows):
                    batch = table.slice(start, batch_rows)
                    if mode == "upsert" and plan.name not in fresh and not replace:
                        target.upsert(plan, batch)
                    else:
                        target.append(plan, batch, fresh=plan.name in fresh)
                    done += batch.num_rows
                    progress("loading rows", done, total)
                rows[plan.name] = table.num_rows
        target.finish([p for p in created])
        target.after_load(ordered)
        target.commit()
    except BaseException:
        target.rollback()
        if not target.transactional_ddl:
            target.cleanup(created)
        raise
    return rows


# --------------------------------------------------------------------------- the API


def provision(
    ws: Workspace,
    target_url: str,
    *,
    etype: str | None = None,
    keys: Iterable[str] | None = None,
    where: str | None = None,
    sample: int | None = None,
    stratify: str | None = None,
    seed: int = 0,
    bundle: Any = None,
    role: str | None = None,
    mode: str = "create",
    schema: str | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: Progress = _no_progress,
) -> ProvisionResult:
    """Write entities of ``etype`` as ``role`` sees them — or a released synthetic
    ``bundle`` — into the database at ``target_url``; see the module docstring."""
    started = time.perf_counter()
    if mode not in MODES:
        raise ConfigError(f"unknown provisioning mode {mode!r} (one of {', '.join(MODES)})")
    target = open_target(target_url, schema)
    audit: dict[str, Any] = dict(target=display_url(target_url), schema=target.schema, mode=mode)
    role_name: str | None = None
    if bundle is None:
        etype = default_type(ws, etype)
    scope = f"{etype or 'bundle'}/*"
    try:
        target.connect()  # an unreachable target fails before any entity is read
        data, et, role_name, entities, withheld, details, source = _data(
            ws, etype, keys, where, sample, stratify, seed, bundle, role, mode, progress)
        scope = f"{et.name}/*"
        audit.update(entities=entities, **details)
        plans, skipped = plan_tables(ws, et, data)
        result = ProvisionResult(display_url(target_url), target.schema, mode, et.name, entities, {},
                                 withheld=withheld, skipped_links=skipped, bundle=details.get("bundle"))
        with _lineage(ws, et, target, plans, data, role_name, audit, source):
            result.rows = _write(target, plans, data, mode, batch_rows, progress)
    except MicrodbError as exc:
        ws.record("provision", "error", role=role_name, entity=scope, error=exc.message, details=audit)
        raise
    finally:
        target.close()
    result.seconds = time.perf_counter() - started
    ws.record("provision", role=role_name, entity=scope, rows=result.total_rows,
              details={**audit, "tables": result.rows, "seconds": round(result.seconds, 3)})
    return result


def _data(ws: Workspace, etype: str | None, keys: Iterable[str] | None, where: str | None, sample: int | None,
          stratify: str | None, seed: int, bundle: Any, role: str | None, mode: str,
          progress: Progress) -> tuple[dict[str, pa.Table], EntityType, str | None, int, list[str], dict, str]:
    """(tables parents first, entity type, role, entity count, withheld, audit details, lineage input)."""
    if bundle is not None:
        if any(v is not None for v in (keys, where, sample, stratify)) or role is not None:
            raise ConfigError("a bundle is provisioned whole: --keys, --where, --sample and --role do not apply")
        b = ws.bundle(bundle) if isinstance(bundle, (str, os.PathLike)) else bundle
        overridden = b.status == "rejected" and bool((b.manifest or {}).get("overrides"))
        if b.status != "released" and not overridden:
            raise AccessDenied(f"bundle {b.id} is {b.status}, not released: it cannot be provisioned "
                               "(a bundle that fails the charter, or is retired, never leaves the workspace)")
        et = ws.entity_type(b.entity_type)
        if etype is not None and etype != et.name:
            raise ConfigError(f"bundle holds {et.name!r} entities, not {etype!r}")
        tables = {n: _plain_arrow(t) for n, t in b.tables().items()}
        if mode == "schema_only":
            tables = {n: t.slice(0, 0) for n, t in tables.items()}
        manifest = getattr(b, "manifest", {}) or {}
        root = tables.get(et.root)
        entities = root.num_rows if root is not None else int(manifest.get("entities", 0))
        name = str(b.id)
        return tables, et, None, entities, [], {"bundle": name}, f"bundle/{name}"
    et = ws.entity_type(default_type(ws, etype))
    role_name = ws._role(role)
    choice = Choice(tuple(str(k) for k in keys) if keys is not None else None, where, sample, stratify, seed)
    chosen = [] if mode == "schema_only" else choose(ws, et.name, choice, role_name)
    es: EntitySet = gather(ws, et.name, chosen, role_name, progress=progress)
    tables = es.plain()
    ordered = {r.name: tables[r.name] for r in et.references if r.name in tables}
    ordered.update({t.name: tables[t.name] for t in et.tables if t.name in tables})
    if mode == "schema_only":
        ordered = {n: t.slice(0, 0) for n, t in ordered.items()}
    details = {"selection": choice.describe(), "policy": ws.policies.fingerprint(role_name)}
    return ordered, et, role_name, len(chosen), es.withheld, details, f"store/{et.name}"


def default_type(ws: Workspace, etype: str | None) -> str:
    """``etype``, or the workspace's only entity type."""
    if etype is not None:
        return etype
    names = list(ws.config.entities)
    if len(names) != 1:
        raise ConfigError(f"name the entity type (--type): this workspace has {', '.join(names) or 'none'}")
    return names[0]


def _lineage(ws: Workspace, et: EntityType, target: Target, plans: Sequence[TablePlan], data: dict[str, pa.Table],
             role: str | None, audit: dict, source: str) -> Any:
    """An OpenLineage run: the store (or bundle) in, the target's tables out."""
    from contextlib import nullcontext

    emitter = ws.lineage()
    if emitter is None:
        return nullcontext()
    from lineage.events import DatasetRef, MicrodbRunFacet

    ns = display_url(target.url)
    outputs = [DatasetRef.from_arrow(ns, target.dataset(p.name), data[p.name].schema) for p in plans]
    inputs = [DatasetRef(f"microdb://{ws.root}", source)]
    facet = MicrodbRunFacet(
        policy_hash=ws.policies.fingerprint(role) if role else None,
        parameters={k: v for k, v in audit.items() if k in ("mode", "entities", "selection", "schema")},
        bundle=audit.get("bundle"),
    )
    return emitter.run(f"provision.{et.name}", inputs, outputs, {"microdb": facet})


# --------------------------------------------------------------------------- export & mount


def export_set(ws: Workspace, etype: str, output: Path, *, keys: Iterable[str] | None = None, where: str | None = None,
               sample: int | None = None, stratify: str | None = None, seed: int = 0, role: str | None = None,
               overwrite: bool = False, progress: Progress = _no_progress) -> tuple[Path, dict[str, int]]:
    """Many entities as ``role`` sees them: one ``.duckdb`` file (keys and foreign keys
    declared), or a folder with one Parquet file per table. Written aside, then moved."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise MicrodbError(f"{output} exists (pass --force to overwrite)")
    et = ws.entity_type(etype)
    role_name = ws._role(role)
    choice = Choice(tuple(str(k) for k in keys) if keys is not None else None, where, sample, stratify, seed)
    chosen = choose(ws, et.name, choice, role_name)
    es = gather(ws, et.name, chosen, role_name, progress=progress)
    tables = es.plain()
    ordered = {r.name: tables[r.name] for r in et.references if r.name in tables}
    ordered.update({t.name: tables[t.name] for t in et.tables if t.name in tables})
    tmp = output.with_name(output.name + ".tmp")
    _remove(tmp)
    try:
        if output.suffix == ".duckdb":
            target = DuckdbTarget(f"duckdb://{tmp.resolve()}", None)
            plans, _ = plan_tables(ws, et, ordered)
            target.connect()
            try:
                _write(target, plans, ordered, "create", BATCH_ROWS, progress)
            finally:
                target.close()
        else:
            import pyarrow.parquet as pq

            tmp.mkdir(parents=True)
            for name, table in ordered.items():
                pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
        _remove(output)
        os.replace(tmp, output)
    except BaseException:
        _remove(tmp)
        raise
    rows = {n: t.num_rows for n, t in ordered.items()}
    ws.record("export", role=role_name, entity=f"{et.name}/*", rows=sum(rows.values()),
              details={"path": str(output), "entities": len(chosen), "selection": choice.describe(), "tables": rows})
    return output, rows


def mount(ws: Workspace, directory: Path, etype: str, *, keys: Iterable[str] | None = None, where: str | None = None,
          role: str | None = None, progress: Progress = _no_progress) -> tuple[Path, int]:
    """A folder with one ``.duckdb`` micro-database per entity (its tables and the reference
    tables), as ``role`` sees it; file names are the URL-quoted keys."""
    import duckdb
    import numpy as np

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    et = ws.entity_type(etype)
    role_name = ws._role(role)
    choice = Choice(tuple(str(k) for k in keys) if keys is not None else None, where)
    chosen = choose(ws, et.name, choice, role_name)
    es = gather(ws, et.name, chosen, role_name, progress=progress, all_references=True)
    slices: dict[str, dict[str, tuple[int, int]]] = {}
    for name, table in es.tables.items():
        owners = table.column(ENTITY_COLUMN)
        values, starts = _runs(owners)
        ends = np.append(starts[1:], table.num_rows)
        slices[name] = {v: (int(s), int(e)) for v, s, e in zip(values, starts, ends)}
    progress("writing micro-databases", 0, len(chosen))
    for i, key in enumerate(chosen):
        address = f"{et.name}/{key}"
        path = directory / f"{quote(key, safe='')}.duckdb"
        tmp = path.with_name(path.name + ".tmp")
        _remove(tmp)
        con = duckdb.connect(str(tmp))
        try:
            for name, table in es.tables.items():
                lo, hi = slices[name].get(address, (0, 0))
                con.register("__mdb_src", table.slice(lo, hi - lo).drop_columns([ENTITY_COLUMN]))
                con.execute(f"CREATE TABLE {_ident(name).sql(dialect='duckdb')} AS SELECT * FROM __mdb_src")
                con.unregister("__mdb_src")
            for name, table in es.references.items():
                con.register("__mdb_src", table)
                con.execute(f"CREATE TABLE {_ident(name).sql(dialect='duckdb')} AS SELECT * FROM __mdb_src")
                con.unregister("__mdb_src")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, path)
        progress("writing micro-databases", i + 1, len(chosen))
    ws.record("mount", role=role_name, entity=f"{et.name}/*", rows=sum(es.rows().values()),
              details={"path": str(directory), "entities": len(chosen), "selection": choice.describe()})
    return directory, len(chosen)


def _runs(values: pa.ChunkedArray) -> tuple[list[str], Any]:
    import numpy as np

    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if len(arr) == 0:
        return [], np.zeros(0, dtype=np.int64)
    enc = arr.dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1])
    return [enc.dictionary[int(codes[s])].as_py() for s in starts], starts


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        wal.unlink()
