"""What every source connector provides: a catalog (tables, columns with their Arrow
types, primary and foreign keys) and bulk reads into Arrow with pushed-down filters.

Each statement sent to the underlying system is counted in ``Source.queries``, so tests
and benchmarks can prove that projection cost does not grow with the number of entities.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import pyarrow as pa
from sqlglot import exp

from microdb.errors import SchemaError

KEY_CHUNK = 10_000


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool = True


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.columns)
        raise SchemaError(f"table {self.name!r} has no column {name!r} (columns: {known})")

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, c.nullable) for c in self.columns])


@dataclass(frozen=True)
class Catalog:
    source: str
    tables: dict[str, TableInfo]

    def table(self, name: str) -> TableInfo:
        try:
            return self.tables[name]
        except KeyError:
            known = ", ".join(sorted(self.tables)) or "none"
            raise SchemaError(f"source {self.source!r} has no table {name!r} (tables: {known})") from None


@dataclass(frozen=True)
class KeyIn:
    """Keep rows whose ``columns`` tuple is among the rows of ``values``."""

    columns: tuple[str, ...]
    values: pa.Table


@dataclass(frozen=True)
class Since:
    """Keep rows with ``column > value`` (the watermark of an incremental sync)."""

    column: str
    value: datetime


class Source(ABC):
    """A named connection to one source system."""

    scheme: ClassVar[str]

    def __init__(self, name: str, url: str, options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.url = url
        self.options = dict(options or {})
        self.queries = 0
        self._catalog: Catalog | None = None

    def catalog(self) -> Catalog:
        """Tables, columns, keys; read once and cached."""
        if self._catalog is None:
            self._catalog = self._introspect()
        return self._catalog

    @abstractmethod
    def _introspect(self) -> Catalog: ...

    @abstractmethod
    def read(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        key_in: KeyIn | None = None,
        since: Since | None = None,
    ) -> pa.Table:
        """One bulk read of ``table`` into Arrow, typed as the catalog says."""

    def ping(self) -> None:
        self.catalog()

    def close(self) -> None:
        return None

    # helpers shared by connectors -----------------------------------------------------------
    def _target(self, table: str, columns: Sequence[str] | None) -> pa.Schema:
        info = self.catalog().table(table)
        cols = list(columns) if columns is not None else [c.name for c in info.columns]
        return pa.schema([pa.field(c, info.column(c).type) for c in cols])

    def _where(self, info: TableInfo, key_in: KeyIn | None, since: Since | None) -> None:
        for c in (key_in.columns if key_in else ()):
            info.column(c)
        if since is not None:
            info.column(since.column)

    def redacted_url(self) -> str:
        """The URL without a password, for messages."""
        if "@" in self.url and "://" in self.url:
            scheme, rest = self.url.split("://", 1)
            cred, host = rest.rsplit("@", 1)
            return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
        return self.url


def key_chunks(key_in: KeyIn | None) -> list[pa.Table | None]:
    """The key table split into chunks of at most KEY_CHUNK rows (one query each)."""
    if key_in is None:
        return [None]
    values = key_in.values
    return [values.slice(i, KEY_CHUNK) for i in range(0, values.num_rows, KEY_CHUNK)]


def _literal(value: Any) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(value)
    return exp.Literal.string(str(value))


def select_sql(
    dialect: str,
    table: exp.Table,
    columns: Sequence[str],
    key_in: KeyIn | None,
    keys: pa.Table | None,
    since: Since | None,
    cast_text: Sequence[str] = (),
) -> str:
    """A SELECT with identifiers and literals quoted by sqlglot for ``dialect``."""
    def col(c: str) -> exp.Expression:
        return exp.column(c, quoted=True)

    projections = [
        exp.alias_(exp.cast(col(c), exp.DataType.build("text")), c, quoted=True) if c in cast_text else col(c)
        for c in columns
    ]
    q = exp.select(*projections).from_(table)
    if key_in is not None and keys is not None:
        rows = list(zip(*(keys.column(c).to_pylist() for c in key_in.columns)))
        if len(key_in.columns) == 1:
            cond = exp.In(this=col(key_in.columns[0]), expressions=[_literal(r[0]) for r in rows])
        else:
            cond = exp.In(
                this=exp.Tuple(expressions=[col(c) for c in key_in.columns]),
                expressions=[exp.Tuple(expressions=[_literal(v) for v in r]) for r in rows],
            )
        q = q.where(cond)
    if since is not None:
        q = q.where(exp.GT(this=col(since.column), expression=exp.Literal.string(since.value.isoformat(sep=" "))))
    return q.sql(dialect=dialect)


def sql_table(name: str, schema: str | None = None) -> exp.Table:
    """A quoted, optionally schema-qualified table reference."""
    return exp.table_(exp.to_identifier(name, quoted=True), db=exp.to_identifier(schema, quoted=True) if schema else None)
