"""PostgreSQL: reads through ADBC straight into Arrow (≈1M rows/s measured here), the
catalog from pg_catalog in two queries for the whole schema.

URL: ``postgresql://user[:password]@host:port/db?schema=NAME`` (default schema ``public``);
other query parameters (``sslmode`` …) go to libpq unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow as pa

from microdb.errors import SourceError
from microdb.sources.base import Catalog, Column, ForeignKey, KeyIn, Since, Source, TableInfo, key_chunks, select_sql, sql_table
from microdb.sources.types import arrow_type

# types ADBC's driver returns as the Arrow type we want; everything else is read as text and cast
_NATIVE = ("smallint", "integer", "bigint", "real", "double precision", "boolean", "text", "date", "bytea",
           "timestamp without time zone", "timestamp with time zone")

_COLUMNS = """
SELECT c.relname AS tbl, a.attname AS col, format_type(a.atttypid, a.atttypmod) AS typ, a.attnotnull AS notnull
FROM pg_attribute a JOIN pg_class c ON a.attrelid = c.oid JOIN pg_namespace n ON c.relnamespace = n.oid
WHERE n.nspname = $1 AND c.relkind IN ('r', 'v', 'm', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""
_CONSTRAINTS = """
SELECT c.relname AS tbl, con.contype::text AS ctype, con.conname AS cname,
  array_to_string(ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o), chr(31)) AS cols,
  f.relname AS ref,
  array_to_string(ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
        JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o), chr(31)) AS ref_cols,
  fn.nspname AS ref_schema
FROM pg_constraint con JOIN pg_class c ON con.conrelid = c.oid JOIN pg_namespace n ON c.relnamespace = n.oid
LEFT JOIN pg_class f ON con.confrelid = f.oid LEFT JOIN pg_namespace fn ON f.relnamespace = fn.oid
WHERE n.nspname = $1 AND con.contype IN ('p', 'f')
ORDER BY c.relname, con.conname
"""


def _pg_type(declared: str) -> pa.DataType:
    d = declared.lower()
    if d.startswith(("character varying", "character", "uuid", "json", "jsonb", "interval", "inet", "cidr", "xml")):
        return pa.string()
    if d == "numeric":
        return pa.float64()  # unconstrained numeric: no fixed scale to keep
    return arrow_type(d)


class PostgresSource(Source):
    scheme = "postgresql"

    def __init__(self, name: str, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(name, url, options)
        parts = urlsplit(url.replace("postgres://", "postgresql://", 1))
        query = dict(parse_qsl(parts.query))
        self.schema = query.pop("schema", None) or self.options.get("schema") or "public"
        self._uri = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
        self._con: Any = None
        self._declared: dict[tuple[str, str], str] = {}

    def _connection(self) -> Any:
        if self._con is None:
            import adbc_driver_manager
            import adbc_driver_postgresql.dbapi as pgdb

            try:
                self._con = pgdb.connect(self._uri)
            except adbc_driver_manager.Error as exc:
                reason = str(exc).strip().splitlines()[0]
                raise SourceError(f"source {self.name!r} ({self.redacted_url()}) is unreachable: {reason}") from None
        return self._con

    def _fetch(self, sql: str, params: tuple | None = None) -> pa.Table:
        import adbc_driver_manager

        con = self._connection()
        self.queries += 1
        cur = con.cursor()
        try:
            cur.execute(sql, params)
            return cur.fetch_arrow_table()
        except adbc_driver_manager.Error as exc:
            con.rollback()
            raise SourceError(f"source {self.name!r} ({self.redacted_url()}): {str(exc).strip().splitlines()[0]}") from None
        finally:
            cur.close()

    def _introspect(self) -> Catalog:
        cols = self._fetch(_COLUMNS, (self.schema,)).to_pylist()
        cons = self._fetch(_CONSTRAINTS, (self.schema,)).to_pylist()
        if not cols:
            self._check_schema()
        by_table: dict[str, list[Column]] = {}
        for r in cols:
            table, col, declared, notnull = r.values()
            self._declared[(table, col)] = declared
            by_table.setdefault(table, []).append(Column(col, _pg_type(declared), not notnull))
        pks: dict[str, tuple[str, ...]] = {}
        fks: dict[str, list[ForeignKey]] = {}
        for r in cons:
            table, ctype, _name, ccols, ref, rcols, rschema = r.values()
            cols_t = tuple(ccols.split("\x1f"))
            if ctype == "p":
                pks[table] = cols_t
            elif rschema == self.schema:  # links into other schemas are not part of this source
                fks.setdefault(table, []).append(ForeignKey(cols_t, ref, tuple(rcols.split("\x1f"))))
        tables = {
            t: TableInfo(t, tuple(c), pks.get(t, ()), tuple(fks.get(t, ()))) for t, c in sorted(by_table.items())
        }
        return Catalog(self.name, tables)

    def _check_schema(self) -> None:
        found = self._fetch("SELECT count(*) AS n FROM pg_namespace WHERE nspname = $1", (self.schema,))
        if not found.column(0)[0].as_py():
            raise SourceError(f"source {self.name!r} ({self.redacted_url()}): schema {self.schema!r} does not exist")

    def read(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        key_in: KeyIn | None = None,
        since: Since | None = None,
    ) -> pa.Table:
        info = self.catalog().table(table)
        target = self._target(table, columns)
        self._where(info, key_in, since)
        as_text = [c for c in target.names if self._declared.get((table, c), "text").lower() not in _NATIVE]
        parts = []
        for keys in key_chunks(key_in):
            sql = select_sql("postgres", sql_table(table, self.schema), target.names, key_in, keys, since, as_text)
            parts.append(self._fetch(sql))
        res = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return res.rename_columns(target.names).cast(target)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
