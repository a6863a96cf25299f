"""``generalize``: coarser values that keep their analytic use.

One of four modes, chosen by which parameter is set:

* ``bucket = 10`` — numbers to the lower bound of their bucket (``label = true``:
  the text ``"30-39"``; integer buckets show inclusive bounds, others ``lo-hi``);
* ``unit = "month"`` — dates and timestamps truncated to year/quarter/month/week/day/hour;
* ``prefix = 3`` — strings cut to their first characters (``fill = "*"`` pads back
  to the original length: ``"75011"`` -> ``"750**"``);
* ``age = true`` — birth dates to age in whole years at ``reference_date`` (today if
  unset, which changes the output over time), or to an age band with ``band = 10``.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from masking.functions.registry import MaskContext, Params, Values, as_array, register
from masking.functions.textbuf import is_text, with_validity


class GeneralizeParams(Params):
    """Exactly one of ``bucket``, ``unit``, ``prefix`` or ``age`` must be set."""

    bucket: float | None = Field(None, gt=0)
    label: bool = False
    unit: Literal["year", "quarter", "month", "week", "day", "hour"] | None = None
    prefix: int | None = Field(None, ge=0)
    fill: str | None = Field(None, min_length=1, max_length=1)
    age: bool = False
    band: int | None = Field(None, ge=1)
    reference_date: dt.date | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> GeneralizeParams:
        modes = [self.bucket is not None, self.unit is not None, self.prefix is not None, self.age]
        if sum(modes) != 1:
            raise ValueError("set exactly one of bucket, unit, prefix or age = true")
        if self.band is not None and not self.age:
            raise ValueError("band only applies with age = true")
        return self


def _labels(lo: pa.Array, hi: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(pc.cast(lo, pa.string()), pc.cast(hi, pa.string()), "-")


def _bucket(arr: pa.Array, params: GeneralizeParams, ctx: MaskContext) -> pa.Array:
    t = arr.type
    b = params.bucket
    if pa.types.is_integer(t):
        if b != int(b):
            raise ctx.error("generalize", f"bucket {b} must be a whole number on integer column ({t})")
        raw = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        lo = (raw // int(b)) * int(b)
        lo_arr = with_validity(pa.array(lo, type=pa.int64()), arr)
        if params.label:
            return _labels(lo_arr, pc.add(lo_arr, int(b) - 1))
        return lo_arr.cast(t, safe=False)
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        x = pc.cast(arr, pa.float64())
        lo = pc.multiply(pc.floor(pc.divide(x, b)), b)
        if params.label:
            return _labels(lo, pc.add(lo, b))
        if pa.types.is_decimal(t):
            return pc.round(lo, t.scale).cast(t, safe=False)
        return lo.cast(t)
    raise ctx.error("generalize", f"bucket needs a numeric column, got {t}")


def _age(arr: pa.Array, params: GeneralizeParams, ctx: MaskContext) -> pa.Array:
    t = arr.type
    if not (pa.types.is_date(t) or pa.types.is_timestamp(t)):
        raise ctx.error("generalize", f"age needs a date or timestamp column, got {t}")
    ref = params.reference_date or dt.date.today()
    years = pc.subtract(ref.year, pc.year(arr))
    later = pc.greater(pc.add(pc.multiply(pc.month(arr), 100), pc.day(arr)), ref.month * 100 + ref.day)
    age = pc.cast(pc.subtract(years, pc.cast(later, pa.int64())), pa.int32())
    if params.band is None:
        return age
    lo = pc.multiply(pc.floor(pc.divide(pc.cast(age, pa.float64()), params.band)), params.band)
    lo = pc.cast(lo, pa.int32())
    return _labels(lo, pc.add(lo, params.band - 1))


@register("generalize", GeneralizeParams)
def generalize(values: Values, params: GeneralizeParams, ctx: MaskContext) -> pa.Array:
    """Bucket numbers, truncate dates, cut strings to a prefix or turn birth dates into ages."""
    arr = as_array(values)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if params.bucket is not None:
        return _bucket(arr, params, ctx)
    if params.age:
        return _age(arr, params, ctx)
    if params.unit is not None:
        if not (pa.types.is_date(arr.type) or pa.types.is_timestamp(arr.type)):
            raise ctx.error("generalize", f"unit needs a date or timestamp column, got {arr.type}")
        if params.unit == "hour" and pa.types.is_date(arr.type):
            return arr
        return pc.floor_temporal(arr, unit=params.unit).cast(arr.type)
    text = arr if is_text(arr.type) else pc.cast(arr, pa.string())
    head = pc.utf8_slice_codeunits(text, 0, params.prefix)
    if params.fill is None:
        return head
    rest = pc.max_element_wise(pc.subtract(pc.utf8_length(text), params.prefix), 0)
    padding = pc.binary_repeat(pa.scalar(params.fill, head.type), rest)
    return pc.binary_join_element_wise(head, padding, pa.scalar("", head.type))
