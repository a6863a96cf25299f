"""``hmac_token``: deterministic keyed tokens that still join.

The key depends only on the ``domain`` parameter, never on the table or column, so a
``customer_id`` tokenized in two tables (or two sources) gives the same token and
joins. Integers map through a keyed permutation of their own width: tokens of
primary and foreign keys are 1:1 and never collide. Strings become a hex or base32
rendering of the value's AES-256-CMAC tag (a keyed PRF like HMAC-SHA256, but computed
for the whole column in a few AES calls; per-value HMAC in Python measured ~1M/s for
the hashing alone). Distinct values are tokenized once, then taken.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from masking.functions.prf import IntPermutation, cmac
from masking.functions.registry import MaskContext, Params, Values, on_uniques, register
from masking.functions.textbuf import build_strings, is_text, string_buffers

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_B32 = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", dtype=np.uint8)


class TokenParams(Params):
    """``domain`` scopes the key (same domain = joinable tokens); string tokens are
    ``prefix`` plus ``length`` characters of ``alphabet``; integer tokens keep their
    sign unless ``keep_sign = false``."""

    domain: str = Field("default", min_length=1)
    length: int = Field(24, ge=12, le=32)
    alphabet: Literal["hex", "base32"] = "hex"
    prefix: str = ""
    keep_sign: bool = True

    @model_validator(mode="after")
    def _fits(self) -> TokenParams:
        if self.alphabet == "base32" and self.length > 25:
            raise ValueError("base32 tokens hold at most 25 characters (128 bits)")
        return self


def token_key(ctx: MaskContext, domain: str, kind: str) -> bytes:
    """The key of one token domain; ``kind`` separates string and integer tokens."""
    return ctx.key(f"mask:token:{kind}:{domain}")


def _render(tags: np.ndarray, params: TokenParams) -> np.ndarray:
    if params.alphabet == "hex":
        chars = np.empty((tags.shape[0], 32), dtype=np.uint8)
        chars[:, 0::2] = _HEX[tags >> 4]
        chars[:, 1::2] = _HEX[tags & 0x0F]
    else:
        bits = np.unpackbits(tags, axis=1)[:, : 5 * params.length].reshape(tags.shape[0], params.length, 5)
        chars = _B32[bits @ np.array([16, 8, 4, 2, 1], dtype=np.uint8)]
    body = chars[:, : params.length]
    prefix = np.frombuffer(params.prefix.encode(), dtype=np.uint8)
    return np.hstack([np.broadcast_to(prefix, (tags.shape[0], len(prefix))), body])


def string_tokens(values: pa.Array, key: bytes, params: TokenParams) -> pa.Array:
    """Token strings for distinct non-null string or binary values."""
    data, offsets = string_buffers(values)
    rows = _render(cmac(key, data, offsets), params)
    width = rows.shape[1]
    out_offsets = np.arange(len(values) + 1, dtype=np.int64) * width
    return build_strings(rows.reshape(-1), out_offsets, values)


def _int_bits(t: pa.DataType) -> tuple[int, bool]:
    return t.bit_width, pa.types.is_signed_integer(t)


def int_tokens(values: pa.Array, key: bytes, keep_sign: bool, *, inverse: bool = False) -> pa.Array:
    """Permute integers within their type: a bijection, so no two keys share a token."""
    t = values.type
    width, signed = _int_bits(t)
    raw = values.to_numpy(zero_copy_only=False)
    if signed and keep_sign:
        perm = IntPermutation(key, width - 1)
        negative = raw < 0
        magnitude = np.where(negative, ~raw, raw).astype(np.uint64)
        moved = perm.decrypt(magnitude) if inverse else perm.encrypt(magnitude)
        moved = moved.astype(raw.dtype)
        result = np.where(negative, ~moved, moved)
    else:
        perm = IntPermutation(key, width)
        unsigned = raw.view(f"u{raw.dtype.itemsize}").astype(np.uint64)
        moved = perm.decrypt(unsigned) if inverse else perm.encrypt(unsigned)
        result = moved.astype(f"u{raw.dtype.itemsize}").view(raw.dtype)
    return pa.array(result, type=t)


@register("hmac_token", TokenParams)
def hmac_token(values: Values, params: TokenParams, ctx: MaskContext) -> pa.Array:
    """Deterministic keyed token: same input, same token, in every table and source.

    Integers keep their type and are permuted 1:1; strings and binaries become
    fixed-length tokens of the same type; any other type is tokenized through its
    string form and comes back as strings.
    """
    t = values.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        key = token_key(ctx, params.domain, "int")
        return on_uniques(values, lambda u: int_tokens(u, key, params.keep_sign))
    key = token_key(ctx, params.domain, "str")
    if is_text(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return on_uniques(values, lambda u: string_tokens(u, key, params))
    as_text = pc.cast(values, pa.string())
    return on_uniques(as_text, lambda u: string_tokens(u, key, params))
