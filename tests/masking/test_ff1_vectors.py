"""FF1 against NIST's published samples (SP 800-38G, FF1samples.pdf, samples 1-9),
and the vectorized rounds against the per-value specification path."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from masking.functions.ff1 import FF1

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
K128 = "2B7E151628AED2A6ABF7158809CF4F3C"
K192 = K128 + "EF4359D8D580AA4F"
K256 = K192 + "7F036D6F04FC6A94"
T10 = "39383736353433323130"
T11 = "3737373770717273373737"
PT10 = "0123456789"
PT36 = "0123456789abcdefghi"

NIST_SAMPLES = [
    (1, K128, "", 10, PT10, "2433477484"),
    (2, K128, T10, 10, PT10, "6124200773"),
    (3, K128, T11, 36, PT36, "a9tv40mll9kdu509eum"),
    (4, K192, "", 10, PT10, "2830668132"),
    (5, K192, T10, 10, PT10, "2496655549"),
    (6, K192, T11, 36, PT36, "xbj3kv35jrawxv32ysr"),
    (7, K256, "", 10, PT10, "6657667009"),
    (8, K256, T10, 10, PT10, "1001623463"),
    (9, K256, T11, 36, PT36, "xs8a0azh2avyalyzuwd"),
]


def numerals(text: str) -> list[int]:
    return [ALPHABET.index(c) for c in text]


def text(digits) -> str:
    return "".join(ALPHABET[int(d)] for d in digits)


@pytest.mark.parametrize("sample,key,tweak,radix,plaintext,ciphertext", NIST_SAMPLES, ids=[f"sample{s[0]}" for s in NIST_SAMPLES])
def test_nist_sample(sample, key, tweak, radix, plaintext, ciphertext):
    ff1 = FF1(bytes.fromhex(key), radix, bytes.fromhex(tweak))
    assert text(ff1.encrypt_one(numerals(plaintext))) == ciphertext
    assert text(ff1.decrypt_one(numerals(ciphertext))) == plaintext
    matrix = np.array([numerals(plaintext)], dtype=np.uint8)
    assert text(ff1.encrypt(matrix)[0]) == ciphertext
    assert text(ff1.decrypt(np.array([numerals(ciphertext)], dtype=np.uint8))[0]) == plaintext


@settings(max_examples=40, deadline=None)
@given(
    radix=st.sampled_from([2, 10, 16, 36, 62]),
    length=st.integers(min_value=2, max_value=40),
    tweak=st.binary(max_size=20),
    key=st.binary(min_size=16, max_size=16),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_vectorized_rounds_match_specification(radix, length, tweak, key, seed):
    ff1 = FF1(key, radix, tweak)
    x = np.random.default_rng(seed).integers(0, radix, size=(8, length)).astype(np.uint8)
    encrypted = ff1.encrypt(x)
    assert encrypted.tolist() == [ff1.encrypt_one(row.tolist()) for row in x]
    assert (ff1.decrypt(encrypted) == x).all()


@pytest.mark.parametrize("radix,length", [(10, 80), (62, 50), (300, 12)])
def test_long_numerals_match_specification(radix, length):
    """Numbers past 56 bits, S longer than one AES block (d > 16), radix above 256."""
    ff1 = FF1(bytes(range(32)), radix, b"long")
    x = np.random.default_rng(length).integers(0, radix, size=(5, length)).astype(np.uint16)
    encrypted = ff1.encrypt(x)
    assert encrypted.tolist() == [ff1.encrypt_one(row.tolist()) for row in x]
    assert (ff1.decrypt(encrypted) == x).all()


def test_rejects_bad_key_and_radix():
    with pytest.raises(ValueError):
        FF1(b"short", 10)
    with pytest.raises(ValueError):
        FF1(bytes(16), 1)
