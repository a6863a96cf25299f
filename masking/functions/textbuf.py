"""Arrow string arrays as one UTF-8 byte buffer plus offsets, and back.

Character-level masking (``partial``, ``fpe``) works on the whole buffer with numpy
instead of looping over Python strings.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def is_text(t: pa.DataType) -> bool:
    """True for the Arrow string types (``string``, ``large_string``, ``string_view``)."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The bytes and int64 offsets (starting at 0) of a string or binary array.

    Null slots read as empty values; callers keep the validity themselves.
    """
    t = arr.type
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        arr = arr.cast(pa.large_binary())
        t = arr.type
    n = len(arr)
    large = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
    buffers = arr.buffers()
    if n == 0 or buffers[1] is None:
        return np.zeros(0, dtype=np.uint8), np.zeros(n + 1, dtype=np.int64)
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if large else np.int32)[arr.offset : arr.offset + n + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, dtype=np.uint8)
    data = data[offsets[0] : offsets[-1]]
    return data, offsets - offsets[0]


def build_strings(data: np.ndarray, offsets: np.ndarray, like: pa.Array | pa.DataType) -> pa.Array:
    """A string array of the type of ``like`` (string when ``like`` is not text), no nulls."""
    n = len(offsets) - 1
    large = pa.large_string()
    arr = pa.Array.from_buffers(
        large, n, [None, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(np.ascontiguousarray(data, dtype=np.uint8))]
    )
    target = like if isinstance(like, pa.DataType) else like.type
    if not (is_text(target) or pa.types.is_binary(target) or pa.types.is_large_binary(target)):
        target = pa.string()
    return arr if target == large else arr.cast(target)


def with_validity(result: pa.Array, source: pa.Array) -> pa.Array:
    """``result`` with the nulls of ``source`` put back."""
    if source.null_count == 0:
        return result
    return pc.if_else(pc.is_valid(source), result, pa.scalar(None, result.type))


def value_ids(offsets: np.ndarray) -> np.ndarray:
    """For every byte of the buffer, the index of the value it belongs to."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def rank_within(flags: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per byte: how many flagged bytes precede it in its value; per value: the flag count."""
    cum = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    before = cum[offsets[:-1]]
    counts = cum[offsets[1:]] - before
    ranks = cum[:-1] - np.repeat(before, np.diff(offsets))
    return ranks, counts


def flagged_positions(flags: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte positions of flagged bytes, and per value where its run starts in them and how long it is.

    The flagged bytes of value *i* are ``positions[first[i] : first[i] + counts[i]]``.
    """
    positions = np.flatnonzero(flags)
    bounds = np.searchsorted(positions, offsets)
    return positions, bounds[:-1], np.diff(bounds)
