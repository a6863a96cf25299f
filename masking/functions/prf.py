"""Keyed pseudo-random functions over whole arrays, built on AES from ``cryptography``.

Per-value HMAC in Python tops out near 1M values/s on one core before any other work,
so the masking functions use AES, which ``cryptography`` runs at several GB/s when it
gets all blocks in one call:

* :func:`cmac` — AES-CMAC (NIST SP 800-38B) of many byte strings at once: the blocks
  at position *j* of every value go through AES together.
* :class:`IntPermutation` — a keyed bijection on *w*-bit integers: a 10-round
  Feistel network whose round function is AES, so tokens of keys never collide.
* :func:`keyed_u64` — 64 pseudo-random bits per value of any Arrow type, to seed
  fake-value choice and noise.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from masking.functions.textbuf import is_text, string_buffers

BLOCK = 16
_RB = 0x87  # CMAC constant for 128-bit blocks


def aes_blocks(key: bytes, blocks: np.ndarray) -> np.ndarray:
    """Encrypt every row of an ``(n, 16)`` uint8 array with AES-ECB in one call."""
    n = blocks.shape[0]
    if n == 0:
        return np.zeros((0, BLOCK), dtype=np.uint8)
    src = np.ascontiguousarray(blocks, dtype=np.uint8)
    out = bytearray(n * BLOCK + BLOCK - 1)
    Cipher(algorithms.AES(key), modes.ECB()).encryptor().update_into(src, out)
    return np.frombuffer(out, dtype=np.uint8, count=n * BLOCK).reshape(n, BLOCK)


def _double(block: np.ndarray) -> np.ndarray:
    """Multiply a 16-byte block by x in GF(2^128), as CMAC's subkey schedule does."""
    value = int.from_bytes(block.tobytes(), "big") << 1
    if value >> 128:
        value = (value & ((1 << 128) - 1)) ^ _RB
    return np.frombuffer(value.to_bytes(BLOCK, "big"), dtype=np.uint8)


def cmac(key: bytes, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """AES-CMAC tag of each value ``data[offsets[i]:offsets[i+1]]``, as an ``(n, 16)`` array.

    Values are visited longest first so that block position *j* is one contiguous
    prefix of that order: the work is the total number of blocks, whatever the skew.
    """
    n = len(offsets) - 1
    if n == 0:
        return np.zeros((0, BLOCK), dtype=np.uint8)
    k1 = _double(aes_blocks(key, np.zeros((1, BLOCK), dtype=np.uint8))[0])
    k2 = _double(k1)
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets).astype(np.int64)
    nblocks = np.maximum(1, (lengths + BLOCK - 1) // BLOCK)
    order = np.argsort(-nblocks, kind="stable")
    starts, lengths, nblocks = starts[order], lengths[order], nblocks[order]
    active_at = np.searchsorted(-nblocks, -np.arange(1, int(nblocks[0]) + 1), side="right")
    padded = np.concatenate([data.astype(np.uint8, copy=False), np.zeros(BLOCK, dtype=np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, BLOCK)
    lane = np.arange(BLOCK, dtype=np.int64)
    state = np.zeros((n, BLOCK), dtype=np.uint8)
    for j, count in enumerate(active_at):
        count = int(count)
        block = windows[starts[:count] + j * BLOCK]
        last = nblocks[:count] == j + 1
        rows = np.nonzero(last)[0]
        if len(rows):
            tail = lengths[rows] - j * BLOCK
            tail_block = np.where(lane < tail[:, None], block[rows], 0).astype(np.uint8)
            full = tail == BLOCK
            tail_block[full] ^= k1
            short_rows = np.nonzero(~full)[0]
            tail_block[short_rows, tail[short_rows]] = 0x80
            tail_block[short_rows] ^= k2
            block[rows] = tail_block
        state[:count] = aes_blocks(key, state[:count] ^ block)
    tags = np.empty_like(state)
    tags[order] = state
    return tags


def cbc_mac_fixed(key: bytes, start: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """CBC-MAC continuing from ``start`` over equal-length rows of ``blocks`` (FF1's PRF)."""
    state = np.broadcast_to(start, (blocks.shape[0], BLOCK)).copy()
    for j in range(0, blocks.shape[1], BLOCK):
        state = aes_blocks(key, state ^ blocks[:, j : j + BLOCK])
    return state


class IntPermutation:
    """Keyed bijection on unsigned ``bits``-bit integers (2 ≤ bits ≤ 64), vectorized.

    An unbalanced Feistel network (the FF1 shape over radix 2) of ten rounds; round *i*
    adds ``AES_k(B ‖ bits ‖ i)`` truncated to the other half's width. Being a
    permutation, distinct inputs always give distinct outputs.
    """

    ROUNDS = 10

    def __init__(self, key: bytes, bits: int) -> None:
        if not 2 <= bits <= 64:
            raise ValueError(f"IntPermutation needs 2..64 bits, got {bits}")
        self.key = key
        self.bits = bits
        self.u = bits // 2
        self.v = bits - self.u

    def _round(self, i: int, half: np.ndarray, width: int) -> np.ndarray:
        block = np.zeros((half.shape[0], 2), dtype=">u8")
        block[:, 0] = half
        block[:, 1] = (self.bits << 56) | (i << 48)
        out = aes_blocks(self.key, block.view(np.uint8).reshape(-1, BLOCK))
        f = out.view(">u8")[:, 0].astype(np.uint64)
        return f & np.uint64((1 << width) - 1)

    def encrypt(self, x: np.ndarray) -> np.ndarray:
        """Permute each value of a uint64 array (values must fit in ``bits``)."""
        x = x.astype(np.uint64, copy=False)
        a = x >> np.uint64(self.v)
        b = x & np.uint64((1 << self.v) - 1)
        for i in range(self.ROUNDS):
            m = self.u if i % 2 == 0 else self.v
            c = (a + self._round(i, b, m)) & np.uint64((1 << m) - 1)
            a, b = b, c
        return (a << np.uint64(self.v)) | b

    def decrypt(self, y: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`encrypt`."""
        y = y.astype(np.uint64, copy=False)
        a = y >> np.uint64(self.v)
        b = y & np.uint64((1 << self.v) - 1)
        for i in reversed(range(self.ROUNDS)):
            m = self.u if i % 2 == 0 else self.v
            c = (b - self._round(i, a, m)) & np.uint64((1 << m) - 1)
            a, b = c, a
        return (a << np.uint64(self.v)) | b


def _u64_of_tag(tags: np.ndarray) -> np.ndarray:
    return tags[:, :8].copy().view(">u8")[:, 0].astype(np.uint64)


def keyed_u64(values: pa.Array, key: bytes) -> np.ndarray:
    """64 keyed pseudo-random bits per value (no nulls expected), stable for a key.

    Integers, floats, dates and timestamps go through one AES block each (bit
    pattern plus a type tag); strings, binaries and decimals through AES-CMAC.
    """
    t = values.type
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    if pa.types.is_boolean(t):
        values, t = pc.cast(values, pa.int8()), pa.int8()
    fixed = pa.types.is_temporal(t) and getattr(t, "bit_width", 0) in (32, 64)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or fixed:
        if pa.types.is_floating(t):
            floats = values.cast(pa.float64()).to_numpy(zero_copy_only=False) + 0.0  # -0.0 -> 0.0
            bits = floats.view(np.uint64)
            tag = 2
        elif pa.types.is_integer(t):
            bits = values.cast(pa.int64() if pa.types.is_signed_integer(t) else pa.uint64())
            bits = bits.to_numpy(zero_copy_only=False).view(np.uint64)
            tag = 1
        else:
            width = pa.int32() if t.bit_width == 32 else pa.int64()
            bits = values.view(width).cast(pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
            tag = 3
        block = np.zeros((len(bits), 2), dtype=">u8")
        block[:, 0] = bits
        block[:, 1] = tag
        return _u64_of_tag(aes_blocks(key, block.view(np.uint8).reshape(-1, BLOCK)))
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or is_text(t)):
        values = pc.cast(values, pa.large_string())
    data, offsets = string_buffers(values)
    return _u64_of_tag(cmac(key, data, offsets))
