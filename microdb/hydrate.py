"""Hydration: an entity's sealed tables, masked for a role, registered in DuckDB.

Each role has its own in-memory DuckDB database with external access disabled and its
configuration locked, so a database serving a masked role never holds raw values.
Each hydrated (entity, role) lives on its own cursor of that database: temporary views
are cursor-local, so one entity's queries cannot see another's tables. A bounded LRU
keeps recently used cursors warm; an entry is dropped when its entity is re-synced
(store version changed) or forgotten.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

LOCKED_CONFIG = {
    "enable_external_access": False,
    "lock_configuration": True,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,  # no lookup of Python variables by table name
}


@dataclass
class Hydrated:
    """A warm micro-database: masked tables on a locked DuckDB cursor."""

    cursor: duckdb.DuckDBPyConnection
    tables: dict[str, pa.Table]
    version: int
    withheld: list[str]
    nbytes: int
    lock: threading.Lock = field(default_factory=threading.Lock)


def locked_database(memory_limit: str = "2GB", threads: int = 2) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB database that cannot reach files, URLs or settings, with a
    memory cap so that no query can exhaust the machine."""
    return duckdb.connect(":memory:", config={**LOCKED_CONFIG, "memory_limit": memory_limit, "threads": threads})


def register_tables(db: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """A fresh cursor of ``db`` with ``tables`` registered as its only views."""
    cur = db.cursor()
    for name, table in tables.items():
        cur.register(name, table)
    return cur


def write_database(path: str, tables: dict[str, pa.Table]) -> None:
    """Write ``tables`` into a new DuckDB database file at ``path`` (one table each)."""
    con = duckdb.connect(path)
    try:
        for name, table in tables.items():
            con.register("__mdb_src", table)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM __mdb_src')
            con.unregister("__mdb_src")
        con.execute("CHECKPOINT")
    finally:
        con.close()


class Pool:
    """Bounded LRU of hydrated (entity type, key, role) cursors, one database per role."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 512 * 1024 * 1024, memory_limit: str = "2GB") -> None:
        self.max_entries = max_entries
        self.memory_limit = memory_limit
        self.max_bytes = max_bytes
        self._dbs: dict[str, duckdb.DuckDBPyConnection] = {}
        self._entries: OrderedDict[tuple[str, str, str], Hydrated] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def database(self, role: str) -> duckdb.DuckDBPyConnection:
        with self._lock:
            db = self._dbs.get(role)
            if db is None:
                db = self._dbs[role] = locked_database(self.memory_limit)
            return db

    def get(
        self,
        ident: tuple[str, str, str],
        version: int,
        load: Callable[[], tuple[dict[str, pa.Table], list[str], int]],
    ) -> Hydrated:
        """The warm entry for ``ident`` at ``version``, hydrating it with ``load`` if needed."""
        with self._lock:
            entry = self._entries.get(ident)
            if entry is not None and entry.version == version:
                self._entries.move_to_end(ident)
                self.hits += 1
                return entry
            if entry is not None:
                self._drop(ident)
            self.misses += 1
        tables, withheld, nbytes = load()  # nbytes: the entity's own tables (shared references excluded)
        db = self.database(ident[2])
        cur = register_tables(db, tables)
        entry = Hydrated(cur, tables, version, withheld, nbytes)
        with self._lock:
            old = self._entries.pop(ident, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[ident] = entry
            self._bytes += nbytes
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                oldest = next(iter(self._entries))
                if oldest == ident:
                    break
                self._drop(oldest)
        return entry

    def _drop(self, ident: tuple[str, str, str]) -> None:
        entry = self._entries.pop(ident)
        self._bytes -= entry.nbytes

    def invalidate(self, etype: str, key: str | None = None) -> None:
        """Drop every role's entry of one entity (or of the whole type when key is None)."""
        with self._lock:
            for ident in [i for i in self._entries if i[0] == etype and (key is None or i[1] == key)]:
                self._drop(ident)

    @property
    def size(self) -> tuple[int, int]:
        return len(self._entries), self._bytes

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            for db in self._dbs.values():
                db.close()
            self._dbs.clear()
