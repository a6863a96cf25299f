"""PostgreSQL types for Arrow columns: type OIDs, column-wise text and binary encoding of
result rows into DataRow messages, and decoding of Bind parameters by their declared OID.

Rows are encoded a column at a time with pyarrow.compute and numpy, then stitched into
DataRow messages by one element-wise binary join, so no Python code runs per cell
(nested types, sent as JSON, are the one exception).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import struct
import uuid
import zoneinfo
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import MicrodbError

BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT, OID, JSON = 16, 17, 19, 20, 21, 23, 25, 26, 114
FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR = 700, 701, 705, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC, UUID, JSONB = 1082, 1083, 1114, 1184, 1186, 1700, 2950, 3802

_SIZES = {BOOL: 1, INT2: 2, INT4: 4, INT8: 8, OID: 4, FLOAT4: 4, FLOAT8: 8, DATE: 4, TIME: 8,
          TIMESTAMP: 8, TIMESTAMPTZ: 8, INTERVAL: 16, UUID: 16}
BINARY_OIDS = frozenset({BOOL, BYTEA, INT2, INT4, INT8, OID, TEXT, VARCHAR, JSON, FLOAT4, FLOAT8, DATE, TIME,
                         TIMESTAMP, TIMESTAMPTZ, INTERVAL, UUID})  # result types with a binary encoder
_STRINGS = {0, TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, JSON}
_PG_EPOCH_DAYS = 10957  # 2000-01-01 in days since 1970-01-01
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400_000_000
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_EMPTY = pa.scalar(b"", pa.large_binary())
_SMALL_RESULT = 32  # rows; up to this many, DataRows are assembled in Python


class PgWireError(MicrodbError):
    """A request the wire server refuses or cannot honour, with its PostgreSQL SQLSTATE."""

    def __init__(self, message: str, sqlstate: str = "XX000", fatal: bool = False) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.fatal = fatal


@dataclass(frozen=True)
class PgType:
    """A PostgreSQL type as RowDescription names it: OID and typlen (-1 = variable)."""

    oid: int
    size: int


def pg_type(t: pa.DataType) -> PgType:
    """The PostgreSQL type a column of Arrow type ``t`` is sent as; unknown types → text."""
    oid = _oid(t)
    return PgType(oid, _SIZES.get(oid, -1))


def _oid(t: pa.DataType) -> int:
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.uuid":
            return UUID
        if t.extension_name == "arrow.json":
            return JSON
        t = t.storage_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    checks = [
        (pa.types.is_boolean, BOOL),
        (lambda x: x in (pa.int8(), pa.int16(), pa.uint8()), INT2),
        (lambda x: x in (pa.int32(), pa.uint16()), INT4),
        (lambda x: x in (pa.int64(), pa.uint32()), INT8),
        (lambda x: x == pa.uint64() or pa.types.is_decimal(x), NUMERIC),
        (lambda x: x in (pa.float16(), pa.float32()), FLOAT4),
        (pa.types.is_float64, FLOAT8),
        (lambda x: pa.types.is_string(x) or pa.types.is_large_string(x) or pa.types.is_string_view(x), TEXT),
        (lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x) or pa.types.is_binary_view(x)
         or pa.types.is_fixed_size_binary(x), BYTEA),
        (pa.types.is_date, DATE),
        (pa.types.is_time, TIME),
        (lambda x: pa.types.is_timestamp(x) and x.tz is None, TIMESTAMP),
        (pa.types.is_timestamp, TIMESTAMPTZ),
        (lambda x: pa.types.is_interval(x) or pa.types.is_duration(x), INTERVAL),
        (pa.types.is_nested, JSON),
    ]
    for check, oid in checks:
        if check(t):
            return oid
    return TEXT


# --- column encoders --------------------------------------------------------------------


def _flat(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if isinstance(col.type, pa.BaseExtensionType) and col.type.extension_name not in ("arrow.uuid",):
        col = col.storage
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def _from_numpy(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    """A large_binary array over int64 ``offsets`` and uint8 ``data`` (no nulls)."""
    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1,
                                 [None, pa.py_buffer(offsets.astype(np.int64, copy=False)),
                                  pa.py_buffer(np.ascontiguousarray(data))])


def _fixed(values: np.ndarray, width: int) -> pa.Array:
    """Fixed-width big-endian values (one row of ``width`` bytes each) as large_binary."""
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    n = len(raw) // width if width else 0
    return _from_numpy(np.arange(n + 1, dtype=np.int64) * width, raw)


def _keep_nulls(source: pa.Array, encoded: pa.Array) -> pa.Array:
    if source.null_count == 0:
        return encoded
    return pc.if_else(source.is_valid(), encoded, pa.scalar(None, encoded.type))


def _binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = arr.cast(pa.large_binary())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.empty(0, np.uint8)
    return offsets, data


def _bytea_hex(arr: pa.Array) -> pa.Array:
    """bytea's text form: ``\\x`` followed by lowercase hex, built with numpy."""
    offsets, data = _binary_parts(arr)
    data = data[offsets[0]:offsets[-1]]
    hexed = np.empty((len(data), 2), dtype=np.uint8)
    hexed[:, 0], hexed[:, 1] = _HEX[data >> 4], _HEX[data & 15]
    starts = 2 * (offsets - offsets[0]) + 2 * np.arange(len(offsets), dtype=np.int64)
    out = np.empty(int(starts[-1]), dtype=np.uint8)
    is_hex = np.ones(len(out), dtype=bool)
    is_hex[starts[:-1]] = is_hex[starts[:-1] + 1] = False
    out[starts[:-1]], out[starts[:-1] + 1] = ord("\\"), ord("x")
    out[is_hex] = hexed.reshape(-1)
    return _keep_nulls(arr, _from_numpy(starts, out))


def _uuid_bytes(arr: pa.Array) -> np.ndarray:
    storage = arr.storage if isinstance(arr.type, pa.BaseExtensionType) else arr
    raw = np.frombuffer(storage.buffers()[1], dtype=np.uint8)
    return raw[storage.offset * 16:(storage.offset + len(storage)) * 16].reshape(-1, 16)


def _uuid_text(arr: pa.Array) -> pa.Array:
    raw = _uuid_bytes(arr)
    hexed = np.empty((len(raw), 32), dtype=np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = _HEX[raw >> 4], _HEX[raw & 15]
    out = np.full((len(raw), 36), ord("-"), dtype=np.uint8)
    for src, dst in ((0, 0), (8, 9), (12, 14), (16, 19), (20, 24)):
        width = {0: 8, 20: 12}.get(src, 4)
        out[:, dst:dst + width] = hexed[:, src:src + width]
    return _keep_nulls(arr.storage if isinstance(arr.type, pa.BaseExtensionType) else arr, _fixed(out, 36))


def _strip_zero_fraction(s: pa.Array) -> pa.Array:
    """``03:04:05.120000`` → ``03:04:05.12`` and ``03:04:05.000000`` → ``03:04:05``, as PostgreSQL
    prints. Every input has a fraction, so trimming zeros stops at the dot at the latest."""
    return pc.utf8_rtrim(pc.utf8_rtrim(s, characters="0"), characters=".")


def _utc_micros(arr: pa.Array) -> pa.Array:
    """Timestamps of any unit and zone as naive microseconds (UTC for zoned ones)."""
    return arr.cast(pa.timestamp("us", arr.type.tz), safe=False).cast(pa.int64()).cast(pa.timestamp("us"))


def _interval_fields(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(months, days, nanoseconds) of month_day_nano intervals or durations."""
    n = len(arr)
    if pa.types.is_duration(arr.type):
        ns = pc.fill_null(arr.cast(pa.duration("ns")).cast(pa.int64()), 0).to_numpy()
        return np.zeros(n, np.int32), np.zeros(n, np.int32), ns
    dtype = np.dtype([("m", "<i4"), ("d", "<i4"), ("ns", "<i8")])
    rec = np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset:arr.offset + n]
    return rec["m"], rec["d"], rec["ns"]


def _interval_text(arr: pa.Array) -> pa.Array:
    months, days, ns = _interval_fields(arr)
    us = ns // 1000
    sign = np.where(us < 0, "-", "")
    us = np.abs(us)
    secs, frac = np.divmod(us, 1_000_000)

    def pad(x: np.ndarray) -> pa.Array:
        return pc.utf8_lpad(pa.array(x).cast(pa.string()), width=2, padding="0")

    micros = pc.utf8_lpad(pa.array(frac).cast(pa.string()), width=6, padding="0")
    fraction = pc.binary_join_element_wise(".", micros, "")
    clock = pc.binary_join_element_wise(pa.array(sign), pad(secs // 3600), ":", pad(secs // 60 % 60), ":",
                                        pad(secs % 60), fraction, "")
    text = pc.binary_join_element_wise(pa.array(months).cast(pa.string()), " mons ",
                                       pa.array(days).cast(pa.string()), " days ", _strip_zero_fraction(clock), "")
    return _keep_nulls(arr, text)


def _json_text(arr: pa.Array) -> pa.Array:
    # Slow path (Python per value) for nested types only: lists, structs and maps as JSON.
    return pa.array([None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in arr.to_pylist()],
                    pa.large_string())


def text_column(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """PostgreSQL's text output of every value of ``col`` (large_binary, nulls kept)."""
    arr = _flat(col)
    t = arr.type
    if isinstance(t, pa.BaseExtensionType):  # arrow.uuid
        out = _uuid_text(arr)
    elif pa.types.is_null(t):
        out = pa.nulls(len(arr), pa.large_binary())
    elif pa.types.is_boolean(t):
        out = pc.if_else(arr, pa.scalar(b"t", pa.large_binary()), pa.scalar(b"f", pa.large_binary()))
    elif pa.types.is_floating(t):
        out = pc.cast(arr, pa.large_string())
        if not pc.all(pc.is_finite(arr)).as_py():
            out = pc.if_else(pc.is_nan(arr), "NaN", pc.replace_substring(out, "inf", "Infinity"))
    elif pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_date(t):
        out = pc.cast(arr, pa.large_string())
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        out = arr
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
            or pa.types.is_binary_view(t):
        out = _bytea_hex(arr)
    elif pa.types.is_time(t):
        out = _strip_zero_fraction(pc.cast(arr.cast(pa.time64("us"), safe=False), pa.large_string()))
    elif pa.types.is_timestamp(t):
        out = _strip_zero_fraction(pc.cast(_utc_micros(arr), pa.large_string()))
        if t.tz is not None:
            out = pc.binary_join_element_wise(out, pa.scalar("+00", pa.large_string()),
                                              pa.scalar("", pa.large_string()))
    elif pa.types.is_interval(t) or pa.types.is_duration(t):
        out = _interval_text(arr)
    elif pa.types.is_nested(t):
        out = _json_text(arr)
    else:
        try:
            out = pc.cast(arr, pa.large_string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            out = pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.large_string())
    return out.cast(pa.large_binary())


def binary_column(col: pa.Array | pa.ChunkedArray, oid: int) -> pa.Array:
    """PostgreSQL's binary send format of ``col`` sent as type ``oid`` (large_binary, nulls kept)."""
    arr = _flat(col)
    numeric = {INT2: ">i2", INT4: ">i4", INT8: ">i8", OID: ">u4", FLOAT4: ">f4", FLOAT8: ">f8"}
    if oid in numeric:
        filled = pc.fill_null(arr, 0) if arr.null_count else arr
        out = _fixed(filled.to_numpy(zero_copy_only=False).astype(numeric[oid]), int(numeric[oid][-1]))
    elif oid == BOOL:
        filled = pc.fill_null(arr, False) if arr.null_count else arr
        out = _fixed(filled.to_numpy(zero_copy_only=False).astype(np.uint8), 1)
    elif oid == DATE:
        days = pc.fill_null(arr.cast(pa.date32()).cast(pa.int32()), 0).to_numpy()
        out = _fixed((days - _PG_EPOCH_DAYS).astype(">i4"), 4)
    elif oid in (TIMESTAMP, TIMESTAMPTZ):
        us = pc.fill_null(_utc_micros(arr).cast(pa.int64()), 0).to_numpy()
        out = _fixed((us - _PG_EPOCH_US).astype(">i8"), 8)
    elif oid == TIME:
        us = pc.fill_null(arr.cast(pa.time64("us"), safe=False).cast(pa.int64()), 0).to_numpy()
        out = _fixed(us.astype(">i8"), 8)
    elif oid == INTERVAL:
        months, days, ns = _interval_fields(arr)
        rec = np.empty(len(arr), dtype=[("us", ">i8"), ("d", ">i4"), ("m", ">i4")])
        rec["us"], rec["d"], rec["m"] = ns // 1000, days, months
        out = _fixed(rec, 16)
    elif oid == UUID and isinstance(arr.type, pa.BaseExtensionType):
        out = _fixed(_uuid_bytes(arr), 16)
    elif oid == BYTEA:
        out = arr.cast(pa.large_binary())
    elif oid in (TEXT, VARCHAR, JSON, UUID):
        return text_column(arr)  # their binary form is their text form
    else:
        raise PgWireError(f"binary result format is not supported for type OID {oid}; request text format",
                          "0A000")
    return _keep_nulls(arr, out)


def datarows(columns: list[pa.Array]) -> pa.Buffer:
    """DataRow messages for encoded columns (large_binary, null = SQL NULL), as one buffer.

    Each row is ``'D' int32 length, int16 ncols`` then per column ``int32 length`` (-1 for
    NULL) and the bytes; prefixes are computed with numpy and the rows joined by Arrow.
    """
    if not columns:
        raise ValueError("datarows needs at least one column")
    n = len(columns[0])
    if n <= _SMALL_RESULT:
        return pa.py_buffer(_datarows_small(columns))
    parts = []
    total = np.full(n, 6, dtype=np.int64)
    for col in columns:
        offsets, _ = _binary_parts(col)
        lengths = np.diff(offsets)
        if col.null_count:
            lengths = np.where(col.is_valid().to_numpy(zero_copy_only=False), lengths, -1)
            col = pc.fill_null(col, _EMPTY)
        total += 4 + np.maximum(lengths, 0)
        parts += [_fixed(lengths.astype(">i4"), 4), col]
    header = np.empty((n, 7), dtype=np.uint8)
    header[:, 0] = ord("D")
    header[:, 1:5] = total.astype(">i4").view(np.uint8).reshape(n, 4)
    header[:, 5:7] = np.frombuffer(struct.pack(">h", len(columns)), dtype=np.uint8)
    joined = pc.binary_join_element_wise(_fixed(header, 7), *parts, _EMPTY)
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset:joined.offset + n + 1]
    return joined.buffers()[2][int(offsets[0]):int(offsets[-1])]


def _datarows_small(columns: list[pa.Array]) -> bytes:
    """A few rows are cheaper to stitch in Python than the fixed cost of the vectorized path."""
    out = bytearray()
    head = struct.pack(">h", len(columns))
    for row in zip(*(c.to_pylist() for c in columns)):
        body = head + b"".join(b"\xff\xff\xff\xff" if v is None else struct.pack(">i", len(v)) + v for v in row)
        out += b"D" + struct.pack(">i", len(body) + 4) + body
    return bytes(out)


# --- Bind parameters --------------------------------------------------------------------

_TRUE = {"t", "true", "y", "yes", "on", "1"}
_FALSE = {"f", "false", "n", "no", "off", "0"}


def decode_param(value: bytes | None, oid: int, fmt: int, timezone: str = "UTC") -> object:
    """A Bind parameter as a Python value chosen by its declared OID, never by its content.

    Untyped parameters (OID 0) and text-like types stay ``str``: a '2024' or 'hi' the
    client sent as text is text. Naive timestamptz values are read in ``timezone``.
    """
    if value is None:
        return None
    try:
        if fmt == 1:
            return _decode_binary(bytes(value), oid)
        if fmt != 0:
            raise PgWireError(f"unsupported parameter format code {fmt}", "08P01")
        return _decode_text(bytes(value).decode("utf-8"), oid, timezone)
    except (ValueError, struct.error, decimal.InvalidOperation, UnicodeDecodeError) as exc:
        raise PgWireError(f"invalid input for parameter of type OID {oid}: {exc}", "22P02") from None


def _decode_text(s: str, oid: int, timezone: str) -> object:
    if oid in _STRINGS or oid == JSONB:
        return s
    if oid in (INT2, INT4, INT8, OID):
        return int(s)
    if oid in (FLOAT4, FLOAT8):
        return float(s)
    if oid == NUMERIC:
        return decimal.Decimal(s)
    if oid == BOOL:
        low = s.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"invalid boolean {s!r}")
    if oid == DATE:
        return dt.date.fromisoformat(s.strip())
    if oid == TIME:
        return dt.time.fromisoformat(s.strip())
    if oid == TIMESTAMP:
        return dt.datetime.fromisoformat(s.strip()).replace(tzinfo=None)
    if oid == TIMESTAMPTZ:
        ts = dt.datetime.fromisoformat(s.strip())
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=_zone(timezone))
        return ts.astimezone(dt.timezone.utc)
    if oid == BYTEA:
        return _bytea_from_text(s)
    if oid == UUID:
        return uuid.UUID(s)
    return s  # interval and other types: the backend casts the string


def _zone(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.timezone.utc


def _bytea_from_text(s: str) -> bytes:
    if s.startswith("\\x"):
        return bytes.fromhex(s[2:])
    out, i = bytearray(), 0  # escape format: \\ and \ooo
    while i < len(s):
        if s[i] == "\\" and s[i + 1:i + 2] == "\\":
            out.append(0x5C)
            i += 2
        elif s[i] == "\\":
            out.append(int(s[i + 1:i + 4], 8))
            i += 4
        else:
            out += s[i].encode()
            i += 1
    return bytes(out)


def _decode_binary(b: bytes, oid: int) -> object:
    fixed = {INT2: ">h", INT4: ">i", INT8: ">q", OID: ">I", FLOAT4: ">f", FLOAT8: ">d"}
    if oid in fixed:
        return struct.unpack(fixed[oid], b)[0]
    if oid == BOOL:
        return struct.unpack(">?", b)[0]
    if oid in _STRINGS:
        return b.decode("utf-8")
    if oid == JSONB:
        if b[:1] != b"\x01":
            raise ValueError("unsupported jsonb version")
        return b[1:].decode("utf-8")
    if oid == BYTEA:
        return b
    if oid == DATE:
        return dt.date(2000, 1, 1) + dt.timedelta(days=struct.unpack(">i", b)[0])
    if oid in (TIMESTAMP, TIMESTAMPTZ):
        ts = dt.datetime(2000, 1, 1) + dt.timedelta(microseconds=struct.unpack(">q", b)[0])
        return ts.replace(tzinfo=dt.timezone.utc) if oid == TIMESTAMPTZ else ts
    if oid == TIME:
        return (dt.datetime.min + dt.timedelta(microseconds=struct.unpack(">q", b)[0])).time()
    if oid == UUID:
        return uuid.UUID(bytes=b)
    if oid == NUMERIC:
        return _numeric_from_binary(b)
    if oid == INTERVAL:
        us, days, months = struct.unpack(">qii", b)
        if months:
            raise ValueError("intervals with months have no exact duration; send them as text")
        return dt.timedelta(days=days, microseconds=us)
    raise PgWireError(f"binary parameter format is not supported for type OID {oid}; send it as text", "0A000")


def _numeric_from_binary(b: bytes) -> decimal.Decimal:
    ndigits, weight, sign, dscale = struct.unpack_from(">hhHh", b)
    special = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}
    if sign in special:
        return decimal.Decimal(special[sign])
    digits = struct.unpack_from(f">{ndigits}H", b, 8)
    ctx = decimal.Context(prec=max(1000, 4 * ndigits + dscale + 8))
    number = decimal.Decimal("".join(f"{d:04d}" for d in digits) or "0").scaleb(4 * (weight - ndigits + 1), ctx)
    number = number.quantize(decimal.Decimal(1).scaleb(-dscale), context=ctx)
    return -number if sign == 0x4000 else number
