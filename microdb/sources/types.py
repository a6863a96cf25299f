"""Declared SQL column types to Arrow types, and Python values to typed Arrow columns."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa

_DECIMAL = re.compile(r"^(?:numeric|decimal|number)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def arrow_type(declared: str) -> pa.DataType:
    """The Arrow type of a declared SQL type (SQLite affinity rules as the fallback)."""
    d = declared.strip().lower()
    m = _DECIMAL.match(d)
    if m:
        p, s = int(m.group(1)), int(m.group(2) or 0)
        return pa.decimal128(p, s) if p <= 38 else pa.float64()
    if d in ("bool", "boolean", "tinyint(1)") or d.startswith("bit(1)"):
        return pa.bool_()
    if "timestamp" in d and ("with time zone" in d or d.startswith("timestamptz")):
        return pa.timestamp("us", tz="UTC")
    if d.startswith(("timestamp", "datetime")):
        return pa.timestamp("us")
    if d == "date":
        return pa.date32()
    if d.startswith("time"):
        return pa.time64("us")
    if d.startswith(("smallint", "int2", "tinyint", "mediumint")) or d in ("integer", "int", "int4", "serial"):
        return pa.int64()
    if "int" in d:
        return pa.int64()
    if d.startswith(("real", "double", "float", "numeric", "decimal")):
        return pa.float64()
    if d.startswith(("blob", "bytea", "binary", "varbinary", "longblob", "mediumblob", "tinyblob")):
        return pa.binary()
    return pa.string()


def to_column(values: Sequence[object], target: pa.DataType) -> pa.Array:
    """Values fetched by a DB-API driver as an Arrow array of ``target`` type."""
    try:
        arr = pa.array(values, type=target) if not _needs_cast(target) else pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        arr = pa.array([None if v is None else (v if isinstance(v, str) else str(v)) for v in values], pa.string())
    if arr.type != target:
        if pa.types.is_string(arr.type) and pa.types.is_boolean(target):
            arr = pa.array([None if v is None else v.lower() in ("1", "t", "true", "yes") for v in arr.to_pylist()], pa.bool_())
        arr = arr.cast(target, safe=False)
    return arr


def _needs_cast(target: pa.DataType) -> bool:
    return (
        pa.types.is_boolean(target)
        or pa.types.is_date(target)
        or pa.types.is_timestamp(target)
        or pa.types.is_decimal(target)
        or pa.types.is_time(target)
    )
