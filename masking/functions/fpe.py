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
from masking.functions.textbuf import build_strings, flagged_positions, is_text, string_buffers

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
    """Encrypt (or decrypt) the alphabet characters of distinct non-null strings.

    Values are grouped by how many alphabet characters they hold; each group is one
    ``(k, count)`` matrix of numerals, so FF1 and the Luhn digit run on whole groups.
    """
    chars = params.chars.encode()
    radix = len(chars)
    lut = np.full(256, 255, dtype=np.uint8)
    lut[np.frombuffer(chars, dtype=np.uint8)] = np.arange(radix, dtype=np.uint8)
    alphabet = np.frombuffer(chars, dtype=np.uint8)
    data, offsets = string_buffers(values)
    digits = lut[data]
    uniform = _uniform_layout(digits, offsets)
    if uniform is not None:
        positions = uniform.ravel()
        counts = np.full(len(offsets) - 1, uniform.shape[1], dtype=np.int64)
        first = np.arange(len(counts), dtype=np.int64) * uniform.shape[1]
    else:
        positions, first, counts = flagged_positions(digits != 255, offsets)
    kept = params.keep_prefix + params.keep_suffix + int(params.luhn)
    short = counts - kept < params.min_length
    if short.any() and params.on_short == "error":
        raise ctx.error(
            "fpe",
            f"{int(short.sum())} value(s) have fewer than {params.min_length} characters to encrypt "
            f"(shortest: {max(int(counts.min()) - kept, 0)}); FPE needs a domain of at least 1,000,000 "
            "values (NIST SP 800-38G Rev. 1 draft). Use hmac_token or partial, or on_short = 'null'",
        )
    out = data.copy()
    run = _cipher(params, ctx, decrypt)
    lo = params.keep_prefix
    for count in np.unique(counts[~short]).tolist():
        if uniform is not None:
            where = uniform
        else:
            rows = np.flatnonzero(counts == count)
            where = positions[first[rows][:, None] + np.arange(count)]
        numerals = digits[where]
        hi = count - params.keep_suffix - int(params.luhn)
        numerals[:, lo:hi] = run(np.ascontiguousarray(numerals[:, lo:hi]))
        if params.luhn:
            numerals[:, -1] = luhn_digit(numerals[:, :-1])
        out[where] = alphabet[numerals]
    result = build_strings(out, offsets, values)
    if short.any():
        result = pc.if_else(pa.array(~short), result, pa.scalar(None, result.type))
    return result


_DOUBLED = np.array([0, 2, 4, 6, 8, 1, 3, 5, 7, 9], dtype=np.uint8)


def luhn_digit(body: np.ndarray) -> np.ndarray:
    """The Luhn check digit for each row of digits (the number without its last digit)."""
    rev = body[:, ::-1]
    total = _DOUBLED[rev[:, 0::2]].sum(axis=1, dtype=np.int64) + rev[:, 1::2].sum(axis=1, dtype=np.int64)
    return ((10 - total % 10) % 10).astype(np.uint8)


def _uniform_layout(digits: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    """When every value has the same bytes and alphabet positions (``4111-1111-…``), the
    ``(n, count)`` byte positions of the alphabet characters; otherwise None."""
    n = len(offsets) - 1
    if n == 0 or len(digits) == 0:
        return None
    width = int(offsets[1] - offsets[0])
    if width == 0 or len(digits) != n * width or not (np.diff(offsets) == width).all():
        return None
    alpha = (digits != 255).reshape(n, width)
    if not (alpha == alpha[0]).all():
        return None
    columns = np.flatnonzero(alpha[0])
    return np.arange(n, dtype=np.int64)[:, None] * width + columns


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
