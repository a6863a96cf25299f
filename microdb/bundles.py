"""The workspace's register of synthetic bundles: where each lives, its manifest, its
status (released, rejected, retired) and its wrapped data key.

Retiring a bundle deletes its wrapped key from this register (SQLite with
``secure_delete``, rollback journal) and shreds its files: the manifest stays, marked
with a tombstone, so its lineage can still be shown.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from microdb.errors import ConfigError, KeyMaterialError
from microdb.keys import Keyring

REGISTER_FILE = ".microdb/bundles.sqlite"
STATUSES = ("unevaluated", "released", "rejected", "retired")


@dataclass(frozen=True)
class BundleEntry:
    id: str
    path: Path
    entity_type: str
    created_at: float
    status: str
    manifest: dict[str, Any]
    retired_at: float | None
    reason: str | None


class BundleRegister:
    """Bundles known to one workspace."""

    def __init__(self, root: Path, keyring: Keyring) -> None:
        self._path = root / REGISTER_FILE
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._kek = keyring.derive("bundle-kek")
        self._lock = threading.Lock()
        with self._con() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS bundles (id TEXT PRIMARY KEY, path TEXT NOT NULL, "
                "entity_type TEXT NOT NULL, created_at REAL NOT NULL, status TEXT NOT NULL, "
                "wrapped_key BLOB, manifest TEXT NOT NULL, retired_at REAL, reason TEXT)"
            )

    @contextmanager
    def _con(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            con = sqlite3.connect(self._path, timeout=30)
            try:
                con.execute("PRAGMA secure_delete = ON")
                con.execute("PRAGMA journal_mode = DELETE")
                with con:
                    yield con
            finally:
                con.close()

    # keys -----------------------------------------------------------------------------------
    def new_key(self) -> tuple[bytes, bytes]:
        """A fresh data key and its wrapped form."""
        key = AESGCM.generate_key(256)
        return key, aes_key_wrap(self._kek, key)

    def key(self, bundle_id: str) -> bytes | None:
        """The bundle's data key, or None once retired."""
        with self._con() as con:
            row = con.execute("SELECT wrapped_key FROM bundles WHERE id = ?", (bundle_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        try:
            return aes_key_unwrap(self._kek, row[0])
        except InvalidUnwrap:
            raise KeyMaterialError(f"bundle {bundle_id}: its key does not unwrap under this workspace's master key") from None

    # entries --------------------------------------------------------------------------------
    def add(self, manifest: dict[str, Any], path: Path, wrapped_key: bytes) -> None:
        with self._con() as con:
            con.execute(
                "INSERT INTO bundles (id, path, entity_type, created_at, status, wrapped_key, manifest) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (manifest["id"], str(Path(path).resolve()), manifest["entity_type"], time.time(),
                 manifest["status"], wrapped_key, json.dumps(manifest, sort_keys=True, default=str)),
            )

    def update(self, manifest: dict[str, Any]) -> None:
        with self._con() as con:
            con.execute("UPDATE bundles SET status = ?, manifest = ? WHERE id = ?",
                        (manifest["status"], json.dumps(manifest, sort_keys=True, default=str), manifest["id"]))

    def retire(self, bundle_id: str, reason: str, manifest: dict[str, Any]) -> None:
        """Destroy the wrapped key and record the tombstone."""
        with self._con() as con:
            con.execute(
                "UPDATE bundles SET status = 'retired', wrapped_key = NULL, retired_at = ?, reason = ?, manifest = ? "
                "WHERE id = ?",
                (time.time(), reason, json.dumps(manifest, sort_keys=True, default=str), bundle_id),
            )
        with self._con() as con:
            con.execute("VACUUM")

    def _entry(self, row: tuple) -> BundleEntry:
        return BundleEntry(row[0], Path(row[1]), row[2], row[3], row[4], json.loads(row[5]), row[6], row[7])

    _COLUMNS = "id, path, entity_type, created_at, status, manifest, retired_at, reason"

    def entries(self) -> list[BundleEntry]:
        with self._con() as con:
            rows = con.execute(f"SELECT {self._COLUMNS} FROM bundles ORDER BY created_at").fetchall()
        return [self._entry(r) for r in rows]

    def find(self, ref: str) -> BundleEntry:
        """A bundle by id, unique id prefix, or folder path."""
        entries = self.entries()
        exact = [e for e in entries if e.id == ref]
        if not exact:
            candidate = Path(ref).expanduser()
            if candidate.exists():
                resolved = candidate.resolve()
                exact = [e for e in entries if e.path == resolved]
            else:
                exact = [e for e in entries if e.id.startswith(ref)] if len(ref) >= 4 else []
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            raise ConfigError(f"bundle {ref!r} is ambiguous: {', '.join(e.id for e in exact)}")
        raise ConfigError(f"no bundle {ref!r} in this workspace (see `microdb bundle list`)")
