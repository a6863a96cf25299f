"""``fpe``: format-preserving encryption, reversible with ``detokenize``.

FF1 (NIST SP 800-38G) is the default; FF3-1 through the ``ff3`` package is an option
for compatibility only (NIST's 2025 draft revision drops it). Only characters of the
alphabet are encrypted: separators stay where they are, and so do the first
``keep_prefix`` / last ``keep_suffix`` alphabet characters (a card's BIN). ``luhn``
keeps card numbers Luhn-valid by encrypting all digits but the last and recomputing the
check digit. Domains under one million values are refused (SP 800-38G Rev. 1 draft):
FPE on a 4-digit field is a lookup table away from broken.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from masking.functions.ff1 import FF1
from masking.functions.registry import MaskContext, Params, Values, as_array, on_uniques, register
from masking.functions.textbuf import build_strings, is_text, rank_within, string_buffers, value_ids

MIN_DOMAIN = 1_000_000
_DIGITS = "0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
ALPHABETS = {
    "digits": _DIGITS,
    "lower36": _DIGITS + _LOWER,
    "upper36": _DIGITS + _LOWER.upper(),
    "alnum62": _DIGITS + _LOWER.upper() + _LOWER,
}


class FpeParams(Params):
    """``alphabet`` is one of ``digits``, ``lower36``, ``upper36``, ``alnum62`` or the
    characters themselves (ASCII); ``domain`` scopes the key like ``hmac_token``'s."""

    domain: str = Field("default", min_length=1)
    alphabet: str = "digits"
    tweak: str = ""
    luhn: bool = False
    keep_prefix: int = Field(0, ge=0)
    keep_suffix: int = Field(0, ge=0)
    mode: Literal["ff1", "ff3"] = "ff1"
    on_short: Literal["error", "null"] = "error"

    @property
    def chars(self) -> str:
        """The alphabet's characters, in numeral order."""
        return ALPHABETS.get(self.alphabet, self.alphabet)

    @model_validator(mode="after")
    def _check(self) -> FpeParams:
        chars = self.chars
        if len(chars) < 2 or len(set(chars)) != len(chars) or not chars.isascii() or len(chars) > 95:
            raise ValueError(
                f"alphabet must be one of {', '.join(ALPHABETS)} or 2..95 distinct ASCII characters"
            )
        if self.luhn and chars != _DIGITS:
            raise ValueError("luhn = true needs alphabet = 'digits'")
        if self.luhn and self.keep_suffix:
            raise ValueError("luhn = true recomputes the last digit, so keep_suffix must be 0")
        if self.mode == "ff3" and len(self.tweak.encode()) not in (0, 7):
            raise ValueError("FF3-1 tweaks are 7 bytes (56 bits); leave tweak empty for zeros")
        return self

    @property
    def min_length(self) -> int:
        """Fewest encrypted characters giving a domain of at least one million."""
        return math.ceil(math.log(MIN_DOMAIN) / math.log(len(self.chars)) - 1e-9)


def _cipher(params: FpeParams, ctx: MaskContext, decrypt: bool):
    key = ctx.key(f"mask:fpe:{params.mode}:{params.domain}")
    chars = params.chars
    if params.mode == "ff1":
        ff1 = FF1(key, len(chars), params.tweak.encode())
        return ff1.decrypt if decrypt else ff1.encrypt
    try:
        from ff3 import FF3Cipher
    except ImportError:
        raise ctx.error("fpe", "mode = 'ff3' needs the ff3 package (pip install ff3)") from None
    tweak = (params.tweak.encode() or bytes(7)).hex()
    ff3 = FF3Cipher.withCustomAlphabet(key.hex(), tweak, chars)
    op = ff3.decrypt if decrypt else ff3.encrypt
    lut = {c: i for i, c in enumerate(chars)}

    def run(x: np.ndarray) -> np.ndarray:
        try:
            rows = [op("".join(chars[d] for d in row)) for row in x.tolist()]
        except ValueError as exc:
            raise ctx.error("fpe", f"FF3-1 refused the values: {exc}") from None
        return np.array([[lut[c] for c in r] for r in rows], dtype=np.uint8).reshape(x.shape)

    return run


def _transform(values: pa.Array, params: FpeParams, ctx: MaskContext, decrypt: bool) -> pa.Array:
    chars = params.chars.encode()
    radix = len(chars)
    lut = np.full(256, 255, dtype=np.uint8)
    lut[np.frombuffer(chars, dtype=np.uint8)] = np.arange(radix, dtype=np.uint8)
    alphabet = np.frombuffer(chars, dtype=np.uint8)
    data, offsets = string_buffers(values)
    digits = lut[data]
    is_alpha = digits != 255
    ranks, counts = rank_within(is_alpha, offsets)
    vid = value_ids(offsets)
    n_enc = counts - params.keep_prefix - params.keep_suffix - int(params.luhn)
    short = n_enc < params.min_length
    if short.any() and params.on_short == "error":
        raise ctx.error(
            "fpe",
            f"{int(short.sum())} value(s) have fewer than {params.min_length} characters to encrypt "
            f"(shortest: {max(int(n_enc.min()), 0)}); FPE needs a domain of at least 1,000,000 values "
            "(NIST SP 800-38G Rev. 1 draft). Use hmac_token or partial, or on_short = 'null'",
        )
    n_enc_b = n_enc[vid]
    enc = is_alpha & (ranks >= params.keep_prefix) & (ranks < params.keep_prefix + n_enc_b) & ~short[vid]
    out = data.copy()
    run = _cipher(params, ctx, decrypt)
    for length in np.unique(n_enc[~short]):
        pos = np.nonzero(enc & (n_enc_b == length))[0].reshape(-1, int(length))
        out[pos] = alphabet[run(digits[pos])]
    if params.luhn:
        _fix_luhn(out, is_alpha, ranks, counts, vid, ~short)
    result = build_strings(out, offsets, values)
    if short.any():
        result = pc.if_else(pa.array(~short), result, pa.scalar(None, result.type))
    return result


def _fix_luhn(out: np.ndarray, is_alpha: np.ndarray, ranks, counts, vid, valid) -> None:
    """Rewrite each value's last digit so the whole number passes the Luhn check."""
    from_right = counts[vid] - 1 - ranks
    d = (out.astype(np.int64) - ord("0")) * is_alpha
    doubled = np.where(from_right % 2 == 1, d * 2, d)
    doubled = np.where(doubled > 9, doubled - 9, doubled)
    body = is_alpha & (from_right >= 1)
    total = np.bincount(vid[body], weights=doubled[body], minlength=len(counts)).astype(np.int64)
    check = (10 - total % 10) % 10
    last = is_alpha & (from_right == 0) & valid[vid]
    out[last] = (ord("0") + check[vid[last]]).astype(np.uint8)


def _needs_text(values: Values, ctx: MaskContext) -> None:
    t = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    if not is_text(t):
        raise ctx.error("fpe", f"needs a string column, got {t}; use hmac_token for integer keys")


def fpe_detokenize(values: Values, params: FpeParams, ctx: MaskContext) -> pa.Array:
    """The original values of ``fpe`` output (check digits recomputed when ``luhn``)."""
    _needs_text(values, ctx)
    return on_uniques(as_array(values), lambda u: _transform(u, params, ctx, decrypt=True))


@register("fpe", FpeParams, detokenize=fpe_detokenize)
def fpe(values: Values, params: FpeParams, ctx: MaskContext) -> pa.Array:
    """Format-preserving encryption of the alphabet characters of each string."""
    _needs_text(values, ctx)
    return on_uniques(as_array(values), lambda u: _transform(u, params, ctx, decrypt=False))
