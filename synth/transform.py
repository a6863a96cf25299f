"""Column encoders shared by the generators: Arrow columns to numbers and back.

Two codecs cover every learned column:

* ``NumericCodec`` (ints, floats, decimals, dates, timestamps): an empirical quantile
  transform. ``to_uniform`` maps values to (0, 1) (ties spread at random, the
  distributional transform), ``from_uniform`` inverts it; tokens are equal-probability
  bins of that uniform scale, so a token plus a uniform draw decodes to a value.
* ``CategoricalCodec`` (strings, booleans, reference rows): categories ordered by
  frequency, each owning an interval of (0, 1) as wide as its share.

Codecs serialize to plain JSON (categories as base64 Arrow IPC), never pickle.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import SchemaError

EPS = 1e-9
TEXT_MIN_DISTINCT = 200
"""A string column with more distinct values than this, mostly unique, is free text (filled, not learned)."""
TEXT_UNIQUE_SHARE = 0.5


# ----------------------------------------------------------------- Arrow <-> numpy


def is_numeric_type(t: pa.DataType) -> bool:
    """Types learned by ``NumericCodec``."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            or pa.types.is_date(t) or pa.types.is_timestamp(t))


def is_integral_type(t: pa.DataType) -> bool:
    """Numeric types whose values are whole numbers (in their own unit)."""
    return pa.types.is_integer(t) or pa.types.is_date(t) or pa.types.is_timestamp(t)


def numeric_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 values of a numeric column (dates in days, timestamps in their unit), NaN for null."""
    t = column.type
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_timestamp(t):
        raw = column.cast(pa.int64())
    elif pa.types.is_date32(t):
        raw = column.cast(pa.int32())
    elif pa.types.is_date64(t):
        raw = column.cast(pa.int64())
    elif pa.types.is_decimal(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
        raw = column.cast(pa.float64())
    else:
        raise SchemaError(f"numeric_values: type {t} is not numeric")
    out = raw.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    if column.null_count:
        out[~pc.is_valid(column).to_numpy(zero_copy_only=False)] = np.nan
    return out


def _decimal_array(unscaled: np.ndarray, valid: np.ndarray, t: pa.DataType) -> pa.Array:
    """decimal128 values from unscaled int64 (cents for scale 2), bit-exact."""
    words = np.empty((len(unscaled), 2), dtype=np.int64)
    words[:, 0] = unscaled
    words[:, 1] = unscaled >> 63
    validity = None if valid.all() else pa.array(valid).buffers()[1]
    nulls = int((~valid).sum())
    return pa.Array.from_buffers(t, len(unscaled), [validity, pa.py_buffer(words.tobytes())], null_count=nulls)


def from_numeric(x: np.ndarray, t: pa.DataType) -> pa.Array:
    """An Arrow array of type ``t`` from float64 values (NaN = null), rounded as the type needs."""
    valid = ~np.isnan(x)
    filled = np.where(valid, x, 0.0)
    if pa.types.is_floating(t):
        return pa.array(filled, mask=~valid).cast(t)
    if pa.types.is_decimal(t):
        if not pa.types.is_decimal128(t):
            return pa.array(filled, mask=~valid).cast(t, safe=False)
        limit = 10.0 ** min(t.precision, 18) - 1
        unscaled = np.clip(np.round(filled * 10.0 ** t.scale), -limit, limit).astype(np.int64)
        return _decimal_array(unscaled, valid, t)
    if pa.types.is_integer(t):
        info = np.iinfo(t.to_pandas_dtype())
        whole = np.clip(np.round(filled), max(info.min, -(2.0 ** 62)), min(info.max, 2.0 ** 62)).astype(np.int64)
        return pa.array(whole, mask=~valid).cast(t)
    if pa.types.is_timestamp(t) or pa.types.is_date64(t):
        return pa.array(np.round(filled).astype(np.int64), mask=~valid).cast(t)
    if pa.types.is_date32(t):
        return pa.array(np.round(filled).astype(np.int32), mask=~valid).cast(t)
    raise SchemaError(f"from_numeric: type {t} is not numeric")


def column_kind(table: str, field: pa.Field, column: pa.ChunkedArray | pa.Array) -> str:
    """``numeric``, ``categorical`` or ``text`` (free text: filled by rules, never learned)."""
    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return "categorical"
    if is_numeric_type(t):
        return "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        non_null = len(column) - column.null_count
        distinct = pc.count_distinct(column).as_py()
        if distinct > TEXT_MIN_DISTINCT and distinct > TEXT_UNIQUE_SHARE * max(non_null, 1):
            return "text"
        return "categorical"
    raise SchemaError(f"synth: column {table}.{field.name} has type {field.type}, which no generator learns; "
                      "exclude it in the synth schema")


# ----------------------------------------------------------------- serialization


def array_to_text(array: pa.Array) -> str:
    """An Arrow array as base64 Arrow IPC (exact types and values, no pickle)."""
    batch = pa.record_batch([array], names=["v"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


def array_from_text(text: str) -> pa.Array:
    """Inverse of ``array_to_text``."""
    reader = pa.ipc.open_stream(pa.py_buffer(base64.b64decode(text)))
    return reader.read_all().column("v").combine_chunks()


def table_to_text(table: pa.Table) -> str:
    """A small Arrow table as base64 Arrow IPC."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


def table_from_text(text: str) -> pa.Table:
    """Inverse of ``table_to_text``."""
    return pa.ipc.open_stream(pa.py_buffer(base64.b64decode(text))).read_all()


def schema_to_text(schema: pa.Schema) -> str:
    """An Arrow schema as base64 IPC."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_text(text: str) -> pa.Schema:
    """Inverse of ``schema_to_text``."""
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


# ----------------------------------------------------------------- normal distribution


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorized (erfc via a rational Chebyshev fit, |error| < 1.2e-7)."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * x)
    poly = (-1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
    erfc = t * np.exp(-x * x + poly)
    return np.where(z >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc)


_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)


def normal_ppf(u: np.ndarray) -> np.ndarray:
    """Inverse standard normal CDF, vectorized (rational approximation, relative error < 1.2e-9)."""
    u = np.clip(np.asarray(u, dtype=np.float64), 1e-12, 1 - 1e-12)
    out = np.empty_like(u)
    low = u < 0.02425
    high = u > 1 - 0.02425
    mid = ~(low | high)
    q = u[mid] - 0.5
    r = q * q
    out[mid] = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q / (
        ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1)
    for mask, sign, p in ((low, 1.0, u[low]), (high, -1.0, 1 - u[high])):
        q = np.sqrt(-2 * np.log(p))
        out[mask] = sign * (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1)
    return out


# ----------------------------------------------------------------- codecs


class NumericCodec:
    """Empirical quantile transform of one numeric column (nulls tracked, never learned as values).

    Columns with at most ``n_bins`` distinct values are *discrete*: values and their
    probabilities are kept exactly. Others keep ``grid_size`` quantiles and interpolate.
    """

    kind = "numeric"

    def __init__(self, *, n_bins: int, integral: bool, null_share: float, values: list[float],
                 probs: list[float] | None) -> None:
        self.n_bins = n_bins
        self.integral = integral
        self.null_share = null_share
        self.values = np.asarray(values, dtype=np.float64)
        self.probs = None if probs is None else np.asarray(probs, dtype=np.float64)
        if self.probs is not None:
            self.cum = np.concatenate([[0.0], np.cumsum(self.probs)])
            self.cum[-1] = 1.0
        self.levels = np.linspace(0.0, 1.0, len(self.values))

    @property
    def discrete(self) -> bool:
        return self.probs is not None

    @classmethod
    def fit(cls, x: np.ndarray, *, integral: bool, n_bins: int = 32, grid_size: int = 257) -> NumericCodec:
        """Learn the marginal of ``x`` (float64, NaN = null)."""
        valid = x[~np.isnan(x)]
        null_share = 1.0 - len(valid) / max(len(x), 1)
        if len(valid) == 0:
            return cls(n_bins=n_bins, integral=integral, null_share=1.0, values=[0.0], probs=[1.0])
        distinct, counts = np.unique(valid, return_counts=True)
        if len(distinct) <= n_bins:
            return cls(n_bins=n_bins, integral=integral, null_share=null_share,
                       values=distinct.tolist(), probs=(counts / counts.sum()).tolist())
        grid = np.quantile(valid, np.linspace(0.0, 1.0, grid_size), method="linear")
        if integral:
            grid = np.round(grid)
        return cls(n_bins=n_bins, integral=integral, null_share=null_share, values=grid.tolist(), probs=None)

    @property
    def low(self) -> float:
        return float(self.values[0])

    @property
    def high(self) -> float:
        return float(self.values[-1])

    def to_uniform(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Values to (0, 1); ties spread uniformly over their probability mass; NaN stays NaN."""
        out = np.full(len(x), np.nan)
        valid = ~np.isnan(x)
        v = x[valid]
        jitter = rng.random(len(v))
        if self.discrete:
            idx = np.clip(np.searchsorted(self.values, v), 0, len(self.values) - 1)
            u = self.cum[idx] + jitter * self.probs[idx]
        else:
            left = np.searchsorted(self.values, v, side="left")
            right = np.searchsorted(self.values, v, side="right")
            tied = right > left
            hi = np.clip(left, 1, len(self.values) - 1)
            lo = hi - 1
            span = self.values[hi] - self.values[lo]
            frac = np.where(span > 0, (v - self.values[lo]) / np.where(span > 0, span, 1.0), 0.5)
            u = self.levels[lo] + np.clip(frac, 0.0, 1.0) * (self.levels[hi] - self.levels[lo])
            t_lo = self.levels[np.clip(left - 1, 0, None)]
            t_hi = self.levels[np.clip(right, None, len(self.values) - 1)]
            u = np.where(tied, t_lo + jitter * (t_hi - t_lo), u)
        out[valid] = np.clip(u, EPS, 1.0 - EPS)
        return out

    def from_uniform(self, u: np.ndarray) -> np.ndarray:
        """Inverse of ``to_uniform`` (u in [0, 1])."""
        u = np.clip(u, 0.0, 1.0)
        if self.discrete:
            idx = np.clip(np.searchsorted(self.cum[1:], u, side="right"), 0, len(self.values) - 1)
            return self.values[idx]
        x = np.interp(u, self.levels, self.values)
        return np.round(x) if self.integral else x

    def uniform_of(self, value: float) -> tuple[float, float]:
        """The interval of the uniform scale that decodes to ``value`` (a point for continuous values)."""
        if self.discrete:
            idx = int(np.searchsorted(self.values, value))
            return float(self.cum[idx]), float(self.cum[idx + 1])
        u = float(np.interp(value, self.values, self.levels))
        return u, u

    def contains(self, value: float) -> bool:
        """Whether ``value`` is a value this column took in training (discrete) or lies in its range."""
        if self.discrete:
            return bool(np.any(self.values == value))
        return self.low <= value <= self.high

    # tokens: equal-probability bins of the uniform scale, plus one for null
    @property
    def n_tokens(self) -> int:
        return (len(self.values) if self.discrete else self.n_bins) + 1

    @property
    def null_token(self) -> int:
        return self.n_tokens - 1

    def to_tokens(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Values to token ids (bin or exact value), the null token for NaN."""
        out = np.full(len(x), self.null_token, dtype=np.int64)
        valid = ~np.isnan(x)
        if self.discrete:
            out[valid] = np.clip(np.searchsorted(self.values, x[valid]), 0, len(self.values) - 1)
        else:
            u = self.to_uniform(x[valid], rng)
            out[valid] = np.clip((u * self.n_bins).astype(np.int64), 0, self.n_bins - 1)
        return out

    def from_tokens(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Token ids to values: a uniform draw within the bin, NaN for the null token."""
        draw = rng.random(len(tokens))
        null = tokens == self.null_token
        safe = np.where(null, 0, tokens)
        if self.discrete:
            x = self.values[np.clip(safe, 0, len(self.values) - 1)]
        else:
            x = self.from_uniform((safe + draw) / self.n_bins)
        return np.where(null, np.nan, x)

    def token_of(self, value: float) -> int:
        """The token holding ``value``."""
        if self.discrete:
            return int(np.searchsorted(self.values, value))
        u, _ = self.uniform_of(value)
        return int(min(max(u * self.n_bins, 0), self.n_bins - 1))

    def to_meta(self) -> dict:
        return {"kind": self.kind, "n_bins": self.n_bins, "integral": self.integral, "null_share": self.null_share,
                "values": self.values.tolist(), "probs": None if self.probs is None else self.probs.tolist()}

    @classmethod
    def from_meta(cls, meta: dict) -> NumericCodec:
        return cls(n_bins=meta["n_bins"], integral=meta["integral"], null_share=meta["null_share"],
                   values=meta["values"], probs=meta["probs"])


class CategoricalCodec:
    """Categories (an Arrow array, null allowed as one of them) with their training shares."""

    kind = "categorical"

    def __init__(self, categories: pa.Array, probs: list[float]) -> None:
        self.categories = categories
        self.probs = np.asarray(probs, dtype=np.float64)
        self.cum = np.concatenate([[0.0], np.cumsum(self.probs)])
        self.cum[-1] = 1.0

    @classmethod
    def fit(cls, column: pa.Array | pa.ChunkedArray) -> CategoricalCodec:
        """Learn categories and shares, most frequent first (ties by first appearance)."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        counts = pc.value_counts(column)
        values = counts.field("values")
        n = counts.field("counts").to_numpy()
        order = np.argsort(-n, kind="stable")
        return cls(values.take(pa.array(order)), (n[order] / max(n.sum(), 1)).tolist())

    @property
    def n_tokens(self) -> int:
        return len(self.categories)

    def codes(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Category index of each value; -1 for a value never seen in training."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        idx = pc.index_in(column, value_set=self.categories, skip_nulls=False)
        return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def code_of(self, value: object) -> int:
        """Index of one value, -1 when unseen."""
        return int(self.codes(pa.array([value], self.categories.type))[0])

    def decode(self, codes: np.ndarray) -> pa.Array:
        """Category values for codes."""
        return self.categories.take(pa.array(np.asarray(codes, dtype=np.int64)))

    def to_uniform(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniform draw inside each category's interval."""
        return np.clip(self.cum[codes] + rng.random(len(codes)) * self.probs[codes], EPS, 1 - EPS)

    def from_uniform(self, u: np.ndarray) -> np.ndarray:
        """The category whose interval holds ``u``."""
        return np.clip(np.searchsorted(self.cum[1:], u, side="right"), 0, self.n_tokens - 1)

    def to_meta(self) -> dict:
        return {"kind": self.kind, "categories": array_to_text(self.categories), "probs": self.probs.tolist()}

    @classmethod
    def from_meta(cls, meta: dict) -> CategoricalCodec:
        return cls(array_from_text(meta["categories"]), meta["probs"])


Codec = NumericCodec | CategoricalCodec


def codec_from_meta(meta: dict) -> Codec:
    """Rebuild a codec saved by ``to_meta``."""
    if meta.get("kind") == NumericCodec.kind:
        return NumericCodec.from_meta(meta)
    if meta.get("kind") == CategoricalCodec.kind:
        return CategoricalCodec.from_meta(meta)
    raise SchemaError(f"synth model: unknown codec kind {meta.get('kind')!r}")
