"""DuckDB database files, opened read-only; key filters are semi-joins on a registered
Arrow table, so any number of keys is one query."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from microdb.errors import SourceError
from microdb.sources.base import Catalog, Column, ForeignKey, KeyIn, Since, Source, TableInfo


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DuckdbSource(Source):
    scheme = "duckdb"

    def __init__(self, name: str, url: str, options: dict[str, Any] | None = None, path: Path | None = None) -> None:
        super().__init__(name, url, options)
        if path is None or not path.is_file():
            raise SourceError(f"source {name!r}: DuckDB file {path} does not exist")
        self.path = path
        self._con: duckdb.DuckDBPyConnection | None = None

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            try:
                self._con = duckdb.connect(str(self.path), read_only=True)
            except duckdb.Error as exc:
                raise SourceError(f"source {self.name!r}: cannot open {self.path}: {exc}") from None
        return self._con

    def _run(self, sql: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        self.queries += 1
        try:
            return self._connection().execute(sql, params or [])
        except duckdb.Error as exc:
            raise SourceError(f"source {self.name!r} ({self.path}): {exc}") from None

    def _introspect(self) -> Catalog:
        cols = self._run(
            "SELECT table_name, column_name, is_nullable FROM duckdb_columns() "
            "WHERE schema_name = 'main' AND NOT internal ORDER BY table_name, column_index"
        ).fetchall()
        cons = self._run(
            "SELECT table_name, constraint_type, constraint_column_names, referenced_table, referenced_column_names "
            "FROM duckdb_constraints() WHERE schema_name = 'main' AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')"
        ).fetchall()
        names = sorted({c[0] for c in cols})
        types: dict[str, pa.Schema] = {}
        for t in names:  # the Arrow types DuckDB itself produces for each table
            self.queries += 1
            types[t] = self._connection().sql(f"SELECT * FROM {_q(t)} LIMIT 0").to_arrow_table().schema
        tables: dict[str, TableInfo] = {}
        for t in names:
            pk: tuple[str, ...] = ()
            fks: list[ForeignKey] = []
            for table, ctype, ccols, ref, rcols in cons:
                if table != t:
                    continue
                if ctype == "PRIMARY KEY":
                    pk = tuple(ccols)
                else:
                    fks.append(ForeignKey(tuple(ccols), ref, tuple(rcols)))
            columns = tuple(Column(c[1], types[t].field(c[1]).type, bool(c[2])) for c in cols if c[0] == t)
            tables[t] = TableInfo(t, columns, pk, tuple(sorted(fks, key=lambda f: f.columns)))
        return Catalog(self.name, tables)

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
        sql = f"SELECT {', '.join(_q(c) for c in target.names)} FROM {_q(table)}"
        conds, params = [], []
        cur = self._connection().cursor()
        if key_in is not None:
            cur.register("__mdb_keys", key_in.values.select(list(key_in.columns)))
            lhs = ", ".join(_q(c) for c in key_in.columns)
            conds.append(f"({lhs}) IN (SELECT {lhs} FROM __mdb_keys)")
        if since is not None:
            conds.append(f"{_q(since.column)} > ?")
            params.append(since.value)
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        self.queries += 1
        try:
            res = cur.sql(sql, params=params or None).to_arrow_table()
        except duckdb.Error as exc:
            raise SourceError(f"source {self.name!r} ({self.path}): {exc}") from None
        finally:
            cur.close()
        return res.cast(target)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
