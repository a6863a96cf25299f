"""MySQL and MariaDB: catalog from information_schema, bulk reads into Arrow.

URL: ``mysql://user[:password]@host:port/database`` (``mariadb://`` too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa

from microdb.errors import SourceError
from microdb.sources.base import Catalog, Column, ForeignKey, KeyIn, Since, Source, TableInfo, key_chunks, select_sql, sql_table
from microdb.sources.types import arrow_type, to_column


class MysqlSource(Source):
    scheme = "mysql"

    def __init__(self, name: str, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(name, url, options)
        parts = urlsplit(url)
        self.database = parts.path.lstrip("/")
        if not self.database:
            raise SourceError(f"source {name!r}: the URL must name a database (mysql://user@host:port/DATABASE)")
        self._params = dict(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=self.database,
        )
        self._con: Any = None

    def _connection(self) -> Any:
        if self._con is None:
            import pymysql

            try:
                self._con = pymysql.connect(**self._params, connect_timeout=10, charset="utf8mb4")
            except pymysql.err.MySQLError as exc:
                raise SourceError(f"source {self.name!r} ({self.redacted_url()}) is unreachable: {exc.args[-1]}") from None
        return self._con

    def _run(self, sql: str, args: tuple | None = None) -> list[tuple]:
        import pymysql

        con = self._connection()
        self.queries += 1
        try:
            with con.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        except pymysql.err.MySQLError as exc:
            raise SourceError(f"source {self.name!r} ({self.redacted_url()}): {exc.args[-1]}") from None

    def _introspect(self) -> Catalog:
        cols = self._run(
            "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION",
            (self.database,),
        )
        keys = self._run(
            "SELECT k.TABLE_NAME, k.CONSTRAINT_NAME, k.COLUMN_NAME, k.REFERENCED_TABLE_SCHEMA, k.REFERENCED_TABLE_NAME, "
            "k.REFERENCED_COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE k JOIN information_schema.TABLE_CONSTRAINTS t "
            "ON t.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND t.TABLE_NAME = k.TABLE_NAME "
            "AND t.CONSTRAINT_NAME = k.CONSTRAINT_NAME "
            "WHERE k.TABLE_SCHEMA = %s AND t.CONSTRAINT_TYPE IN ('PRIMARY KEY', 'FOREIGN KEY') "
            "ORDER BY k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION",
            (self.database,),
        )
        by_table: dict[str, list[Column]] = {}
        for table, col, ctype, nullable in cols:
            by_table.setdefault(table, []).append(Column(col, arrow_type(ctype), nullable == "YES"))
        pks: dict[str, list[str]] = {}
        fk_parts: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for table, cname, col, rschema, rtable, rcol in keys:
            if cname == "PRIMARY":
                pks.setdefault(table, []).append(col)
            elif rtable is not None and rschema == self.database:
                fk_parts.setdefault((table, cname), []).append((col, rtable, rcol))
        fks: dict[str, list[ForeignKey]] = {}
        for (table, _), parts in sorted(fk_parts.items()):
            fks.setdefault(table, []).append(ForeignKey(tuple(p[0] for p in parts), parts[0][1], tuple(p[2] for p in parts)))
        if not by_table:
            exists = self._run("SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (self.database,))
            if not exists[0][0]:
                raise SourceError(f"source {self.name!r}: database {self.database!r} does not exist")
        tables = {t: TableInfo(t, tuple(c), tuple(pks.get(t, ())), tuple(fks.get(t, ()))) for t, c in sorted(by_table.items())}
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
            sql = select_sql("mysql", sql_table(table), target.names, key_in, keys, since)
            rows = self._run(sql)
            cols = list(zip(*rows)) if rows else [() for _ in target]
            parts.append(pa.table([to_column(list(v), f.type) for v, f in zip(cols, target)], schema=target))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
