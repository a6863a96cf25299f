"""``date_shift``: move every date of one entity by the same secret number of days.

The offset comes from the keyed PRF of the entity key alone (not the table or
column), so every date and timestamp column of ``customer/42`` moves together and
intervals inside the entity are kept exactly, while another entity moves by another
amount. The offset is never zero.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from masking.functions.prf import keyed_u64
from masking.functions.registry import MaskContext, Params, Values, as_array, register

_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


class DateShiftParams(Params):
    """Offsets fall in ``[-max_days, -1] ∪ [1, max_days]``."""

    max_days: int = Field(30, ge=1, le=36_500)


def entity_offset(ctx: MaskContext, max_days: int) -> int:
    """The shift in days for ``ctx.entity_key``; PolicyError without an entity key."""
    if ctx.entity_key is None:
        raise ctx.error("date_shift", "needs the entity key (the instance being read) to pick its offset")
    h = int(keyed_u64(pa.array([ctx.entity_key], type=pa.string()), ctx.key("mask:date_shift"))[0])
    days = 1 + (h >> 1) % max_days
    return days if h & 1 else -days


@register("date_shift", DateShiftParams)
def date_shift(values: Values, params: DateShiftParams, ctx: MaskContext) -> pa.Array:
    """Shift dates and timestamps by the entity's offset; the type is unchanged."""
    arr = as_array(values)
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    days = entity_offset(ctx, params.max_days)
    if pa.types.is_date32(t):
        return pc.add(arr.view(pa.int32()), pa.scalar(days, pa.int32())).view(t)
    if pa.types.is_date64(t):
        return pc.add(arr.view(pa.int64()), pa.scalar(days * _PER_DAY["ms"], pa.int64())).view(t)
    if pa.types.is_timestamp(t):
        return pc.add(arr.view(pa.int64()), pa.scalar(days * _PER_DAY[t.unit], pa.int64())).view(t)
    raise ctx.error("date_shift", f"needs a date or timestamp column, got {t}")
