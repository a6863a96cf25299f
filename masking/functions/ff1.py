"""FF1 format-preserving encryption (NIST SP 800-38G), over ``cryptography``'s AES.

:meth:`FF1.encrypt_one` follows the specification step by step with Python integers.
:meth:`FF1.encrypt` runs the same rounds on a whole ``(k, n)`` matrix of numerals at
once: every row of one length shares P, the tweak blocks and the round constants, so
each round is one AES call over all rows and a few uint64 numpy operations. Rows whose
numbers do not fit in 56 bits (radix 10 beyond 32 digits, radix 36 beyond 20) take the
per-value path.
"""

from __future__ import annotations

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
            one = self.decrypt_one if decrypt else self.encrypt_one
            return np.array([one(row.tolist()) for row in x], dtype=x.dtype).reshape(k, n)
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
            y = np.zeros(k, dtype=np.uint64)
            mod = mods[m]
            for j in range(d):
                y = ((y << np.uint64(8)) | r[:, j].astype(np.uint64)) % mod
            if decrypt:
                c = (num_b + mod - y) % mod
                num_a, num_b = c, num_a
            else:
                c = (num_a + y) % mod
                num_a, num_b = num_b, c
        out = np.empty_like(x)
        out[:, :u] = self._str_rows(num_a, u, radix)
        out[:, u:] = self._str_rows(num_b, v, radix)
        return out

    @staticmethod
    def _num_rows(digits: np.ndarray, radix: np.uint64) -> np.ndarray:
        acc = np.zeros(digits.shape[0], dtype=np.uint64)
        for j in range(digits.shape[1]):
            acc = acc * radix + digits[:, j].astype(np.uint64)
        return acc

    @staticmethod
    def _str_rows(num: np.ndarray, m: int, radix: np.uint64) -> np.ndarray:
        out = np.empty((num.shape[0], m), dtype=np.uint8)
        num = num.copy()
        for j in range(m - 1, -1, -1):
            out[:, j] = (num % radix).astype(np.uint8)
            num //= radix
        return out
