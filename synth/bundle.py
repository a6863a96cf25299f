"""Synthetic entity bundles on disk: sealed Parquet per table, a sealed DuckDB file, and
``manifest.json``.

At rest every data file is sealed with AES-256-GCM under the bundle's own data key (the
file's relative path and the bundle id are the associated data), so that retiring a
bundle destroys its key and leaves nothing readable. ``manifest.json`` holds no data:
it says how the bundle was made and carries the SHA-256 of every stored file and of
every table's plaintext Parquet (equal for equal seeds). Plain copies come from
:func:`export_bundle`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from microdb.errors import ConfigError, EntityNotFound, SealError
from microdb.hydrate import write_database
from synth.integrity import select_entities
from synth.schema import SynthSchema

MANIFEST = "manifest.json"
DATA_DIR = "data"
DUCKDB_FILE = "bundle.duckdb"
SEALED = ".sealed"
_MAGIC = b"MDBBUNDLE1"
_NONCE = 12


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _aad(bundle_id: str, relpath: str) -> bytes:
    return f"microdb-bundle:{bundle_id}:{relpath}".encode()


def seal(data: bytes, key: bytes, bundle_id: str, relpath: str) -> bytes:
    nonce = os.urandom(_NONCE)
    return _MAGIC + nonce + AESGCM(key).encrypt(nonce, data, _aad(bundle_id, relpath))


def unseal(blob: bytes, key: bytes, bundle_id: str, relpath: str) -> bytes:
    if not blob.startswith(_MAGIC):
        raise SealError(f"bundle {bundle_id}: {relpath} is not a sealed bundle file")
    nonce = blob[len(_MAGIC):len(_MAGIC) + _NONCE]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(_MAGIC) + _NONCE:], _aad(bundle_id, relpath))
    except InvalidTag:
        raise SealError(f"bundle {bundle_id}: {relpath} fails authentication (tampered, or not this bundle's key)") from None


def parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet bytes of ``table`` (same table, same bytes)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", write_statistics=True, store_schema=True)
    return sink.getvalue()


def _duckdb_bytes(tables: Mapping[str, pa.Table]) -> bytes:
    """A DuckDB database file holding ``tables``, built in a private temporary folder
    (in memory where /dev/shm exists) and returned as bytes."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="microdb-bundle-", dir=base) as tmp:
        path = Path(tmp) / DUCKDB_FILE
        write_database(str(path), dict(tables))
        return path.read_bytes()


def write_bundle(directory: Path, bundle_id: str, key: bytes, tables: Mapping[str, pa.Table],
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """Seal ``tables`` into ``directory`` and write the manifest; return the manifest
    with its ``tables`` and ``files`` sections filled in. The folder must be new or empty."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory}: bundle folder exists and is not empty (choose another -o)")
    (directory / DATA_DIR).mkdir(parents=True, exist_ok=True)
    table_info: dict[str, Any] = {}
    files: dict[str, Any] = {}

    def put(relpath: str, plain: bytes) -> None:
        blob = seal(plain, key, bundle_id, relpath)
        target = directory / relpath
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, target)
        files[relpath] = {"sha256": sha256_bytes(blob), "bytes": len(blob)}

    for name, table in tables.items():
        plain = parquet_bytes(table)
        table_info[name] = {"rows": table.num_rows, "columns": table.column_names,
                            "parquet_sha256": sha256_bytes(plain)}
        put(f"{DATA_DIR}/{name}.parquet{SEALED}", plain)
    put(DUCKDB_FILE + SEALED, _duckdb_bytes(tables))
    out = {**manifest, "id": bundle_id, "tables": table_info, "files": files,
           "encryption": {"algorithm": "AES-256-GCM", "per": "file", "key": "bundle data key, wrapped in the workspace"}}
    write_manifest(directory, out)
    return out


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    path = Path(directory) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{directory}: not a bundle (no {MANIFEST})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: malformed manifest (line {exc.lineno}: {exc.msg})") from None


def verify_files(directory: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Problems with the stored files against the manifest's hashes (empty: intact)."""
    directory = Path(directory)
    problems = []
    for relpath, info in sorted(manifest.get("files", {}).items()):
        path = directory / relpath
        if not path.exists():
            problems.append(f"{relpath}: missing")
        elif sha256_file(path) != info["sha256"]:
            problems.append(f"{relpath}: content hash differs from the manifest (modified)")
    listed = set(manifest.get("files", {})) | {MANIFEST}
    if directory.exists():
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory).as_posix()
            if path.is_file() and rel not in listed:
                problems.append(f"{rel}: not listed in the manifest")
    return problems


class Bundle:
    """A synthetic bundle opened with its data key: tables, entities, SQL."""

    def __init__(self, directory: Path, manifest: dict[str, Any], key: bytes | None) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self._key = key
        self._tables: dict[str, pa.Table] | None = None

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def entity_type(self) -> str:
        return self.manifest["entity_type"]

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    @property
    def schema(self) -> SynthSchema:
        return SynthSchema.from_dict(self.manifest["schema"])

    def _read(self, relpath: str) -> bytes:
        if self._key is None:
            raise SealError(f"bundle {self.id} is {self.status}: its key is destroyed, its data unreadable")
        try:
            blob = (self.directory / relpath).read_bytes()
        except FileNotFoundError:
            raise SealError(f"bundle {self.id}: {relpath} is missing from {self.directory}") from None
        return unseal(blob, self._key, self.id, relpath)

    def tables(self) -> dict[str, pa.Table]:
        """Every table: the entity tree (parents first), then reference tables."""
        if self._tables is None:
            out = {}
            for name in self.manifest["tables"]:
                out[name] = pq.read_table(io.BytesIO(self._read(f"{DATA_DIR}/{name}.parquet{SEALED}")))
            self._tables = out
        return dict(self._tables)

    def duckdb_bytes(self) -> bytes:
        return self._read(DUCKDB_FILE + SEALED)

    def keys(self) -> list[str]:
        schema = self.schema
        root = self.tables()[schema.root]
        return _key_strings(root, schema.key)

    def entity(self, key: str) -> dict[str, pa.Table]:
        """One synthetic entity's tables (its tree rows plus the reference tables)."""
        schema = self.schema
        tables = self.tables()
        keep = np.asarray(pc.equal(_key_column(tables[schema.root], schema.key), str(key)).fill_null(False))
        if not keep.any():
            raise EntityNotFound(f"bundle {self.id}: no entity {key!r} (keys: {', '.join(self.keys()[:5])}, ...)")
        tree = select_entities(schema, {t.name: tables[t.name] for t in schema.tables}, keep)
        refs = {n: t for n, t in tables.items() if not schema.is_tree_table(n)}
        return {**tree, **refs}


def _key_column(table: pa.Table, key: tuple[str, ...]) -> pa.Array:
    parts = [pc.cast(table.column(c), pa.string()) for c in key]
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "/")


def _key_strings(table: pa.Table, key: tuple[str, ...]) -> list[str]:
    return _key_column(table, key).to_pylist()


def export_bundle(bundle: Bundle, out: Path, fmt: str = "both", overwrite: bool = False) -> list[Path]:
    """Plain copies of a bundle: ``bundle.duckdb`` and/or ``parquet/<table>.parquet``."""
    if fmt not in ("both", "duckdb", "parquet"):
        raise ConfigError(f"export format {fmt!r}: use duckdb, parquet or both")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty (pass --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if fmt in ("both", "duckdb"):
        path = out / DUCKDB_FILE
        path.write_bytes(bundle.duckdb_bytes())
        written.append(path)
    if fmt in ("both", "parquet"):
        (out / "parquet").mkdir(exist_ok=True)
        for name in bundle.manifest["tables"]:
            path = out / "parquet" / f"{name}.parquet"
            path.write_bytes(bundle._read(f"{DATA_DIR}/{name}.parquet{SEALED}"))
            written.append(path)
    return written


def shred(directory: Path, manifest: Mapping[str, Any]) -> int:
    """Overwrite and delete a bundle's data files (its key is destroyed separately);
    returns the number of files removed."""
    directory = Path(directory)
    removed = 0
    for relpath in manifest.get("files", {}):
        path = directory / relpath
        if path.exists():
            size = path.stat().st_size
            with open(path, "r+b") as fh:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
            path.unlink()
            removed += 1
    for sub in sorted({(directory / r).parent for r in manifest.get("files", {})}, key=lambda p: -len(p.parts)):
        if sub != directory and sub.exists() and not any(sub.iterdir()):
            sub.rmdir()
    return removed
