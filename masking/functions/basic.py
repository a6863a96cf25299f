"""``keep``, ``redact`` and ``partial``: the masking functions that need no key."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from masking.functions.registry import MaskContext, Params, Values, as_array, on_uniques, register
from masking.functions.textbuf import (
    build_strings,
    flagged_positions,
    is_text,
    rank_within,
    string_buffers,
    value_ids,
    with_validity,
)


class KeepParams(Params):
    """``keep`` takes no parameters."""


@register("keep", KeepParams)
def keep(values: Values, params: KeepParams, ctx: MaskContext) -> pa.Array:
    """The values unchanged (an explicit decision, unlike an unclassified column)."""
    return as_array(values)


class RedactParams(Params):
    """``null = true`` turns every value into NULL; otherwise strings become ``value``."""

    null: bool = False
    value: str = "***"


@register("redact", RedactParams)
def redact(values: Values, params: RedactParams, ctx: MaskContext) -> pa.Array:
    """Strings become one constant; other types (and ``null = true``) become NULL."""
    arr = as_array(values)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if params.null or not is_text(arr.type):
        return pa.nulls(len(arr), arr.type)
    const = pa.array([params.value], type=arr.type)
    return with_validity(const.take(np.zeros(len(arr), dtype=np.int64)), arr)


class PartialParams(Params):
    """Keep the first/last characters, replace the rest with ``mask_char``.

    With ``preserve_separators`` only letters and digits are masked and counted, so
    ``4111-1111-1111-1234`` becomes ``****-****-****-1234``.
    """

    keep_last: int = Field(4, ge=0)
    keep_first: int = Field(0, ge=0)
    mask_char: str = Field("*", min_length=1, max_length=1)
    preserve_separators: bool = False

    @field_validator("mask_char")
    @classmethod
    def _ascii(cls, v: str) -> str:
        if not v.isascii():
            raise ValueError("mask_char must be one ASCII character")
        return v


_ASCII_ALNUM = np.zeros(256, dtype=bool)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
    _ASCII_ALNUM[_c] = True
_ASCII_ALNUM[0xC0:] = True  # lead byte of a non-ASCII character: treated as a letter


@register("partial", PartialParams)
def partial(values: Values, params: PartialParams, ctx: MaskContext) -> pa.Array:
    """Mask all but the first ``keep_first`` and last ``keep_last`` characters.

    A value with no more maskable characters than it would keep is masked entirely,
    so ``partial`` never shows a short value in full.
    """
    arr = as_array(values)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    text = arr if is_text(arr.type) else pc.cast(arr, pa.string())
    if not params.preserve_separators:
        return _partial_chars(text, params)
    return on_uniques(text, lambda u: _partial_alnum(u, params))


def _partial_chars(text: pa.Array, params: PartialParams) -> pa.Array:
    """Every character counts and is masked: done by Arrow's UTF-8 kernels."""
    kf, kl = params.keep_first, params.keep_last
    big = pa.large_string()
    wide = text.cast(big)
    mask = pa.scalar(params.mask_char, big)
    length = pc.utf8_length(wide)
    shown = pc.greater(length, kf + kl)
    head = pc.utf8_slice_codeunits(wide, 0, kf)
    tail = pc.utf8_slice_codeunits(wide, -kl) if kl else pc.utf8_slice_codeunits(wide, 0, 0)
    middle = pc.binary_repeat(mask, pc.max_element_wise(pc.subtract(length, kf + kl), 0))
    kept = pc.binary_join_element_wise(head, middle, tail, pa.scalar("", big))
    return pc.if_else(shown, kept, pc.binary_repeat(mask, length)).cast(text.type)


def _partial_alnum(text: pa.Array, params: PartialParams) -> pa.Array:
    """Only letters and digits count and are masked (distinct values, no nulls)."""
    data, offsets = string_buffers(text)
    if len(data) == 0:
        return build_strings(data, offsets, text)
    if (data >= 0x80).any():
        return _partial_unicode(data, offsets, text, params)
    positions, first, counts = flagged_positions(_ASCII_ALNUM[data], offsets)
    kf, kl = params.keep_first, params.keep_last
    shown = counts > kf + kl
    lo = np.where(shown, first + kf, first)
    hi = np.where(shown, first + counts - kl, first + counts)
    edges = np.bincount(lo, minlength=len(positions) + 1) - np.bincount(hi, minlength=len(positions) + 1)
    masked = np.cumsum(edges[:-1]) > 0
    out = data.copy()
    out[positions[masked]] = ord(params.mask_char)
    return build_strings(out, offsets, text)


def _partial_unicode(data: np.ndarray, offsets: np.ndarray, text: pa.Array, params: PartialParams) -> pa.Array:
    """The general path: non-ASCII characters count as letters and shrink to one mask char."""
    is_lead = (data & 0xC0) != 0x80
    maskable = is_lead & _ASCII_ALNUM[data]
    ranks, counts = rank_within(maskable, offsets)
    vid = value_ids(offsets)
    count_b = counts[vid]
    kept = (ranks < params.keep_first) | (ranks >= count_b - params.keep_last)
    kept &= count_b > params.keep_first + params.keep_last
    masked_lead = maskable & ~kept
    char_id = np.cumsum(is_lead) - 1
    masked = masked_lead[np.flatnonzero(is_lead)][char_id]
    emit = ~masked | is_lead
    out = np.where(masked, np.uint8(ord(params.mask_char)), data)[emit]
    lengths = np.bincount(vid[emit], minlength=len(offsets) - 1)
    return build_strings(out, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), text)
