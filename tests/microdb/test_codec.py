"""The record codec: an entity's serialized tables carry nothing of the rows around its slice."""

from __future__ import annotations

import pyarrow as pa

from microdb import codec


def test_slices_carry_no_bits_of_neighbouring_rows():
    """A byte-aligned slice whose length is not a multiple of 8 must not serialize the
    validity or boolean bits of the next entity's rows (they share the bitmap's last byte)."""
    flags = pa.array([False, False, False, True, True, True, True, True, None, True])
    amounts = pa.array([1, None, 3, 4, 5, 6, 7, 8, 9, 10], pa.int64())
    names = pa.array(["a", "b", None, "d", "e", "f", "g", "h", "i", "j"])
    schema = pa.schema([("flag", pa.bool_()), ("amount", pa.int64()), ("name", pa.string())])
    whole = pa.RecordBatch.from_arrays([flags, amounts, names], schema=schema)
    sid = codec.schema_id(schema)
    mine = whole.slice(0, 3)
    fresh = pa.RecordBatch.from_pylist(mine.to_pylist(), schema=schema)
    assert codec.encode({"t": (sid, mine)}) == codec.encode({"t": (sid, fresh)})
    decoded = codec.decode(codec.encode({"t": (sid, mine)}), {sid: schema})["t"]
    assert decoded.to_pylist() == mine.to_pylist()
