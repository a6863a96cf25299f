"""Binary form of an entity's tables inside a sealed record.

A record holds, per table, one Arrow IPC record-batch message *without* its schema;
schemas are stored once in the store and referenced by id, so a small entity does not
pay for repeating its column metadata. The whole payload is then zstd-compressed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct

import pyarrow as pa

_HEADER = struct.Struct("<I")


def schema_id(schema: pa.Schema) -> str:
    """Stable id of a schema (its IPC serialization hashed)."""
    return hashlib.sha256(schema.serialize().to_pybytes()).hexdigest()[:24]


def encode(batches: dict[str, tuple[str, pa.RecordBatch]]) -> bytes:
    """Serialize ``{table: (schema_id, batch)}`` into one uncompressed payload."""
    parts: list[pa.Buffer] = []
    header = []
    for name, (sid, batch) in batches.items():
        if batch.num_rows == 0:
            # a zero-length slice would serialize its parent's whole buffers
            batch = _empty(batch.schema)
        buf = batch.serialize()
        parts.append(buf)
        header.append([name, sid, buf.size])
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_HEADER.pack(len(head)), head, *(p.to_pybytes() for p in parts)])


_EMPTY: dict[str, pa.RecordBatch] = {}


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    key = schema_id(schema)
    batch = _EMPTY.get(key)
    if batch is None:
        batch = _EMPTY[key] = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
    return batch


def decode(payload: bytes, schemas: dict[str, pa.Schema]) -> dict[str, pa.Table]:
    """Inverse of :func:`encode`; ``schemas`` maps schema id to schema."""
    (hlen,) = _HEADER.unpack_from(payload, 0)
    header = json.loads(payload[_HEADER.size : _HEADER.size + hlen])
    buf = pa.py_buffer(payload)
    pos = _HEADER.size + hlen
    out: dict[str, pa.Table] = {}
    for name, sid, size in header:
        batch = pa.ipc.read_record_batch(buf.slice(pos, size), schemas[sid])
        out[name] = pa.Table.from_batches([batch], schema=schemas[sid])
        pos += size
    return out


@functools.lru_cache(maxsize=32)
def _codec(level: int) -> pa.Codec:
    return pa.Codec("zstd", compression_level=level)


def compress(payload: bytes, level: int) -> bytes:
    return _codec(level).compress(payload, asbytes=True)


def decompress(data: bytes, size: int) -> bytes:
    return _codec(3).decompress(data, decompressed_size=size, asbytes=True)
