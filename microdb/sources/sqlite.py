"""SQLite files: catalog from PRAGMAs, bulk reads through the stdlib driver, opened read-only."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from microdb.errors import SourceError
from microdb.sources.base import Catalog, Column, ForeignKey, KeyIn, Since, Source, TableInfo, key_chunks, select_sql, sql_table
from microdb.sources.types import arrow_type, to_column


class SqliteSource(Source):
    scheme = "sqlite"

    def __init__(self, name: str, url: str, options: dict[str, Any] | None = None, path: Path | None = None) -> None:
        super().__init__(name, url, options)
        self.path = path
        if path is None or not path.is_file():
            raise SourceError(f"source {name!r}: SQLite file {path} does not exist")
        self._con: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            try:
                self._con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            except sqlite3.Error as exc:
                raise SourceError(f"source {self.name!r}: cannot open {self.path}: {exc}") from None
        return self._con

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        self.queries += 1
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"source {self.name!r} ({self.path}): {exc}") from None

    def _introspect(self) -> Catalog:
        names = [r[0] for r in self._run(
            "SELECT name FROM sqlite_master WHERE type IN ('table','view') AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )]
        tables: dict[str, TableInfo] = {}
        for name in names:
            cols = self._run("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?) ORDER BY cid", (name,))
            fks = self._run('SELECT id, seq, "table", "from", "to" FROM pragma_foreign_key_list(?) ORDER BY id, seq', (name,))
            grouped: dict[int, list[tuple]] = {}
            for fid, _seq, ref, frm, to in fks:
                grouped.setdefault(fid, []).append((ref, frm, to))
            foreign = []
            for parts in grouped.values():
                ref = parts[0][0]
                to_cols = tuple(p[2] for p in parts)
                if any(t is None for t in to_cols):  # REFERENCES t without columns: its primary key
                    pk = [r[0] for r in sorted(
                        (r for r in self._run("SELECT name, pk FROM pragma_table_info(?)", (ref,)) if r[1]),
                        key=lambda r: r[1])]
                    to_cols = tuple(pk)
                foreign.append(ForeignKey(tuple(p[1] for p in parts), ref, to_cols))
            pk = tuple(c[0] for c in sorted((c for c in cols if c[3]), key=lambda c: c[3]))
            tables[name] = TableInfo(
                name,
                tuple(Column(c[0], arrow_type(c[1] or ""), not c[2]) for c in cols),
                pk,
                tuple(foreign),
            )
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
        parts = []
        for keys in key_chunks(key_in):
            sql = select_sql("sqlite", sql_table(table), target.names, key_in, keys, since)
            rows = self._run(sql)
            cols = list(zip(*rows)) if rows else [() for _ in target]
            parts.append(pa.table([to_column(list(v), f.type) for v, f in zip(cols, target)], schema=target))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
