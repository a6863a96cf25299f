"""What every source connector shares: the catalog model, read filters and the Source contract.

A connector is one module with the same parts: URL parsing, catalog introspection, a bulk
reader into Arrow, and error mapping into :class:`~microdb.errors.SourceError`. The base
class does the checks that must behave identically everywhere (unknown table or column,
key normalization, chunking of key lists, the final cast to the catalog's Arrow types), so
the same table read from any source comes back with the same schema.

Arrow types are normalized across systems: every integer is ``int64``, every float
``float64``, text ``string``, dates ``date32``, timestamps ``timestamp('us')`` (with
``tz='UTC'`` for zone-aware columns), decimals ``decimal128(p, s)`` (``decimal256`` above
38 digits). Returned fields are always nullable; ``Column.nullable`` tells what the source
declares.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from microdb.errors import ConfigError, SchemaError, SourceError

KEY_CHUNK = 10_000
"""Most keys sent in one statement; longer key lists become one query per chunk."""

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


# ------------------------------------------------------------------------------ catalog


@dataclass(frozen=True)
class Column:
    """A column and the Arrow type the reader returns for it."""

    name: str
    type: pa.DataType
    nullable: bool = True


@dataclass(frozen=True)
class ForeignKey:
    """``columns`` of this table reference ``ref_columns`` of ``ref_table`` (same source), in order."""

    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    """One table: columns in source order, primary key (``()`` when none) and foreign keys."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...]

    def column(self, name: str) -> Column:
        """The column called ``name``; SchemaError naming the table and its columns otherwise."""
        for col in self.columns:
            if col.name == name:
                return col
        known = ", ".join(c.name for c in self.columns)
        raise SchemaError(f"table {self.name!r} has no column {name!r} (columns: {known})")

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema a full read of this table returns."""
        return pa.schema([pa.field(c.name, c.type) for c in self.columns])


@dataclass(frozen=True)
class Catalog:
    """The tables one source exposes."""

    source: str
    tables: dict[str, TableInfo] = field(default_factory=dict)

    def table(self, name: str) -> TableInfo:
        """The table called ``name``; SchemaError naming the source and its tables otherwise."""
        info = self.tables.get(name)
        if info is None:
            known = ", ".join(sorted(self.tables)) or "none"
            raise SchemaError(f"source {self.source!r} has no table {name!r} (tables: {known})")
        return info


# ------------------------------------------------------------------------------ filters


@dataclass(frozen=True)
class KeyIn:
    """Keep rows whose `columns` tuple is among the rows of `values` (an Arrow table with those column names)."""

    columns: tuple[str, ...]
    values: pa.Table


@dataclass(frozen=True)
class Since:
    """Keep rows with column > value (watermark for incremental sync).

    A naive ``value`` is taken as UTC when the column is zone-aware; an aware one is
    converted to UTC when the column is naive. On a date column the value's date is used.
    """

    column: str
    value: datetime


# ------------------------------------------------------------------------------ types


def normalize_type(t: pa.DataType) -> pa.DataType:
    """The catalog type for an Arrow type a file or driver reports (see module docstring)."""
    if pa.types.is_dictionary(t):
        return normalize_type(t.value_type)
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t):
        return pa.string()
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t)):
        return pa.binary()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC" if t.tz else None)
    if pa.types.is_date(t):
        return pa.date32()
    if pa.types.is_time(t):
        return pa.time64("us")
    return t


def decimal_type(precision: int, scale: int) -> pa.DataType:
    """``decimal128`` up to 38 digits, ``decimal256`` beyond."""
    if precision <= 38:
        return pa.decimal128(precision, scale)
    return pa.decimal256(min(precision, 76), scale)


_DECIMAL_ARGS = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def sql_type_to_arrow(declared: str) -> pa.DataType | None:
    """The Arrow type for a declared SQL type such as ``NUMERIC(12,2)`` or ``VARCHAR(20)``.

    Returns None when the name says nothing (read such columns as text). Follows SQLite's
    name-based rules, which are loose enough for other engines' spellings too.
    """
    decl = declared.strip().upper()
    if not decl:
        return None
    if "BOOL" in decl:
        return pa.bool_()
    if "TIMESTAMP" in decl or "DATETIME" in decl:
        aware = "WITH TIME ZONE" in decl or "TIMESTAMPTZ" in decl
        return pa.timestamp("us", tz="UTC" if aware else None)
    if decl.startswith("DATE"):
        return pa.date32()
    if decl.startswith(("DECIMAL", "NUMERIC")):
        m = _DECIMAL_ARGS.search(decl)
        if m:
            return decimal_type(int(m.group(1)), int(m.group(2) or 0))
        return pa.float64()
    if "INT" in decl:
        return pa.int64()
    if any(k in decl for k in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    if any(k in decl for k in ("CHAR", "CLOB", "TEXT", "STRING", "UUID", "JSON")):
        return pa.string()
    if "BLOB" in decl or "BINARY" in decl or "BYTEA" in decl:
        return pa.binary()
    return None


# ------------------------------------------------------------------------------ URLs


def display_url(url: str) -> str:
    """The URL with user and password replaced by ``…``, safe for messages and logs."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="…@" + parts.netloc.rsplit("@", 1)[1])
    if "password" in parts.query.lower():
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = "&".join(f"{quote(k)}={'…' if k.lower() == 'password' else quote(v)}" for k, v in pairs)
        parts = parts._replace(query=query)
    return urlunsplit(parts)


def file_path(url: str, base_dir: Path | None = None) -> Path:
    """The absolute path a file URL names: ``scheme:///abs`` is absolute, ``scheme:rel`` and
    ``scheme://rel`` are relative to ``base_dir`` (default: the current directory)."""
    rest = url.partition(":")[2]
    if rest.startswith("///"):
        path = Path("/" + rest[3:].lstrip("/"))
    else:
        path = Path(rest[2:] if rest.startswith("//") else rest).expanduser()
    if not str(path) or str(path) == ".":
        raise ConfigError(f"source URL {url!r} names no file or folder")
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path.resolve()


# ------------------------------------------------------------------------------ contract


def assemble_tables(
    columns: dict[str, list[Column]], key_rows: Sequence[dict], primary_kind: str, schema: str
) -> dict[str, TableInfo]:
    """Tables from per-table columns and catalog key rows.

    ``key_rows`` hold ``tbl, kind, name, col, ref_schema, ref_table, ref_col`` ordered by
    constraint and column position; ``kind == primary_kind`` marks primary-key columns.
    Foreign keys into other schemas are not part of this source and are left out.
    """
    primary: dict[str, tuple[str, ...]] = {}
    foreign: dict[tuple[str, str], list[dict]] = {}
    for row in key_rows:
        if row["kind"] == primary_kind:
            primary[row["tbl"]] = primary.get(row["tbl"], ()) + (row["col"],)
        elif row["ref_schema"] == schema:
            foreign.setdefault((row["tbl"], row["name"]), []).append(row)
    fks: dict[str, list[ForeignKey]] = {}
    for (tbl, _), rows in sorted(foreign.items()):
        fks.setdefault(tbl, []).append(
            ForeignKey(tuple(r["col"] for r in rows), rows[0]["ref_table"], tuple(r["ref_col"] for r in rows))
        )
    return {t: TableInfo(t, tuple(c), primary.get(t, ()), tuple(fks.get(t, ()))) for t, c in columns.items()}


class Source(ABC):
    """A named system microdb reads from, in bulk, into Arrow.

    ``queries`` counts every statement sent to the underlying system (catalog and reads);
    a file source counts one per table scan.
    """

    scheme: ClassVar[str]
    key_chunk: ClassVar[int | None] = KEY_CHUNK

    def __init__(self, name: str, url: str, options: dict | None = None) -> None:
        self.name = name
        self.url = url
        self.options: dict[str, Any] = dict(options or {})
        self.queries = 0
        self._catalog: Catalog | None = None
        self._lock = threading.RLock()
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {display_url(self.url)!r})"

    @property
    def label(self) -> str:
        """``source 'crm' (sqlite:///…/crm.sqlite)``: how messages name this source."""
        return f"source {self.name!r} ({display_url(self.url)})"

    # public -----------------------------------------------------------------------------
    def catalog(self) -> Catalog:
        """Tables, columns with Arrow types, primary and foreign keys (introspected once)."""
        with self._lock:
            self._check_open()
            if self._catalog is None:
                self._catalog = Catalog(self.name, self._load_catalog())
            return self._catalog

    def read(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        key_in: KeyIn | None = None,
        since: Since | None = None,
    ) -> pa.Table:
        """One bulk read of ``table`` into Arrow, filtered by keys and/or a watermark.

        The result has exactly the catalog's types for ``columns`` (default: all), in the
        requested order. An empty ``key_in`` returns an empty table without a query.
        """
        info = self.catalog().table(table)
        names = [c.name for c in info.columns] if columns is None else list(columns)
        if not names:
            raise SchemaError(f"{self.label}: a read of {table!r} must ask for at least one column")
        if len(set(names)) != len(names):
            raise SchemaError(f"{self.label}: columns of {table!r} asked for twice: {names}")
        schema = pa.schema([pa.field(n, info.column(n).type) for n in names])
        if since is not None:
            since = self._check_since(info, since)
        with self._lock:
            self._check_open()
            if key_in is None:
                return self._conform(self._read(info, names, None, since), schema, info)
            keys = self._normalize_keys(info, key_in)
            if keys.num_rows == 0:
                return schema.empty_table()
            step = self.key_chunk or keys.num_rows
            parts = [
                self._conform(self._read(info, names, keys.slice(start, step), since), schema, info)
                for start in range(0, keys.num_rows, step)
            ]
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def ping(self) -> None:
        """Raise SourceError if the source cannot be reached right now."""
        with self._lock:
            self._check_open()
            self._ping()

    def close(self) -> None:
        """Release connections; the source refuses use afterwards."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    # for connectors ---------------------------------------------------------------------
    @abstractmethod
    def _load_catalog(self) -> dict[str, TableInfo]:
        """Introspect every table (a fixed, small number of statements)."""

    @abstractmethod
    def _read(self, info: TableInfo, names: list[str], keys: pa.Table | None, since: Since | None) -> pa.Table:
        """Run one read; ``keys`` is already typed, distinct, null-free and at most ``key_chunk`` rows."""

    @abstractmethod
    def _ping(self) -> None: ...

    def _close(self) -> None:
        """Release driver resources."""

    def unreachable(self, reason: object) -> SourceError:
        """The error for a source that cannot be reached, with what to check."""
        text = " ".join(str(reason).split())
        return SourceError(
            f"{self.label} is unreachable: {text} (check that the server is running and that the "
            "host, port, database and credentials of the source are right)"
        )

    def failed(self, what: str, reason: object) -> SourceError:
        """The error for a statement the source refused."""
        text = " ".join(str(reason).split())
        return SourceError(f"{self.label}: {what} failed: {text}")

    # shared checks ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SourceError(f"{self.label} is closed")

    def _check_since(self, info: TableInfo, since: Since) -> Since:
        col = info.column(since.column)
        value = since.value
        if not isinstance(value, datetime):
            raise SchemaError(f"{self.label}: watermark for {info.name}.{col.name} must be a datetime, got {value!r}")
        if pa.types.is_timestamp(col.type):
            if col.type.tz:
                value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
            elif value.tzinfo is not None:
                value = value.astimezone(timezone.utc).replace(tzinfo=None)
        elif not pa.types.is_date(col.type):
            raise SchemaError(
                f"{self.label}: watermark column {info.name}.{col.name} is {col.type}, not a date or timestamp"
            )
        return Since(col.name, value)

    def _normalize_keys(self, info: TableInfo, key_in: KeyIn) -> pa.Table:
        """The key values cast to the catalog types, without nulls (they never match) or repeats."""
        names = list(key_in.columns)
        if not names or len(set(names)) != len(names):
            raise SchemaError(f"{self.label}: key columns for {info.name!r} must be distinct and non-empty: {names}")
        missing = [n for n in names if n not in key_in.values.column_names]
        if missing:
            raise SchemaError(
                f"{self.label}: key values for {info.name!r} lack columns {missing} "
                f"(they have {key_in.values.column_names})"
            )
        arrays = []
        for n in names:
            target = info.column(n).type
            values = key_in.values.column(n)
            try:
                arrays.append(values if values.type == target else values.cast(target))
            except _CAST_ERRORS as exc:
                raise SchemaError(
                    f"{self.label}: key values for {info.name}.{n} ({values.type}) do not fit {target}: {exc}"
                ) from None
        keys = pa.Table.from_arrays(arrays, names=names)
        valid = None
        for arr in arrays:
            ok = pc.is_valid(arr)
            valid = ok if valid is None else pc.and_(valid, ok)
        keys = keys.filter(valid)
        return keys.group_by(names, use_threads=False).aggregate([])

    def _conform(self, raw: pa.Table, schema: pa.Schema, info: TableInfo) -> pa.Table:
        """Cast a driver's result, column by column in order, to the catalog's types."""
        if raw.num_columns != len(schema):
            raise SourceError(
                f"{self.label}: read of {info.name!r} returned {raw.num_columns} columns, expected {len(schema)}"
            )
        arrays = []
        for target, arr in zip(schema, raw.columns):
            if arr.type != target.type:
                if arr.null_count == len(arr):
                    arr = pa.nulls(len(arr), target.type)
                else:
                    try:
                        arr = arr.cast(target.type)
                    except _CAST_ERRORS as exc:
                        raise SchemaError(
                            f"{self.label}: column {info.name}.{target.name} holds values that are not "
                            f"{target.type}: {exc}"
                        ) from None
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=schema)


# ------------------------------------------------------------------------------ SQL sources


def _python_value_literal(value: Any, t: pa.DataType) -> exp.Expression:
    if pa.types.is_boolean(t):
        return exp.Boolean(this=bool(value))
    if pa.types.is_integer(t):
        return exp.Literal.number(int(value))
    if pa.types.is_floating(t):
        if value != value or value in (float("inf"), float("-inf")):
            raise SchemaError(f"cannot use {value!r} as a key value")
        return exp.Literal.number(repr(float(value)))
    if pa.types.is_decimal(t):
        return exp.Literal.number(format(Decimal(value), "f"))
    if pa.types.is_string(t):
        return exp.Literal.string(value)
    raise SchemaError(f"key values of type {t} are not supported by SQL sources")


class SqlSource(Source):
    """A source that speaks SQL: statements are built as sqlglot trees in ``dialect``.

    Connectors fill in how to run a statement (``_fetch``), which table expression to read
    and which columns must travel as text (``_as_text``); literals, key lists and
    watermarks are rendered here so identifiers and values are always quoted by sqlglot.
    """

    dialect: ClassVar[str]
    temporal_casts: ClassVar[bool] = True  # CAST('…' AS DATE/TIMESTAMP) around date and time literals

    def __init__(self, name: str, url: str, options: dict | None = None) -> None:
        super().__init__(name, url, options)
        self._as_text: set[tuple[str, str]] = set()
        self._con: Any = None  # the driver connection, opened on first use

    @abstractmethod
    def _fetch(self, sql: str, what: str) -> pa.Table:
        """Run one statement (counting it in ``queries``) and return its rows as Arrow."""

    def _ping(self) -> None:
        self._fetch("SELECT 1", "ping")

    def _close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()

    def _table_expr(self, table: str) -> exp.Table:
        return exp.table_(table, quoted=True)

    def _column_ref(self, table: str, column: str) -> exp.Expression:
        return exp.column(column, quoted=True)

    def _select_item(self, table: str, column: str) -> exp.Expression:
        ref = self._column_ref(table, column)
        if (table, column) in self._as_text:
            return exp.cast(ref, exp.DataType.build("text")).as_(column, quoted=True)
        return ref

    def _literal(self, value: Any, t: pa.DataType) -> exp.Expression:
        """A sqlglot literal for one Python value of Arrow type ``t``."""
        if value is None:
            return exp.null()
        if pa.types.is_timestamp(t):
            if t.tz:
                text = value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
            else:
                text = value.strftime("%Y-%m-%d %H:%M:%S.%f")
            lit = exp.Literal.string(text)
            if not self.temporal_casts:
                return lit
            return exp.cast(lit, exp.DataType.build("timestamptz" if t.tz else "timestamp"))
        if pa.types.is_date(t):
            day = value.date() if isinstance(value, datetime) else value
            lit = exp.Literal.string(date.isoformat(day))
            return exp.cast(lit, exp.DataType.build("date")) if self.temporal_casts else lit
        return _python_value_literal(value, t)

    def _key_filter(self, info: TableInfo, keys: pa.Table) -> exp.Expression:
        """``col IN (…)`` for one key column, ``(a, b) IN ((…), …)`` for several."""
        types = [info.column(n).type for n in keys.column_names]
        columns = [keys.column(i).to_pylist() for i in range(keys.num_columns)]
        refs = [self._column_ref(info.name, n) for n in keys.column_names]
        if len(refs) == 1:
            return exp.In(this=refs[0], expressions=[self._literal(v, types[0]) for v in columns[0]])
        rows = [exp.Tuple(expressions=[self._literal(v, t) for v, t in zip(row, types)]) for row in zip(*columns)]
        return self._row_in(exp.Tuple(expressions=refs), rows)

    def _row_in(self, lhs: exp.Tuple, rows: list[exp.Tuple]) -> exp.Expression:
        return exp.In(this=lhs, expressions=rows)

    def _since_filter(self, info: TableInfo, since: Since) -> exp.Expression:
        t = info.column(since.column).type
        return exp.GT(this=self._column_ref(info.name, since.column), expression=self._literal(since.value, t))

    def build_select(self, info: TableInfo, names: list[str], keys: pa.Table | None, since: Since | None) -> str:
        """The SELECT statement for one read, as SQL text in this source's dialect."""
        query = exp.select(*(self._select_item(info.name, n) for n in names)).from_(self._table_expr(info.name))
        conditions = []
        if keys is not None:
            conditions.append(self._key_filter(info, keys))
        if since is not None:
            conditions.append(self._since_filter(info, since))
        if conditions:
            query = query.where(exp.and_(*conditions) if len(conditions) > 1 else conditions[0])
        return query.sql(dialect=self.dialect)

    def _read(self, info: TableInfo, names: list[str], keys: pa.Table | None, since: Since | None) -> pa.Table:
        return self._fetch(self.build_select(info, names, keys, since), f"read of {info.name!r}")

    def _literal_sql(self, value: str) -> str:
        """A string literal in this dialect, for catalog queries that filter by a name."""
        return exp.Literal.string(value).sql(dialect=self.dialect)
