"""FF1 format-preserving encryption (NIST SP 800-38G), over ``cryptography``'s AES.

:meth:`FF1.encrypt_one` follows the specification step by step with Python integers.
:meth:`FF1.encrypt` runs the same rounds on a whole ``(k, n)`` matrix of numerals at
once: every row of one length shares P, the tweak blocks and the round constants, so
each round is one AES call over all rows and a few uint64 numpy operations. Rows whose
numbers do not fit in 56 bits (radix 10 beyond 32 digits, radix 36 beyond 20) take the
per-value path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from masking.functions.prf import BLOCK, aes_blocks, cbc_mac_fixed

ROUNDS = 10
_FAST_LIMIT = 1 << 56  # r * 256 must stay below 2**64 in the byte-wise reduction


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class FF1:
    """FF1 with one key, radix and tweak: encrypt and decrypt numeral strings."""

    def __init__(self, key: bytes, radix: int, tweak: bytes = b"") -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("FF1 key must be 16, 24 or 32 bytes")
        if not 2 <= radix <= 1 << 16:
            raise ValueError(f"FF1 radix must be 2..65536, got {radix}")
        self.key = key
        self.radix = radix
        self.tweak = tweak

    # --- parameters shared by both paths -------------------------------------------------
    def _setup(self, n: int) -> tuple[int, int, int, int, bytes, bytes]:
        if n < 2:
            raise ValueError("FF1 needs at least 2 numerals")
        u = n // 2
        v = n - u
        b = _ceil_div((self.radix**v - 1).bit_length(), 8)
        d = 4 * _ceil_div(b, 4) + 4
        t = len(self.tweak)
        p = bytes([1, 2, 1]) + self.radix.to_bytes(3, "big") + bytes([10, u % 256]) + n.to_bytes(4, "big")
        p += t.to_bytes(4, "big")
        q_prefix = self.tweak + bytes((-t - b - 1) % 16)
        return u, v, b, d, p, q_prefix

    def _prf(self, data: bytes) -> bytes:
        blocks = np.frombuffer(data, dtype=np.uint8).reshape(1, -1)
        return cbc_mac_fixed(self.key, np.zeros(BLOCK, dtype=np.uint8), blocks)[0].tobytes()

    def _s_bytes(self, r: bytes, d: int) -> bytes:
        s = r
        for j in range(1, _ceil_div(d, 16)):
            x = (int.from_bytes(r, "big") ^ j).to_bytes(16, "big")
            s += aes_blocks(self.key, np.frombuffer(x, dtype=np.uint8).reshape(1, 16))[0].tobytes()
        return s[:d]

    # --- the specification, one value ---------------------------------------------------
    def _num(self, digits: Sequence[int]) -> int:
        x = 0
        for digit in digits:
            x = x * self.radix + int(digit)
        return x

    def _str(self, x: int, m: int) -> list[int]:
        out = [0] * m
        for i in range(m - 1, -1, -1):
            x, out[i] = divmod(x, self.radix)
        return out

    def encrypt_one(self, x: Sequence[int]) -> list[int]:
        """FF1.Encrypt of one numeral string (Algorithm 7 of SP 800-38G)."""
        n = len(x)
        u, v, b, d, p, q_prefix = self._setup(n)
        a, bb = list(x[:u]), list(x[u:])
        for i in range(ROUNDS):
            q = q_prefix + bytes([i]) + self._num(bb).to_bytes(b, "big")
            y = int.from_bytes(self._s_bytes(self._prf(p + q), d), "big")
            m = u if i % 2 == 0 else v
            c = (self._num(a) + y) % self.radix**m
            a, bb = bb, self._str(c, m)
        return a + bb

    def decrypt_one(self, x: Sequence[int]) -> list[int]:
        """FF1.Decrypt of one numeral string (Algorithm 8 of SP 800-38G)."""
        n = len(x)
        u, v, b, d, p, q_prefix = self._setup(n)
        a, bb = list(x[:u]), list(x[u:])
        for i in reversed(range(ROUNDS)):
            q = q_prefix + bytes([i]) + self._num(a).to_bytes(b, "big")
            y = int.from_bytes(self._s_bytes(self._prf(p + q), d), "big")
            m = u if i % 2 == 0 else v
            c = (self._num(bb) - y) % self.radix**m
            bb, a = a, self._str(c, m)
        return a + bb

    # --- many values of one length at once ------------------------------------------------
    def encrypt(self, x: np.ndarray) -> np.ndarray:
        """Encrypt every row of a ``(k, n)`` array of numerals."""
        return self._matrix(x, decrypt=False)

    def decrypt(self, x: np.ndarray) -> np.ndarray:
        """Decrypt every row of a ``(k, n)`` array of numerals."""
        return self._matrix(x, decrypt=True)

    def _matrix(self, x: np.ndarray, *, decrypt: bool) -> np.ndarray:
        k, n = x.shape
        if k == 0:
            return x.copy()
        u, v, b, d, p, q_prefix = self._setup(n)
        if self.radix**v >= _FAST_LIMIT or self.radix > 256:
            return self._matrix_big(x, decrypt=decrypt)
        radix = np.uint64(self.radix)
        mods = {u: np.uint64(self.radix**u), v: np.uint64(self.radix**v)}
        num_a = self._num_rows(x[:, :u], radix)
        num_b = self._num_rows(x[:, u:], radix)
        q_prefix_blocks = q_prefix + bytes(16)  # last block is rebuilt per round
        const_len = len(q_prefix) + 1 + b - BLOCK  # bytes of Q before its final block
        head = p + q_prefix_blocks[:const_len]
        state = self._prf(head) if head else bytes(BLOCK)
        state_arr = np.frombuffer(state, dtype=np.uint8)
        tail_const = np.frombuffer((q_prefix + bytes(1 + b))[const_len:], dtype=np.uint8)
        for i in reversed(range(ROUNDS)) if decrypt else range(ROUNDS):
            m = u if i % 2 == 0 else v
            source = num_a if decrypt else num_b
            last = np.broadcast_to(tail_const, (k, BLOCK)).copy()
            last[:, BLOCK - b - 1] = i
            last[:, BLOCK - b :] = source.astype(">u8").view(np.uint8).reshape(k, 8)[:, 8 - b :]
            r = cbc_mac_fixed(self.key, state_arr, last)
            mod = mods[m]
            y = self._bytes_mod(r, d, int(mod).bit_length(), mod)
            if decrypt:
                c = num_b - y
                c += np.where(num_b < y, mod, np.uint64(0))
                num_a, num_b = c, num_a
            else:
                c = num_a + y
                c -= np.where(c >= mod, mod, np.uint64(0))
                num_a, num_b = num_b, c
        out = np.empty_like(x)
        out[:, :u] = self._str_rows(num_a, u, radix)
        out[:, u:] = self._str_rows(num_b, v, radix)
        return out

    def _matrix_big(self, x: np.ndarray, *, decrypt: bool) -> np.ndarray:
        """Rounds for numbers beyond 56 bits: AES still runs once per round over all rows;
        only the modular arithmetic uses Python integers, one list per round."""
        k, n = x.shape
        u, v, b, d, p, q_prefix = self._setup(n)
        radix = self.radix
        num_a, num_b = self._big_nums(x[:, :u]), self._big_nums(x[:, u:])
        state = np.frombuffer(self._prf(p), dtype=np.uint8)
        q_len = len(q_prefix) + 1 + b
        q = np.zeros((k, q_len), dtype=np.uint8)
        q[:, : len(q_prefix)] = np.frombuffer(q_prefix, dtype=np.uint8)
        for i in reversed(range(ROUNDS)) if decrypt else range(ROUNDS):
            m = u if i % 2 == 0 else v
            mod = radix**m
            source = num_a if decrypt else num_b
            q[:, len(q_prefix)] = i
            q[:, len(q_prefix) + 1 :] = np.frombuffer(
                b"".join(value.to_bytes(b, "big") for value in source), dtype=np.uint8
            ).reshape(k, b)
            r = cbc_mac_fixed(self.key, state, q)
            blocks = [r]
            for j in range(1, _ceil_div(d, 16)):
                counter = np.zeros(BLOCK, dtype=np.uint8)
                counter[-4:] = np.frombuffer(j.to_bytes(4, "big"), dtype=np.uint8)
                blocks.append(aes_blocks(self.key, r ^ counter))
            s_bytes = np.hstack(blocks)[:, :d].tobytes()
            ys = [int.from_bytes(s_bytes[row * d : (row + 1) * d], "big") for row in range(k)]
            if decrypt:
                num_a, num_b = [(nb - y) % mod for nb, y in zip(num_b, ys)], num_a
            else:
                num_a, num_b = num_b, [(na + y) % mod for na, y in zip(num_a, ys)]
        out = np.empty_like(x)
        out[:, :u] = self._big_digits(num_a, u)
        out[:, u:] = self._big_digits(num_b, v)
        return out

    def _chunk(self) -> int:
        """Numerals per uint64 chunk (radix**chunk < 2**56)."""
        return max(1, int(55 // math.log2(self.radix)))

    def _big_nums(self, digits: np.ndarray) -> list[int]:
        """NUM_radix of each row as a Python int, built from uint64 chunks."""
        w = self._chunk()
        radix = np.uint64(self.radix)
        n = digits.shape[1]
        acc = [0] * digits.shape[0]
        for start in range(0, n, w):
            part = digits[:, start : start + w]
            scale = self.radix ** part.shape[1]
            chunk = self._num_rows(part, radix).tolist()
            acc = [a * scale + c for a, c in zip(acc, chunk)]
        return acc

    def _big_digits(self, nums: list[int], m: int) -> np.ndarray:
        """STR^m_radix of Python ints, split into uint64 chunks first."""
        w = self._chunk()
        radix = np.uint64(self.radix)
        out = np.empty((len(nums), m), dtype=np.uint8 if self.radix <= 256 else np.uint16)
        for end in range(m, 0, -w):
            width = min(w, end)
            scale = self.radix**width
            pairs = [divmod(value, scale) for value in nums]
            nums = [q for q, _ in pairs]
            out[:, end - width : end] = self._str_rows(np.array([r for _, r in pairs], dtype=np.uint64), width, radix)
        return out

    @staticmethod
    def _bytes_mod(r: np.ndarray, d: int, mod_bits: int, mod: np.uint64) -> np.ndarray:
        """NUM(r[:, :d]) mod ``mod`` (d <= 16): the first 8 bytes as one word, the rest in
        as large chunks as 64-bit arithmetic allows."""
        words = np.ascontiguousarray(r[:, :16]).view(">u8").astype(np.uint64)
        head = min(d, 8)
        y = (words[:, 0] >> np.uint64(64 - 8 * head)) % mod
        step = max(1, (64 - mod_bits) // 8)
        for j in range(8, d, step):
            width = min(step, d - j)
            chunk = (words[:, 1] >> np.uint64(64 - 8 * (j - 8 + width))) & np.uint64((1 << (8 * width)) - 1)
            y = ((y << np.uint64(8 * width)) | chunk) % mod
        return y

    @staticmethod
    def _num_rows(digits: np.ndarray, radix: np.uint64) -> np.ndarray:
        acc = np.zeros(digits.shape[0], dtype=np.uint64)
        for j in range(digits.shape[1]):
            acc = acc * radix + digits[:, j].astype(np.uint64)
        return acc

    @staticmethod
    def _str_rows(num: np.ndarray, m: int, radix: np.uint64) -> np.ndarray:
        out = np.empty((num.shape[0], m), dtype=np.uint8 if radix <= 256 else np.uint16)
        num = num.copy()
        for j in range(m - 1, -1, -1):
            out[:, j] = num % radix
            num //= radix
        return out
