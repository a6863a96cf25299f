"""Realistic made-up values for columns no model learns: PII, free text, and everything
the rule-based generator produces.

Values are chosen from the column's name and Arrow type (``email``, ``phone``, ``city``,
``*_at`` timestamps, ``amount`` decimals, ...), built in bulk from small faker pools
sampled by index with numpy, so they are deterministic for a seed and fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from faker import Faker

from synth.transform import from_numeric

_US_PER_DAY = 86_400_000_000
_EPOCH_2015 = int(np.datetime64("2015-01-01", "us").astype(np.int64))
_EPOCH_2025 = int(np.datetime64("2025-01-01", "us").astype(np.int64))
_BIRTH_LOW = int(np.datetime64("1940-01-01", "us").astype(np.int64))
_BIRTH_HIGH = int(np.datetime64("2006-12-31", "us").astype(np.int64))
_DOMAINS = ("example.com", "example.org", "example.net")
_CURRENCIES = ("EUR", "USD", "GBP", "CHF", "SEK", "JPY")


class FakerPools:
    """Small pools of faker values, built on first use from one seed."""

    def __init__(self, seed: int, size: int = 400) -> None:
        self._fake = Faker("en_US")
        self._seed = seed
        self._size = size
        self._pools: dict[str, pa.Array] = {}

    def pool(self, kind: str) -> pa.Array:
        """Distinct values of one faker provider (``first_name``, ``city``, ``word``...)."""
        if kind not in self._pools:
            self._fake.seed_instance(f"{self._seed}:{kind}")
            make: Callable[[], str] = getattr(self._fake, kind)
            values = list(dict.fromkeys(str(make()) for _ in range(self._size)))
            self._pools[kind] = pa.array(values, pa.string())
        return self._pools[kind]

    def pick(self, kind: str, n: int, rng: np.random.Generator) -> pa.Array:
        values = self.pool(kind)
        return values.take(pa.array(rng.integers(0, len(values), n)))


def _digits(rng: np.random.Generator, n: int, width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(rng.integers(0, 10**width, n)), pa.string()), width, "0")


def _join(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _luhn(rng: np.random.Generator, n: int) -> pa.Array:
    body = rng.integers(0, 10, (n, 15))
    body[:, 0] = rng.choice([4, 5], n)
    doubled = body[:, 0::2] * 2
    total = body[:, 1::2].sum(axis=1) + np.where(doubled > 9, doubled - 9, doubled).sum(axis=1)
    digits = np.concatenate([body, ((10 - total % 10) % 10)[:, None]], axis=1).astype(np.uint8) + 48
    return pa.array(np.ascontiguousarray(digits).view("S16").ravel()).cast(pa.string())


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower())) | {name.lower()}


def _text(name: str, n: int, rng: np.random.Generator, pools: FakerPools) -> pa.Array:
    words = _words(name)
    low = name.lower()
    if "email" in low or "mail" in words:
        handle = pc.utf8_lower(_join(pools.pick("first_name", n, rng), ".", pools.pick("last_name", n, rng)))
        domain = pa.array(_DOMAINS).take(pa.array(rng.integers(0, len(_DOMAINS), n)))
        return _join(handle, pc.cast(pa.array(rng.integers(1, 10_000, n)), pa.string()), "@", domain)
    if words & {"ip", "ip_address", "ipv4"}:
        octets = [pc.cast(pa.array(rng.integers(1, 255, n)), pa.string()) for _ in range(4)]
        return pc.binary_join_element_wise(*octets, ".")
    if words & {"first", "given", "firstname"}:
        return pools.pick("first_name", n, rng)
    if words & {"last", "surname", "family", "lastname"}:
        return pools.pick("last_name", n, rng)
    if words & {"phone", "mobile", "tel", "telephone", "fax"}:
        return _join("+1555", _digits(rng, n, 7))
    if words & {"ssn", "national", "tax", "passport"}:
        return _join(_digits(rng, n, 3), "-", _digits(rng, n, 2), "-", _digits(rng, n, 4))
    if words & {"street", "address", "line1", "line2", "addr"}:
        return _join(pc.cast(pa.array(rng.integers(1, 400, n)), pa.string()), " ", pools.pick("street_name", n, rng))
    if words & {"city", "town"}:
        return pools.pick("city", n, rng)
    if words & {"postcode", "zip", "postal", "zipcode"}:
        return _digits(rng, n, 5)
    if "country" in words:
        return pools.pick("country_code", n, rng)
    if "iban" in words:
        return _join(pools.pick("country_code", n, rng), _digits(rng, n, 2), _digits(rng, n, 8), _digits(rng, n, 10))
    if words & {"pan", "card_number", "cardnumber"}:
        return _luhn(rng, n)
    if words & {"url", "website", "link"}:
        return _join("https://", pa.array(_DOMAINS).take(pa.array(rng.integers(0, 3, n))), "/",
                     pools.pick("word", n, rng))
    if words & {"uuid", "guid", "fingerprint", "hash", "token"}:
        hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
        chars = np.ascontiguousarray(hexdigits[rng.integers(0, 16, (n, 32))])
        return pa.array(chars.view("S32").ravel()).cast(pa.string())
    if "currency" in words:
        return pa.array(_CURRENCIES).take(pa.array(rng.integers(0, len(_CURRENCIES), n)))
    if words & {"company", "merchant", "employer", "organisation", "organization"}:
        return pools.pick("company", n, rng)
    if "name" in words or low.endswith("name"):
        return _join(pools.pick("first_name", n, rng), " ", pools.pick("last_name", n, rng))
    return pools.pick("word", n, rng)


def _number(name: str, t: pa.DataType, n: int, rng: np.random.Generator) -> pa.Array:
    words = _words(name)
    if words & {"lat", "latitude"}:
        x = rng.uniform(-60, 70, n)
    elif words & {"lon", "lng", "longitude"}:
        x = rng.uniform(-180, 180, n)
    elif words & {"amount", "balance", "price", "total", "value", "cost", "fee", "salary"}:
        x = np.round(rng.lognormal(3.5, 1.2, n), 2)
    elif words & {"age"}:
        x = rng.integers(18, 90, n).astype(float)
    elif pa.types.is_integer(t):
        x = rng.integers(0, 1000, n).astype(float)
    else:
        x = rng.normal(0, 100, n)
    return from_numeric(x, t)


def _time(name: str, t: pa.DataType, n: int, rng: np.random.Generator) -> pa.Array:
    words = _words(name)
    if words & {"birth", "dob", "born", "birthday"}:
        us = rng.integers(_BIRTH_LOW, _BIRTH_HIGH, n)
    else:
        us = rng.integers(_EPOCH_2015, _EPOCH_2025, n)
    if pa.types.is_date32(t):
        return from_numeric((us // _US_PER_DAY).astype(float), t)
    if pa.types.is_date64(t):
        return from_numeric((us // 1000).astype(float), t)
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}[t.unit]
    native = us // scale if t.unit != "ns" else us * 1_000
    return pa.array(native.astype(np.int64)).cast(t)


def fill_column(name: str, t: pa.DataType, n: int, rng: np.random.Generator, pools: FakerPools) -> pa.Array:
    """``n`` made-up values for a column called ``name`` of type ``t``."""
    base = t.value_type if pa.types.is_dictionary(t) else t
    if pa.types.is_boolean(base):
        share = 0.05 if name.lower().startswith(("is_", "has_")) else 0.5
        values = pa.array(rng.random(n) < share)
    elif pa.types.is_timestamp(base) or pa.types.is_date(base):
        values = _time(name, base, n, rng)
    elif pa.types.is_integer(base) or pa.types.is_floating(base) or pa.types.is_decimal(base):
        values = _number(name, base, n, rng)
    elif pa.types.is_string(base) or pa.types.is_large_string(base):
        values = _text(name, n, rng, pools)
    else:
        return pa.nulls(n, t)
    return values.cast(t)
