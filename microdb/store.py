"""The sealed store: one encrypted record per entity instance, in SQLite (WAL).

Each record is the entity's tables (see :mod:`microdb.codec`), zstd-compressed, then
encrypted with AES-256-GCM under a fresh per-record data key. The data key is wrapped
(RFC 3394) by the store key, which is derived from the workspace master key. The
record's address (type and key) is the AEAD associated data, so a blob moved to another
entity fails authentication. Writes of a batch are one transaction: a reader sees the
old or the new version of an entity, never half. Forgetting an entity deletes its
wrapped key and blob with ``secure_delete`` on and truncates the WAL (crypto-shredding).

:class:`SealedStore` is the interface every backend implements (sealing is shared);
:class:`Store` is the local SQLite backend and :func:`open_store` picks the backend from
``[store]`` (``url = "s3://bucket/prefix"`` selects :mod:`microdb.store_s3`). Entity keys
fall into ``partitions`` key partitions (:func:`partition_ids`): the unit of parallel
sync and, on object storage, of storage and atomic publish.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from microdb import codec
from microdb.errors import ConfigError, KeyMaterialError, SealError, StoreUnavailable  # noqa: F401 (re-exported)
from microdb.keys import Keyring

if TYPE_CHECKING:
    from microdb.config import StoreConfig

FORMAT_VERSION = "2"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schemas (id TEXT PRIMARY KEY, ipc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,            -- 'entity' or 'reference'
    etype TEXT NOT NULL,
    ekey TEXT NOT NULL,
    version INTEGER NOT NULL,
    synced_at REAL NOT NULL,
    rows INTEGER NOT NULL,
    size INTEGER NOT NULL,         -- uncompressed payload bytes
    wrapped_key BLOB NOT NULL,
    nonce BLOB NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (kind, etype, ekey)
);
CREATE TABLE IF NOT EXISTS sync_state (etype TEXT PRIMARY KEY, last_sync REAL, watermark TEXT, key_columns TEXT);
"""


@dataclass(frozen=True)
class RecordInfo:
    version: int
    synced_at: float
    rows: int


@dataclass(frozen=True)
class Unsealed:
    tables: dict[str, pa.Table]
    info: RecordInfo


@dataclass(frozen=True)
class SealedItem:
    """One entity ready to seal: its key and ``{table: (schema_id, batch)}``."""

    key: str
    batches: dict[str, tuple[str, pa.RecordBatch]]
    rows: int


def partition_of(key: str, partitions: int) -> int:
    """The key partition of one entity key: md5 of its UTF-8 text, bytes 8..16 little-endian, mod n."""
    return int.from_bytes(hashlib.md5(key.encode()).digest()[8:], "little") % partitions


def partition_ids(keys: pa.Array | list[str], partitions: int) -> np.ndarray:
    """:func:`partition_of` of many keys at once (vectorized in DuckDB, checked against hashlib)."""
    arr = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int64)
    con = duckdb.connect(":memory:")
    try:
        con.register("__mdb_keys", pa.table({"k": arr}))
        out = con.sql(f"SELECT (md5_number_lower(k) % {int(partitions)})::BIGINT AS p FROM __mdb_keys").to_arrow_table()
    finally:
        con.close()
    ids = out.column("p").to_numpy()
    probe = arr.slice(0, 4).to_pylist()
    if [partition_of(k, partitions) for k in probe] != ids[: len(probe)].tolist():
        raise SealError("DuckDB's md5_number_lower no longer matches the store's partition function; pin duckdb")
    return ids


class SealedStore(ABC):
    """What every store backend offers: sealed records of every entity type of a workspace.

    Sealing is shared; a backend keeps the sealed rows
    ``(kind, etype, key, version, synced_at, rows, size, wrapped_key, nonce, blob)``.
    """

    def __init__(self, keyring: Keyring, compression_level: int = 3, partitions: int = 16) -> None:
        self._kek = keyring.derive("store:kek")
        self._level = compression_level
        self.partitions = partitions
        self._schemas: dict[str, pa.Schema] = {}
        self._version_clock = 0

    def write_groups(self, keys: list[str], batch_size: int) -> list[np.ndarray]:
        """Entity ordinals (of sorted ``keys``) grouped into the units one :meth:`write_rows` publishes."""
        return [np.arange(s, min(s + batch_size, len(keys))) for s in range(0, len(keys), batch_size)]

    def invalidate(self, etype: str | None = None) -> None:
        """Drop anything cached about ``etype`` (all types if None) after other processes wrote."""

    @abstractmethod
    def register_schema(self, schema: pa.Schema) -> str:
        """Keep ``schema`` once; return its id."""

    @abstractmethod
    def _load_schema(self, sid: str) -> pa.Schema: ...

    # sealing -----------------------------------------------------------------------------
    def _next_version(self) -> int:
        v = max(time.time_ns(), self._version_clock + 1)
        self._version_clock = v
        return v

    def _seal(self, kind: str, etype: str, key: str, payload: bytes) -> tuple[bytes, bytes, bytes]:
        data_key = AESGCM.generate_key(256)
        nonce = os.urandom(12)
        blob = AESGCM(data_key).encrypt(nonce, codec.compress(payload, self._level), _aad(kind, etype, key))
        return aes_key_wrap(self._kek, data_key), nonce, blob

    def _unseal(self, kind: str, etype: str, key: str, wrapped: bytes, nonce: bytes, blob: bytes, size: int) -> bytes:
        try:
            data_key = aes_key_unwrap(self._kek, wrapped)
            compressed = AESGCM(data_key).decrypt(nonce, blob, _aad(kind, etype, key))
        except (InvalidTag, InvalidUnwrap):
            raise SealError(f"sealed record {etype}/{key} failed authentication: it was tampered with or moved") from None
        return codec.decompress(compressed, size)

    def seal_rows(self, kind: str, etype: str, items: Iterable[SealedItem]) -> Iterator[tuple]:
        """Encrypt items into rows for :meth:`write_rows` (CPU work, no store access)."""
        now = time.time()
        for item in items:
            payload = codec.encode(item.batches)
            wrapped, nonce, blob = self._seal(kind, etype, item.key, payload)
            yield (kind, etype, item.key, self._next_version(), now, item.rows, len(payload), wrapped, nonce, blob)

    @abstractmethod
    def write_rows(self, rows: list[tuple]) -> None:
        """Insert or replace sealed rows; readers see the old or the new version of a whole call."""

    def put(self, etype: str, items: list[SealedItem]) -> None:
        self.write_rows(list(self.seal_rows("entity", etype, items)))

    def put_reference(self, etype: str, name: str, table: pa.Table) -> None:
        sid = self.register_schema(table.schema)
        batch = table.combine_chunks().to_batches()
        rb = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=table.schema)
        self.write_rows(list(self.seal_rows("reference", etype, [SealedItem(name, {name: (sid, rb)}, table.num_rows)])))

    # reading -------------------------------------------------------------------------------
    def _decode(self, payload: bytes) -> dict[str, pa.Table]:
        try:
            return codec.decode(payload, self._schemas)
        except KeyError as missing:
            self._load_schema(missing.args[0])
            return self._decode(payload)

    @abstractmethod
    def info(self, etype: str, key: str) -> RecordInfo | None:
        """Version, sync time and row count of a stored entity, or None."""

    @abstractmethod
    def get(self, etype: str, key: str, kind: str = "entity") -> Unsealed | None:
        """The unsealed tables of an entity (or of a reference table), or None."""

    @abstractmethod
    def _reference_names(self, etype: str) -> list[str]: ...

    def references(self, etype: str) -> dict[str, pa.Table]:
        out: dict[str, pa.Table] = {}
        for name in self._reference_names(etype):
            rec = self.get(etype, name, kind="reference")
            if rec is not None:
                out.update(rec.tables)
        return out

    @abstractmethod
    def reference_version(self, etype: str) -> int: ...

    @abstractmethod
    def keys(self, etype: str, limit: int | None = None, offset: int = 0) -> list[str]:
        """Stored entity keys in text order."""

    @abstractmethod
    def count(self, etype: str) -> int: ...

    @abstractmethod
    def stats(self, etype: str) -> dict[str, int]:
        """``records``, ``rows`` and sealed ``bytes`` of an entity type."""

    @abstractmethod
    def forget(self, etype: str, key: str) -> bool:
        """Destroy the entity's data key and blob; True if it existed."""

    @abstractmethod
    def set_sync_state(self, etype: str, last_sync: float, watermark: str | None, key_columns: list[str]) -> None: ...

    @abstractmethod
    def sync_state(self, etype: str) -> dict | None: ...

    @abstractmethod
    def close(self) -> None: ...


class Store(SealedStore):
    """The local backend: sealed records in one SQLite file in WAL mode."""

    def __init__(self, path: Path, keyring: Keyring, compression_level: int = 3, partitions: int = 16) -> None:
        super().__init__(keyring, compression_level, partitions)
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        con = self._con()
        with con:
            con.executescript(_SCHEMA)
            fp = keyring.fingerprint()
            row = con.execute("SELECT v FROM meta WHERE k = 'key_fingerprint'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('key_fingerprint', ?), ('format', ?)", (fp, FORMAT_VERSION))
            elif row[0] != fp:
                raise KeyMaterialError(
                    f"{path}: the master key does not match the one this store was sealed with "
                    "(check MICRODB_MASTER_KEY or the workspace key file)"
                )
            fmt = con.execute("SELECT v FROM meta WHERE k = 'format'").fetchone()
            if fmt is not None and fmt[0] != FORMAT_VERSION:
                raise SealError(
                    f"{path}: store format {fmt[0]}, this microdb reads format {FORMAT_VERSION}; "
                    "move the store aside and sync again"
                )

    # connections -------------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA secure_delete=ON")
            con.execute("PRAGMA busy_timeout=60000")
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # schemas -----------------------------------------------------------------------------
    def register_schema(self, schema: pa.Schema) -> str:
        sid = codec.schema_id(schema)
        if sid not in self._schemas:
            con = self._con()
            con.execute("INSERT OR IGNORE INTO schemas VALUES (?, ?)", (sid, schema.serialize().to_pybytes()))
            self._schemas[sid] = schema
        return sid

    def _load_schema(self, sid: str) -> pa.Schema:
        row = self._con().execute("SELECT ipc FROM schemas WHERE id = ?", (sid,)).fetchone()
        if row is None:
            raise SealError(f"{self.path}: schema {sid} referenced by a record is missing")
        schema = pa.ipc.read_schema(pa.py_buffer(row[0]))
        self._schemas[sid] = schema
        return schema

    # writing -----------------------------------------------------------------------------
    def write_rows(self, rows: list[tuple]) -> None:
        """Insert or replace sealed rows atomically (one transaction)."""
        with self._write_lock:
            con = self._con()
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(
                    "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(kind, etype, ekey) DO UPDATE SET "
                    "version=excluded.version, synced_at=excluded.synced_at, rows=excluded.rows, size=excluded.size, "
                    "wrapped_key=excluded.wrapped_key, nonce=excluded.nonce, blob=excluded.blob",
                    rows,
                )
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # reading -----------------------------------------------------------------------------
    def info(self, etype: str, key: str) -> RecordInfo | None:
        row = self._con().execute(
            "SELECT version, synced_at, rows FROM records WHERE kind='entity' AND etype=? AND ekey=?", (etype, key)
        ).fetchone()
        return RecordInfo(*row) if row else None

    def get(self, etype: str, key: str, kind: str = "entity") -> Unsealed | None:
        row = self._con().execute(
            "SELECT version, synced_at, rows, size, wrapped_key, nonce, blob FROM records "
            "WHERE kind=? AND etype=? AND ekey=?",
            (kind, etype, key),
        ).fetchone()
        if row is None:
            return None
        version, synced_at, rows, size, wrapped, nonce, blob = row
        payload = self._unseal(kind, etype, key, wrapped, nonce, blob, size)
        return Unsealed(self._decode(payload), RecordInfo(version, synced_at, rows))

    def _reference_names(self, etype: str) -> list[str]:
        return [r[0] for r in self._con().execute(
            "SELECT ekey FROM records WHERE kind='reference' AND etype=? ORDER BY ekey", (etype,)
        )]

    def reference_version(self, etype: str) -> int:
        row = self._con().execute(
            "SELECT coalesce(max(version), 0) FROM records WHERE kind='reference' AND etype=?", (etype,)
        ).fetchone()
        return int(row[0])

    def keys(self, etype: str, limit: int | None = None, offset: int = 0) -> list[str]:
        sql = "SELECT ekey FROM records WHERE kind='entity' AND etype=? ORDER BY ekey"
        args: tuple = (etype,)
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args = (etype, limit, offset)
        return [r[0] for r in self._con().execute(sql, args)]

    def count(self, etype: str) -> int:
        return self._con().execute("SELECT count(*) FROM records WHERE kind='entity' AND etype=?", (etype,)).fetchone()[0]

    def stats(self, etype: str) -> dict[str, int]:
        row = self._con().execute(
            "SELECT count(*), coalesce(sum(rows),0), coalesce(sum(length(blob)+length(wrapped_key)+length(nonce)),0) "
            "FROM records WHERE etype=?",
            (etype,),
        ).fetchone()
        return {"records": row[0], "rows": row[1], "bytes": row[2]}

    # forgetting --------------------------------------------------------------------------
    def forget(self, etype: str, key: str) -> bool:
        """Destroy the entity's data key and blob; True if it existed."""
        with self._write_lock:
            con = self._con()
            cur = con.execute("DELETE FROM records WHERE kind='entity' AND etype=? AND ekey=?", (etype, key))
            deleted = cur.rowcount > 0
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    # sync state --------------------------------------------------------------------------
    def set_sync_state(self, etype: str, last_sync: float, watermark: str | None, key_columns: list[str]) -> None:
        with self._write_lock:
            self._con().execute(
                "INSERT INTO sync_state VALUES (?,?,?,?) ON CONFLICT(etype) DO UPDATE SET last_sync=excluded.last_sync, "
                "watermark=coalesce(excluded.watermark, sync_state.watermark), key_columns=excluded.key_columns",
                (etype, last_sync, watermark, ",".join(key_columns)),
            )

    def sync_state(self, etype: str) -> dict | None:
        row = self._con().execute(
            "SELECT last_sync, watermark, key_columns FROM sync_state WHERE etype=?", (etype,)
        ).fetchone()
        if row is None:
            return None
        return {"last_sync": row[0], "watermark": row[1], "key_columns": row[2].split(",") if row[2] else []}


def open_store(cfg: StoreConfig, root: Path, keyring: Keyring) -> SealedStore:
    """The backend ``[store]`` names: SQLite at ``path`` (default) or an S3-compatible ``url``."""
    if cfg.url:
        try:
            from microdb.store_s3 import S3Store
        except ImportError as exc:
            raise ConfigError(
                f"store.url = {cfg.url!r} needs the object-store client ({exc.name} is not installed): "
                "pip install 'microdb[scale]'"
            ) from None
        return S3Store.from_config(cfg, keyring)
    return Store(root / cfg.path, keyring, cfg.compression_level, cfg.partitions)


def _aad(kind: str, etype: str, key: str) -> bytes:
    return f"microdb/{FORMAT_VERSION}/{kind}/{etype}/{key}".encode()
