"""Binary form of an entity's tables inside a sealed record.

A record holds, per table, one Arrow IPC record-batch message *without* its schema;
schemas are stored once in the store and referenced by id, so a small entity does not
pay for repeating its column metadata. The whole payload is then zstd-compressed.

Layout: ``u16 n`` then, per table, ``u16 len, name, 24-byte schema id, u32 size``, then
the ``n`` messages back to back.
"""

from __future__ import annotations

import functools
import hashlib
import struct

import pyarrow as pa

SCHEMA_ID_LEN = 24
_COUNT = struct.Struct("<H")
_SIZE = struct.Struct("<I")
_EMPTY: dict[str, pa.RecordBatch] = {}


def schema_id(schema: pa.Schema) -> str:
    """Stable id of a schema (its IPC serialization hashed)."""
    return hashlib.sha256(schema.serialize().to_pybytes()).hexdigest()[:SCHEMA_ID_LEN]


@functools.lru_cache(maxsize=1024)
def _entry(name: str, sid: str) -> bytes:
    raw = name.encode()
    return _COUNT.pack(len(raw)) + raw + sid.encode()


def _empty(sid: str, schema: pa.Schema) -> pa.RecordBatch:
    batch = _EMPTY.get(sid)
    if batch is None:
        batch = _EMPTY[sid] = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
    return batch


def _own_bits(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with bitmaps that hold only its own rows.

    A slice starting on a byte boundary is serialized with its bitmaps' bytes as they
    are, so the last byte would carry validity (and boolean) bits of the rows after it —
    another entity's. Copying such columns zeroes those padding bits."""
    if batch.num_rows % 8 == 0:
        return batch
    columns = list(batch.columns)
    changed = False
    for i, col in enumerate(columns):
        t = col.type
        if col.buffers()[0] is not None or pa.types.is_boolean(t) or pa.types.is_nested(t):
            columns[i] = pa.concat_arrays([col])
            changed = True
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema) if changed else batch


def encode(batches: dict[str, tuple[str, pa.RecordBatch]]) -> bytes:
    """Serialize ``{table: (schema_id, batch)}`` into one uncompressed payload."""
    head = [_COUNT.pack(len(batches))]
    bodies = []
    for name, (sid, batch) in batches.items():
        if batch.num_rows == 0:
            # a zero-length slice would serialize its parent's whole buffers
            batch = _empty(sid, batch.schema)
        else:
            batch = _own_bits(batch)
        buf = batch.serialize()
        head.append(_entry(name, sid))
        head.append(_SIZE.pack(buf.size))
        bodies.append(buf)
    return b"".join(head + bodies)


def decode(payload: bytes, schemas: dict[str, pa.Schema]) -> dict[str, pa.Table]:
    """Inverse of :func:`encode`; ``schemas`` maps schema id to schema (KeyError names a missing id)."""
    (n,) = _COUNT.unpack_from(payload, 0)
    pos = _COUNT.size
    entries = []
    for _ in range(n):
        (ln,) = _COUNT.unpack_from(payload, pos)
        pos += _COUNT.size
        name = payload[pos : pos + ln].decode()
        pos += ln
        sid = payload[pos : pos + SCHEMA_ID_LEN].decode()
        pos += SCHEMA_ID_LEN
        (size,) = _SIZE.unpack_from(payload, pos)
        pos += _SIZE.size
        entries.append((name, sid, size))
    buf = pa.py_buffer(payload)
    out: dict[str, pa.Table] = {}
    for name, sid, size in entries:
        schema = schemas[sid]
        body = buf.slice(pos, size)
        if body.address % 64:  # header lengths vary: realign so Arrow compute kernels get aligned buffers
            aligned = pa.allocate_buffer(size)
            memoryview(aligned).cast("B")[:] = memoryview(body).cast("B")
            body = aligned
        batch = pa.ipc.read_record_batch(body, schema)
        out[name] = pa.Table.from_batches([batch], schema=schema)
        pos += size
    return out


@functools.lru_cache(maxsize=32)
def _codec(level: int) -> pa.Codec:
    return pa.Codec("zstd", compression_level=level)


def compress(payload: bytes, level: int) -> bytes:
    return _codec(level).compress(payload, asbytes=True)


def decompress(data: bytes, size: int) -> bytes:
    return _codec(3).decompress(data, decompressed_size=size, asbytes=True)
