"""The object-store backend: sealed entities in S3-compatible storage (AWS S3, MinIO, Ceph…).

Entities fall into key partitions (:func:`microdb.store.partition_ids`). Each partition is
a few **segment** objects — sealed blobs packed back to back, so a sync writes a handful
of objects per partition, never one per entity — and one **index** object: an Arrow table
(key, version, segment, offset, length, nonce, wrapped data key …), zstd-compressed and
encrypted with AES-GCM under a key derived from the master key, its object name as
associated data. The index is the partition's manifest: a write uploads new segments,
then replaces the index with a conditional PUT (``If-Match`` the ETag it read), so a
reader sees the old or the new partition, never half, and two writers never lose each
other's entities. Forgetting an entity rewrites the partition's segments that hold its blob (or any
dead bytes, such as older versions of it) and the index without its wrapped key, then
deletes the old objects (and their old versions if the bucket keeps versions): no key,
ciphertext or plaintext of it remains.

Layout under ``s3://bucket/prefix``::

    meta.json                                   key fingerprint, format, partitions
    schemas/<schema id>                         Arrow IPC schemas, content-addressed
    state/<entity type>.json                    sync state
    data/<kind>/<entity type>/<pppp>/index      encrypted partition index (manifest)
    data/<kind>/<entity type>/<pppp>/seg-<id>   packed sealed blobs

Credentials come from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``)
through boto3's usual chain, never from ``microdb.toml``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from microdb import codec
from microdb.errors import ConfigError, KeyMaterialError, SealError
from microdb.keys import Keyring
from microdb.store import (
    RecordInfo,
    SealedStore,
    StoreUnavailable,
    Unsealed,
    partition_ids,
    partition_of,
)

if TYPE_CHECKING:
    from microdb.config import StoreConfig

FORMAT = "s3/1"
SEGMENT_BYTES = 64 * 1024 * 1024  # a publish splits larger partitions into several segments
MAX_SEGMENTS = 8  # more live segments in a partition than this: compact it into one
_MAGIC = b"MDBX1"
_CAS_TRIES = 16
INDEX_SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("version", pa.int64()),
    pa.field("synced_at", pa.float64()),
    pa.field("rows", pa.int64()),
    pa.field("size", pa.int64()),
    pa.field("segment", pa.string()),
    pa.field("offset", pa.int64()),
    pa.field("length", pa.int64()),
    pa.field("nonce", pa.binary()),
    pa.field("wrapped", pa.binary()),
])


@dataclass
class _Index:
    """A partition index as last read: its ETag (None: no index yet), rows sorted by key."""

    etag: str | None
    table: pa.Table
    loaded_at: float


class _Conflict(Exception):
    """A conditional PUT lost a race; the caller reads again and retries."""


class S3Store(SealedStore):
    """Sealed records in an S3-compatible bucket, partitioned by entity key."""

    def __init__(self, url: str, keyring: Keyring, *, endpoint: str | None = None, region: str = "us-east-1",
                 compression_level: int = 3, partitions: int = 16, cache_seconds: float = 1.0) -> None:
        super().__init__(keyring, compression_level, partitions)
        self.url = url
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.cache_seconds = cache_seconds
        self.requests: Counter[str] = Counter()
        self._index_key = keyring.derive("store:s3-index")
        self._cache: dict[str, _Index] = {}
        self._lock = threading.Lock()
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region,
            config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32,
                              s3={"addressing_style": "path"} if endpoint else None),
        )
        self._client.meta.events.register("before-call.s3", self._count)
        self._versioned = self._bucket_versioned()
        self._open_meta(keyring.fingerprint())

    @classmethod
    def from_config(cls, cfg: StoreConfig, keyring: Keyring) -> S3Store:
        assert cfg.url is not None
        return cls(cfg.url, keyring, endpoint=cfg.endpoint, region=cfg.region, compression_level=cfg.compression_level,
                   partitions=cfg.partitions, cache_seconds=cfg.cache_seconds)

    def __getstate__(self) -> dict:
        raise TypeError("an S3Store is not sent to workers: each worker opens the store from the workspace config")

    # requests ---------------------------------------------------------------------------
    def _count(self, model: Any, **_: Any) -> None:
        self.requests[model.name] += 1

    def _name(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _where(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{name}" + (f" at {self.endpoint}" if self.endpoint else "")

    def _call(self, op: str, name: str, **kw: Any) -> Any:
        """One S3 request with errors mapped to microdb's; None for a missing object."""
        try:
            return getattr(self._client, op)(Bucket=self.bucket, **({"Key": name} if name else {}), **kw)
        except NoCredentialsError:
            raise ConfigError(
                f"store {self.url}: no object-store credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise _Conflict(name) from None
            if code == "304" or status == 304:
                return {"NotModified": True}
            if code == "NoSuchBucket":
                raise ConfigError(f"store {self.url}: bucket {self.bucket!r} does not exist{self._at()}; create it first") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(f"store {self.url}: {op} on {self._where(name)} was denied ({code}); check the credentials and bucket policy") from None
            raise StoreUnavailable(f"store {self.url}: {op} on {self._where(name)} failed: {code or status} {exc}") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"store {self.url}: {op} on {self._where(name)} failed: {exc}") from None

    def _at(self) -> str:
        return f" at {self.endpoint}" if self.endpoint else ""

    def _get_bytes(self, name: str, **kw: Any) -> bytes | None:
        res = self._call("get_object", name, **kw)
        return None if res is None else res["Body"].read()

    def _put(self, name: str, body: bytes, **kw: Any) -> str:
        return self._call("put_object", name, Body=body, **kw)["ETag"]

    def _delete(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            self._call("delete_objects", "", Delete={"Objects": [{"Key": n} for n in chunk], "Quiet": True})
        if self._versioned:
            for n in names:
                self._purge_versions(n)

    def _purge_versions(self, name: str, keep_latest: bool = False) -> None:
        """Delete stored versions of ``name`` (a versioned bucket keeps old bytes otherwise)."""
        res = self._call("list_object_versions", "", Prefix=name) or {}
        victims = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                   for v in res.get("Versions", []) + res.get("DeleteMarkers", [])
                   if v["Key"] == name and not (keep_latest and v.get("IsLatest"))]
        if victims:
            self._call("delete_objects", "", Delete={"Objects": victims, "Quiet": True})

    def _bucket_versioned(self) -> bool:
        res = self._call("get_bucket_versioning", "")
        return bool(res) and res.get("Status") in ("Enabled", "Suspended")

    # meta and schemas -------------------------------------------------------------------
    def _open_meta(self, fingerprint: str) -> None:
        name = self._name("meta.json")
        raw = self._get_bytes(name)
        if raw is None:
            meta = {"format": FORMAT, "key_fingerprint": fingerprint, "partitions": self.partitions}
            try:
                self._put(name, json.dumps(meta).encode(), IfNoneMatch="*")
                return
            except _Conflict:  # another process created it first
                raw = self._get_bytes(name)
                assert raw is not None
        meta = json.loads(raw)
        if meta.get("key_fingerprint") != fingerprint:
            raise KeyMaterialError(
                f"{self.url}: the master key does not match the one this store was sealed with "
                "(check MICRODB_MASTER_KEY or the workspace key file)"
            )
        if meta.get("format") != FORMAT:
            raise SealError(f"{self.url}: store format {meta.get('format')}, this microdb reads {FORMAT}")
        if meta.get("partitions") != self.partitions:
            raise ConfigError(
                f"{self.url}: the store was created with {meta.get('partitions')} partitions but "
                f"[store] partitions = {self.partitions}; set it back to {meta.get('partitions')}"
            )

    def register_schema(self, schema: pa.Schema) -> str:
        sid = codec.schema_id(schema)
        if sid not in self._schemas:
            try:
                self._put(self._name("schemas", sid), schema.serialize().to_pybytes(), IfNoneMatch="*")
            except _Conflict:
                pass  # content-addressed: already there, with the same bytes
            self._schemas[sid] = schema
        return sid

    def _load_schema(self, sid: str) -> pa.Schema:
        raw = self._get_bytes(self._name("schemas", sid))
        if raw is None:
            raise SealError(f"{self.url}: schema {sid} referenced by a record is missing")
        schema = pa.ipc.read_schema(pa.py_buffer(raw))
        self._schemas[sid] = schema
        return schema

    # partition indexes ------------------------------------------------------------------
    def _part(self, kind: str, key: str) -> int:
        return 0 if kind == "reference" else partition_of(key, self.partitions)

    def _dir(self, kind: str, etype: str, part: int) -> str:
        return self._name("data", kind, quote(etype, safe=""), f"{part:04d}")

    def _seal_index(self, name: str, table: pa.Table) -> bytes:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, INDEX_SCHEMA) as w:
            w.write_table(table)
        plain = sink.getvalue()
        nonce = os.urandom(12)
        body = codec.compress(plain, 3)
        head = len(plain).to_bytes(8, "little")
        return _MAGIC + nonce + AESGCM(self._index_key).encrypt(nonce, head + body, name.encode())

    def _open_index(self, name: str, raw: bytes) -> pa.Table:
        if not raw.startswith(_MAGIC):
            raise SealError(f"{self._where(name)} is not a microdb partition index")
        nonce = raw[len(_MAGIC) : len(_MAGIC) + 12]
        try:
            plain = AESGCM(self._index_key).decrypt(nonce, raw[len(_MAGIC) + 12 :], name.encode())
        except InvalidTag:
            raise SealError(f"partition index {self._where(name)} failed authentication: tampered with or moved") from None
        payload = codec.decompress(plain[8:], int.from_bytes(plain[:8], "little"))
        return pa.ipc.open_stream(payload).read_all()

    def _index(self, d: str, fresh: bool = False) -> _Index:
        """The index of partition folder ``d`` (cached up to ``cache_seconds`` unless ``fresh``)."""
        name = f"{d}/index"
        with self._lock:
            cached = self._cache.get(name)
        now = time.monotonic()
        if cached is not None and not fresh and now - cached.loaded_at < self.cache_seconds:
            return cached
        kw = {"IfNoneMatch": cached.etag} if cached is not None and cached.etag else {}
        res = self._call("get_object", name, **kw)
        if res is not None and res.get("NotModified"):
            idx = _Index(cached.etag, cached.table, now)  # type: ignore[union-attr]
        elif res is None:
            idx = _Index(None, INDEX_SCHEMA.empty_table(), now)
        else:
            idx = _Index(res["ETag"], self._open_index(name, res["Body"].read()), now)
        with self._lock:
            self._cache[name] = idx
        return idx

    def _publish(self, d: str, old: _Index, table: pa.Table) -> _Index:
        """Replace the index of ``d`` if it is still ``old`` (else :class:`_Conflict`)."""
        name = f"{d}/index"
        table = table.sort_by("key") if table.num_rows else INDEX_SCHEMA.empty_table()
        cond = {"IfMatch": old.etag} if old.etag else {"IfNoneMatch": "*"}
        etag = self._put(name, self._seal_index(name, table), **cond)
        idx = _Index(etag, table, time.monotonic())
        with self._lock:
            self._cache[name] = idx
        return idx

    def invalidate(self, etype: str | None = None) -> None:
        """Forget cached indexes (after other processes wrote), of one entity type or all."""
        with self._lock:
            if etype is None:
                self._cache.clear()
            else:
                mark = f"/{quote(etype, safe='')}/"
                self._cache = {k: v for k, v in self._cache.items() if mark not in k}

    def _all(self, kind: str, etype: str) -> list[pa.Table]:
        dirs = [self._dir(kind, etype, p) for p in range(self.partitions if kind == "entity" else 1)]
        with ThreadPoolExecutor(min(8, len(dirs))) as pool:
            return [i.table for i in pool.map(self._index, dirs)]

    # writing ----------------------------------------------------------------------------
    def write_groups(self, keys: list[str], batch_size: int) -> list[np.ndarray]:
        """One group per key partition: each partition is sealed whole and published once."""
        if not keys:
            return []
        ids = partition_ids(pa.array(keys, pa.string()), self.partitions)
        order = np.argsort(ids, kind="stable")
        cuts = np.flatnonzero(np.diff(ids[order])) + 1
        return [g for g in np.split(order, cuts) if len(g)]

    def write_rows(self, rows: list[tuple]) -> None:
        """Publish sealed rows; each partition they touch is replaced atomically."""
        groups: dict[tuple[str, str, int], list[tuple]] = {}
        if rows and all(r[0] == "entity" for r in rows) and len({r[1] for r in rows}) == 1 and len(rows) > 64:
            ids = partition_ids(pa.array([r[2] for r in rows], pa.string()), self.partitions)
            for r, p in zip(rows, ids.tolist()):
                groups.setdefault((r[0], r[1], p), []).append(r)
        else:
            for r in rows:
                groups.setdefault((r[0], r[1], self._part(r[0], r[2])), []).append(r)
        for (kind, etype, part), group in groups.items():
            self._write_partition(self._dir(kind, etype, part), group)

    def _write_segments(self, d: str, blobs: list[bytes]) -> tuple[list[str], np.ndarray]:
        """Upload blobs packed into segments; return the segment of each blob and its offset."""
        sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
        segs: list[str] = []
        offsets = np.zeros(len(blobs), dtype=np.int64)
        start = 0
        while start < len(blobs):
            stop, total = start, 0
            while stop < len(blobs) and (stop == start or total + sizes[stop] <= SEGMENT_BYTES):
                total += int(sizes[stop])
                stop += 1
            name = f"{d}/seg-{uuid.uuid4().hex}"
            self._put(name, b"".join(blobs[start:stop]))
            offsets[start:stop] = np.concatenate([[0], np.cumsum(sizes[start : stop - 1])])
            segs += [name.rsplit("/", 1)[1]] * (stop - start)
            start = stop
        return segs, offsets

    def _write_partition(self, d: str, rows: list[tuple]) -> None:
        latest: dict[str, tuple] = {r[2]: r for r in rows}  # the last write of a key wins
        rows = list(latest.values())
        _, _, keys, versions, synced, nrows, sizes, wrapped, nonces, blobs = (list(c) for c in zip(*rows))
        segs, offsets = self._write_segments(d, blobs)
        new = pa.table({
            "key": pa.array(keys, pa.string()), "version": pa.array(versions, pa.int64()),
            "synced_at": pa.array(synced, pa.float64()), "rows": pa.array(nrows, pa.int64()),
            "size": pa.array(sizes, pa.int64()), "segment": pa.array(segs, pa.string()),
            "offset": pa.array(offsets, pa.int64()), "length": pa.array([len(b) for b in blobs], pa.int64()),
            "nonce": pa.array(nonces, pa.binary()), "wrapped": pa.array(wrapped, pa.binary()),
        }, schema=INDEX_SCHEMA)
        for _ in range(_CAS_TRIES):
            old = self._index(d, fresh=True)
            kept = old.table.filter(pc.invert(pc.is_in(old.table["key"], value_set=new["key"])))
            try:
                idx = self._publish(d, old, pa.concat_tables([kept, new]))
            except _Conflict:
                continue
            self._drop_unreferenced(d, old, idx)
            if len(pc.unique(idx.table["segment"])) > MAX_SEGMENTS:
                self._compact(d)
            return
        self._delete([f"{d}/{s}" for s in set(segs)])
        raise StoreUnavailable(f"store {self.url}: {self._where(d)} kept changing under {_CAS_TRIES} attempts to publish")

    def _drop_unreferenced(self, d: str, old: _Index, new: _Index) -> None:
        gone = set(pc.unique(old.table["segment"]).to_pylist()) - set(pc.unique(new.table["segment"]).to_pylist())
        if gone:
            self._delete([f"{d}/{s}" for s in sorted(gone)])

    def _rewrite(self, d: str, table: pa.Table, segments: set[str]) -> tuple[pa.Table, list[str]]:
        """Copy the live blobs of ``segments`` into new segments; return ``table`` pointing at
        them and the new segment objects (to delete if the publish loses a race)."""
        moving = table.filter(pc.is_in(table["segment"], value_set=pa.array(sorted(segments), pa.string())))
        if moving.num_rows == 0:
            return table, []
        data = {s: self._get_bytes(f"{d}/{s}") for s in segments}
        if any(v is None for v in data.values()):
            raise _Conflict(d)  # a concurrent compaction removed one: read again
        cols = moving.select(["segment", "offset", "length"]).to_pydict()
        blobs = [data[s][o : o + n] for s, o, n in zip(cols["segment"], cols["offset"], cols["length"])]  # type: ignore[index]
        segs, offsets = self._write_segments(d, blobs)
        moved = moving.set_column(5, "segment", pa.array(segs, pa.string())).set_column(6, "offset", pa.array(offsets, pa.int64()))
        kept = table.filter(pc.invert(pc.is_in(table["key"], value_set=moving["key"])))
        return pa.concat_tables([kept, moved]), [f"{d}/{s}" for s in sorted(set(segs))]

    def _compact(self, d: str) -> None:
        old = self._index(d, fresh=True)
        try:
            table, written = self._rewrite(d, old.table, set(pc.unique(old.table["segment"]).to_pylist()))
        except _Conflict:
            return  # someone else compacted meanwhile
        try:
            new = self._publish(d, old, table)
        except _Conflict:
            self._delete(written)  # someone else wrote meanwhile; the next write compacts
            return
        self._drop_unreferenced(d, old, new)

    def vacuum(self, etype: str, older_than: float = 3600.0) -> int:
        """Delete segments no index refers to (left by writers that died before publishing)."""
        removed = 0
        for kind in ("entity", "reference"):
            for p in range(self.partitions if kind == "entity" else 1):
                d = self._dir(kind, etype, p)
                live = set(self._index(d, fresh=True).table["segment"].to_pylist())
                res = self._call("list_objects_v2", "", Prefix=f"{d}/seg-") or {}
                cutoff = time.time() - older_than
                dead = [o["Key"] for o in res.get("Contents", [])
                        if o["Key"].rsplit("/", 1)[1] not in live and o["LastModified"].timestamp() < cutoff]
                if dead:
                    self._delete(dead)
                    removed += len(dead)
        return removed

    # reading ----------------------------------------------------------------------------
    def _row(self, kind: str, etype: str, key: str, fresh: bool = False) -> tuple[str, dict] | None:
        d = self._dir(kind, etype, self._part(kind, key))
        table = self._index(d, fresh).table
        i = pc.index(table["key"], key).as_py() if table.num_rows else -1
        return None if i < 0 else (d, table.slice(i, 1).to_pylist()[0])

    def info(self, etype: str, key: str) -> RecordInfo | None:
        found = self._row("entity", etype, key)
        return None if found is None else RecordInfo(found[1]["version"], found[1]["synced_at"], found[1]["rows"])

    def get(self, etype: str, key: str, kind: str = "entity") -> Unsealed | None:
        for fresh in (False, True):
            found = self._row(kind, etype, key, fresh)
            if found is None:
                return None
            d, r = found
            blob = self._get_bytes(f"{d}/{r['segment']}", Range=f"bytes={r['offset']}-{r['offset'] + r['length'] - 1}")
            if blob is not None:
                payload = self._unseal(kind, etype, key, r["wrapped"], r["nonce"], blob, r["size"])
                return Unsealed(self._decode(payload), RecordInfo(r["version"], r["synced_at"], r["rows"]))
        raise StoreUnavailable(f"store {self.url}: {etype}/{key} is indexed but its segment {r['segment']} is gone")

    def _reference_names(self, etype: str) -> list[str]:
        return sorted(self._index(self._dir("reference", etype, 0)).table["key"].to_pylist())

    def reference_version(self, etype: str) -> int:
        table = self._index(self._dir("reference", etype, 0)).table
        return int(pc.max(table["version"]).as_py() or 0) if table.num_rows else 0

    def keys(self, etype: str, limit: int | None = None, offset: int = 0) -> list[str]:
        keys = pa.chunked_array([t["key"] for t in self._all("entity", etype)], pa.string())
        keys = keys.take(pc.sort_indices(keys))
        if limit is not None:
            keys = keys.slice(offset, limit)
        return keys.to_pylist()

    def count(self, etype: str) -> int:
        return sum(t.num_rows for t in self._all("entity", etype))

    def stats(self, etype: str) -> dict[str, int]:
        tables = self._all("entity", etype) + self._all("reference", etype)
        records = sum(t.num_rows for t in tables)
        rows = sum(int(pc.sum(t["rows"]).as_py() or 0) for t in tables if t.num_rows)
        size = sum(int(pc.sum(t["length"]).as_py() or 0) + 52 * t.num_rows for t in tables if t.num_rows)
        return {"records": records, "rows": rows, "bytes": size}

    def object_stats(self) -> dict[str, int]:
        """Objects and bytes under the store's prefix (what the bucket bills)."""
        objects = size = 0
        token: dict = {}
        while True:
            res = self._call("list_objects_v2", "", Prefix=self._name() + "/" if self.prefix else "", **token) or {}
            for o in res.get("Contents", []):
                objects += 1
                size += o["Size"]
            if not res.get("IsTruncated"):
                return {"objects": objects, "bytes": size}
            token = {"ContinuationToken": res["NextContinuationToken"]}

    # forgetting -------------------------------------------------------------------------
    def forget(self, etype: str, key: str) -> bool:
        """Rewrite the entity's partition without it: its wrapped key leaves the index, its
        blob leaves the segment, and the old objects are deleted."""
        d = self._dir("entity", etype, self._part("entity", key))
        for _ in range(_CAS_TRIES):
            old = self._index(d, fresh=True)
            hit = old.table.filter(pc.equal(old.table["key"], key))
            if hit.num_rows == 0:
                return False
            rest = old.table.filter(pc.not_equal(old.table["key"], key))
            written: list[str] = []
            try:
                table, written = self._rewrite(d, rest, self._dirty_segments(d, old.table, rest))
                new = self._publish(d, old, table)
            except _Conflict:
                self._delete(written)
                continue
            self._drop_unreferenced(d, old, new)
            if self._versioned:
                self._purge_versions(f"{d}/index", keep_latest=True)  # old versions still hold the wrapped key
            return True
        raise StoreUnavailable(f"store {self.url}: {self._where(d)} kept changing under {_CAS_TRIES} attempts to forget {etype}/{key}")

    def _dirty_segments(self, d: str, before: pa.Table, after: pa.Table) -> set[str]:
        """Segments indexed in ``before`` that hold any byte ``after`` does not use (the
        forgotten blob, or older versions of re-synced entities)."""
        res = self._call("list_objects_v2", "", Prefix=f"{d}/seg-") or {}
        sizes = {o["Key"].rsplit("/", 1)[1]: o["Size"] for o in res.get("Contents", [])}
        live: dict[str, int] = {}
        if after.num_rows:
            sums = after.group_by("segment").aggregate([("length", "sum")]).to_pydict()
            live = dict(zip(sums["segment"], sums["length_sum"]))
        return {s for s in set(before["segment"].to_pylist()) if live.get(s, 0) != sizes.get(s, -1)}

    # sync state -------------------------------------------------------------------------
    def set_sync_state(self, etype: str, last_sync: float, watermark: str | None, key_columns: list[str]) -> None:
        name = self._name("state", quote(etype, safe="") + ".json")
        old = self.sync_state(etype) or {}
        state = {"last_sync": last_sync, "watermark": watermark or old.get("watermark"), "key_columns": key_columns}
        self._put(name, json.dumps(state).encode())

    def sync_state(self, etype: str) -> dict | None:
        raw = self._get_bytes(self._name("state", quote(etype, safe="") + ".json"))
        return None if raw is None else json.loads(raw)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
