"""Answers to the catalog queries PostgreSQL clients send (psql's ``\\d``, ``\\dt``,
``\\d TABLE``), from the schemas of the tables a session can see — never by running the
client's SQL.

Known psql queries get real answers (relations, a table's columns and types); any other
query over ``pg_catalog`` or ``information_schema`` gets an empty result with the columns
it asked for, which clients read as "no such objects".
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pyarrow as pa
import sqlglot
from sqlglot import exp

from microdb.server.pgtypes import pg_type

SCHEMA = "public"
OWNER = "microdb"
_FIRST_OID = 16384
_TYPE_NAMES = {
    16: "boolean", 17: "bytea", 20: "bigint", 21: "smallint", 23: "integer", 25: "text", 114: "json",
    700: "real", 701: "double precision", 1043: "character varying", 1082: "date", 1083: "time without time zone",
    1114: "timestamp without time zone", 1184: "timestamp with time zone", 1186: "interval", 1700: "numeric",
    2950: "uuid", 3802: "jsonb",
}
_NAME_PATTERN = re.compile(r"relname\s+OPERATOR\(pg_catalog\.~\)\s+'([^']*)'", re.I)
_OID_FILTER = re.compile(r"(?:c\.oid|a\.attrelid)\s*=\s*'(\d+)'", re.I)


def type_name(t: pa.DataType) -> str:
    """The PostgreSQL name of the type an Arrow column is sent as."""
    if pa.types.is_decimal(t):
        return f"numeric({t.precision},{t.scale})"
    return _TYPE_NAMES.get(pg_type(t).oid, "text")


def _output_names(sql: str) -> list[str] | None:
    """Column names a SELECT returns (alias, column name or ``?column?``); None if unparsable."""
    cleaned = re.sub(r"OPERATOR\(pg_catalog\.([^)]+)\)", r"\1", sql)
    cleaned = re.sub(r"COLLATE\s+pg_catalog\.\w+", "", cleaned)
    try:
        tree = sqlglot.parse_one(cleaned, read="postgres")
    except sqlglot.errors.SqlglotError:
        return None
    select = tree if isinstance(tree, exp.Select) else tree.find(exp.Select)
    if select is None:
        return None
    names = []
    for e in select.expressions:
        name = e.alias_or_name
        names.append(name if name and name != "*" else "?column?")
    return names


def _text_table(names: list[str], rows: list[list[object]]) -> pa.Table:
    cols = {}
    for i, name in enumerate(names):
        key = name if name not in cols else f"{name}_{i}"
        cols[key] = pa.array([None if r[i] is None else str(r[i]) for r in rows], pa.string())
    return pa.table(cols) if cols else pa.table({"?column?": pa.array([], pa.string())})


class Catalog:
    """The tables one session sees (name → Arrow schema), as psql's catalog queries expect."""

    def __init__(self, tables: Mapping[str, pa.Schema]) -> None:
        self.tables = dict(sorted(tables.items()))
        self.oids = {name: _FIRST_OID + i for i, name in enumerate(self.tables)}

    def _by_oid(self, oid: int) -> str | None:
        return next((n for n, o in self.oids.items() if o == oid), None)

    def _matching(self, sql: str) -> list[str]:
        m = _NAME_PATTERN.search(sql)
        if not m:
            return list(self.tables)
        try:
            pattern = re.compile(m.group(1))
        except re.error:
            return []
        return [n for n in self.tables if pattern.match(n)]

    def answer(self, sql: str) -> pa.Table | None:
        """The answer to one catalog query, or None if it is not a query at all."""
        names = _output_names(sql)
        if names is None:
            return None
        lowered = [n.lower() for n in names]
        oid_filter = _OID_FILTER.search(sql)
        table = self._by_oid(int(oid_filter.group(1))) if oid_filter else None
        if "pg_get_userbyid" in sql and "pg_class" in sql and lowered[:2] == ["schema", "name"]:
            kinds = re.search(r"relkind\s+IN\s*\(([^)]*)\)", sql, re.I)
            wanted = "'r'" in kinds.group(1) if kinds else True
            rows = [[SCHEMA, n, "table", OWNER] + [None] * (len(names) - 4) for n in self._matching(sql)] if wanted else []
            return _text_table(names, rows)
        if lowered[:3] == ["oid", "nspname", "relname"] and "pg_class" in sql:
            return _text_table(names, [[self.oids[n], SCHEMA, n] for n in self._matching(sql)])
        if "relchecks" in lowered and table is not None:
            known = {"relchecks": 0, "relkind": "r", "relhasindex": "f", "relhasrules": "f", "relhastriggers": "f",
                     "relrowsecurity": "f", "relforcerowsecurity": "f", "relhasoids": "f", "relispartition": "f",
                     "reltablespace": 0, "relpersistence": "p", "relreplident": "d", "amname": "heap"}
            return _text_table(names, [[known.get(n, "") for n in lowered]])
        if "pg_attribute" in sql and "attname" in lowered and table is not None:
            rows = []
            for f in self.tables[table]:
                known = {"attname": f.name, "format_type": type_name(f.type), "attnotnull": "f",
                         "attidentity": "", "attgenerated": "", "attcollation": None, "pg_get_expr": None}
                rows.append([known.get(n) for n in lowered])
            return _text_table(names, rows)
        return _text_table(names, [])
