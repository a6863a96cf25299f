"""``noise``: bounded, repeatable noise on numbers.

Each value's noise comes from the keyed PRF of the value itself, so reading the same
data again gives the same masked numbers (averaging repeated reads reveals nothing),
and the type is kept: integers stay integers, decimals keep their scale.
``relative = 0.05`` moves a value by at most 5 % of itself; ``absolute = 10`` by at
most 10 (plus rounding to the type's precision).
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from masking.functions.prf import keyed_u64
from masking.functions.registry import MaskContext, Params, Values, on_uniques, register


class NoiseParams(Params):
    """At most one of ``relative`` and ``absolute``; ``relative = 0.05`` when neither."""

    relative: float | None = Field(None, gt=0, le=10)
    absolute: float | None = Field(None, gt=0)
    domain: str = Field("default", min_length=1)

    @model_validator(mode="after")
    def _one(self) -> NoiseParams:
        if self.relative is not None and self.absolute is not None:
            raise ValueError("set relative or absolute, not both")
        return self


def _unit_noise(values: pa.Array, key: bytes) -> np.ndarray:
    """Uniform in [-1, 1) per value, from its keyed PRF."""
    return (keyed_u64(values, key) >> np.uint64(11)).astype(np.float64) / float(1 << 52) - 1.0


def _delta(values: pa.Array, params: NoiseParams, key: bytes) -> np.ndarray:
    u = _unit_noise(values, key)
    if params.absolute is not None:
        return u * params.absolute
    x = pc.cast(values, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return u * (params.relative if params.relative is not None else 0.05) * np.abs(x)


def _ints(values: pa.Array, delta: np.ndarray) -> pa.Array:
    t = values.type
    signed = pa.types.is_signed_integer(t)
    info = np.iinfo(np.dtype(f"{'i' if signed else 'u'}{t.bit_width // 8}"))
    x = values.cast(pa.int64() if signed else pa.uint64()).to_numpy(zero_copy_only=False)
    step = np.rint(delta)
    up = step >= 0
    size = np.minimum(np.abs(step), 2.0**62).astype(np.uint64)
    xu = x.view(np.uint64)
    moved = np.where(up, xu + size, xu - size).view(x.dtype)  # wraps: overflow shows below
    moved = np.where(up & (moved < x), info.max, np.where(~up & (moved > x), info.min, moved))
    return pa.array(np.clip(moved, info.min, info.max).astype(x.dtype)).cast(t)


def _decimals(values: pa.Array, delta: np.ndarray) -> pa.Array:
    t = values.type
    step = pc.round(pa.array(delta), t.scale).cast(pa.decimal256(75, t.scale), safe=False)
    moved = pc.add(values.cast(pa.decimal256(75, t.scale)), step)
    limit = Decimal(10) ** (t.precision - t.scale) - Decimal(1).scaleb(-t.scale)
    moved = pc.min_element_wise(pc.max_element_wise(moved, pa.scalar(-limit, moved.type)), pa.scalar(limit, moved.type))
    return moved.cast(t)


@register("noise", NoiseParams)
def noise(values: Values, params: NoiseParams, ctx: MaskContext) -> pa.Array:
    """Add bounded noise seeded by the key and the value; the column type is kept."""
    t = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        raise ctx.error("noise", f"needs a numeric column, got {t}")
    key = ctx.key(f"mask:noise:{params.domain}")

    def run(u: pa.Array) -> pa.Array:
        delta = _delta(u, params, key)
        if pa.types.is_integer(t):
            return _ints(u, delta)
        if pa.types.is_decimal(t):
            return _decimals(u, delta)
        x = u.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        return pa.array(x + delta).cast(t, safe=False)

    return on_uniques(values, run)
