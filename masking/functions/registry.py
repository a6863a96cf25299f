"""The registry of masking functions: each one registered by name with its parameter model.

A masking function is ``fn(values, params, ctx) -> pa.Array``: vectorized over a whole
column, the same length out as in, nulls kept null. Reversible functions also register
a ``detokenize`` with the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, ValidationError

from microdb.errors import PolicyError


class Params(BaseModel):
    """Base of every function's parameters: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class MaskContext:
    """What a masking function may know besides the values.

    ``key(purpose)`` returns a 32-byte key derived from the master key (the lead passes
    ``Keyring.derive``); functions choose purposes that do not depend on the table or
    column, so a value masks the same way in every table and source.
    """

    key: Callable[[str], bytes]
    table: str = ""
    column: str = ""
    entity_key: str | None = None
    role: str = ""

    def error(self, fn: str, problem: str) -> PolicyError:
        """A PolicyError naming the role, the column and the function."""
        who = f"role {self.role!r}, " if self.role else ""
        return PolicyError(f"{who}column {self.table}.{self.column}: {fn}: {problem}")


Values = pa.Array | pa.ChunkedArray
MaskFn = Callable[[Values, Any, MaskContext], pa.Array]
P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class MaskFunction:
    """A registered masking function, its parameter model and its inverse if any."""

    name: str
    params: type[Params]
    apply: MaskFn
    detokenize: MaskFn | None = None

    @property
    def reversible(self) -> bool:
        """Whether ``detokenize`` can give the original values back."""
        return self.detokenize is not None

    def parse(self, raw: Mapping[str, Any]) -> Params:
        """Validate raw parameters; PolicyError lists every problem."""
        try:
            return self.params.model_validate(dict(raw))
        except ValidationError as exc:
            problems = "; ".join(
                (f"{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise PolicyError(f"{self.name}: {problems}") from None


_REGISTRY: dict[str, MaskFunction] = {}


def register(name: str, params: type[P], *, detokenize: MaskFn | None = None) -> Callable[[MaskFn], MaskFn]:
    """Decorator registering ``fn`` as the masking function ``name``."""

    def deco(fn: MaskFn) -> MaskFn:
        if name in _REGISTRY:
            raise ValueError(f"masking function {name!r} registered twice")
        _REGISTRY[name] = MaskFunction(name, params, fn, detokenize)
        return fn

    return deco


def get_function(name: str) -> MaskFunction:
    """The masking function called ``name``; PolicyError listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PolicyError(f"unknown masking function {name!r} (known: {', '.join(function_names())})") from None


def function_names() -> list[str]:
    """Names of every registered masking function, sorted."""
    return sorted(_REGISTRY)


def as_array(values: Values) -> pa.Array:
    """One contiguous array from an array or chunked array; string and binary views
    become ``large_string`` / ``large_binary``, which every Arrow kernel accepts."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            values = values.chunk(0)
        else:
            values = values.combine_chunks() if values.num_chunks else pa.array([], type=values.type)
    if pa.types.is_string_view(values.type):
        return values.cast(pa.large_string())
    if pa.types.is_binary_view(values.type):
        return values.cast(pa.large_binary())
    return values


def on_uniques(values: Values, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Apply ``fn`` to the distinct non-null values only, then spread the results back.

    Most real columns repeat, so tokenizing the dictionary and taking is far cheaper
    than tokenizing every row. A column that looks mostly distinct (judged on an evenly
    spread sample) skips the dictionary and goes through ``fn`` whole; ``fn`` is
    per-value, so the output is the same either way. Nulls stay null.
    """
    arr = as_array(values)
    if pa.types.is_dictionary(arr.type):
        return fn(arr.dictionary).take(arr.indices)
    if len(arr) >= 4 * _SAMPLE:
        sample = arr.take(np.linspace(0, len(arr) - 1, _SAMPLE).astype(np.int64))
        repeats = _SAMPLE - len(pc.unique(sample))
        if _SAMPLE * _SAMPLE / (2 * max(repeats, 1)) > len(arr) / 2:  # birthday estimate of distinct count
            return _on_valid(arr, fn)
    encoded = arr.dictionary_encode()
    return fn(encoded.dictionary).take(encoded.indices)


_SAMPLE = 16384


def _on_valid(arr: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    if arr.null_count == 0:
        return fn(arr)
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    index = pa.array(np.cumsum(valid) - 1, mask=~valid)
    return fn(arr.filter(pa.array(valid))).take(index)
