"""The registry of masking functions: each one registered by name with its parameter model.

A masking function is ``fn(values, params, ctx) -> pa.Array``: vectorized over a whole
column, the same length out as in, nulls kept null. Reversible functions also register
a ``detokenize`` with the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
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
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
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
    """One contiguous array from an array or chunked array."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            return values.chunk(0)
        return values.combine_chunks() if values.num_chunks else pa.array([], type=values.type)
    return values


def on_uniques(values: Values, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Apply ``fn`` to the distinct non-null values only, then spread the results back.

    Most real columns repeat, so tokenizing the dictionary and taking is far cheaper
    than tokenizing every row. Nulls stay null.
    """
    arr = as_array(values)
    if pa.types.is_string_view(arr.type) or pa.types.is_binary_view(arr.type):
        arr = arr.cast(pa.large_string() if pa.types.is_string_view(arr.type) else pa.large_binary())
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode()
    out = fn(arr.dictionary)
    return out.take(arr.indices)
