"""``fake``: deterministic faker substitution.

The same real value always becomes the same fake value: each distinct value's keyed
PRF output indexes a pool of fake values built once per (kind, locale) with a fixed
faker seed. Without the key the mapping cannot be guessed or replayed. Faker is never
called per row. Different values can share a fake value (the pools are finite and
names repeat in real life too): use ``hmac_token`` where uniqueness matters. The pools
depend on the faker version, so an upgrade can change which fake a value gets.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from masking.functions.prf import keyed_u64
from masking.functions.registry import MaskContext, Params, Values, as_array, on_uniques, register
from masking.functions.textbuf import is_text

POOL_SIZE = 8192
_SIMPLE = {
    "first_name": "first_name",
    "last_name": "last_name",
    "phone": "phone_number",
    "street_address": "street_address",
    "city": "city",
    "postcode": "postcode",
    "company": "company",
    "country": "country",
    "job": "job",
    "user_name": "user_name",
    "iban": "iban",
}
KINDS = sorted([*_SIMPLE, "name", "email"])


class FakeParams(Params):
    """``kind`` of fake value and faker ``locale``; ``domain`` scopes the key."""

    kind: str
    locale: str = "en_US"
    domain: str = Field("default", min_length=1)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"unknown kind {v!r} (known: {', '.join(KINDS)})")
        return v

    @field_validator("locale")
    @classmethod
    def _locale(cls, v: str) -> str:
        from faker.config import AVAILABLE_LOCALES

        if v not in AVAILABLE_LOCALES:
            raise ValueError(f"unknown faker locale {v!r}")
        return v


@lru_cache(maxsize=32)
def pool(method: str, locale: str, size: int = POOL_SIZE) -> pa.Array:
    """``size`` fake values from ``faker.<method>()``, the same on every run (fixed seed)."""
    from faker import Faker

    fk = Faker(locale)
    fk.seed_instance(int.from_bytes(hashlib.sha256(f"{method}/{locale}".encode()).digest()[:8], "big"))
    make = getattr(fk, method)
    return pa.array([str(make()) for _ in range(size)], type=pa.string())


def _ascii_lower(names: pa.Array) -> pa.Array:
    cleaned = pc.replace_substring_regex(pc.utf8_lower(names), r"[^a-z]", "")
    return pc.if_else(pc.equal(pc.utf8_length(cleaned), 0), "user", cleaned)


def _pick(p: pa.Array, h: np.ndarray, shift: int) -> pa.Array:
    return p.take(((h >> np.uint64(shift)) % np.uint64(len(p))).astype(np.int64))


def fake_values(h: np.ndarray, params: FakeParams) -> pa.Array:
    """The fake value for each 64-bit keyed hash ``h``."""
    if params.kind in _SIMPLE:
        return _pick(pool(_SIMPLE[params.kind], params.locale), h, 0)
    first = _pick(pool("first_name", params.locale), h, 0)
    last = _pick(pool("last_name", params.locale), h, 20)
    if params.kind == "name":
        return pc.binary_join_element_wise(first, last, " ")
    number = pc.cast(pa.array((h >> np.uint64(40)) % np.uint64(100)), pa.string())
    domain = _pick(pool("safe_domain_name", params.locale, 16), h, 50)
    local = pc.binary_join_element_wise(_ascii_lower(first), pc.binary_join_element_wise(_ascii_lower(last), number, ""), ".")
    return pc.binary_join_element_wise(local, domain, "@")


@register("fake", FakeParams)
def fake(values: Values, params: FakeParams, ctx: MaskContext) -> pa.Array:
    """Replace each value with a realistic fake of ``kind``, stable for the same value.

    Emails use reserved example domains, so masked data never reaches a real mailbox.
    """
    key = ctx.key(f"mask:fake:{params.domain}")
    arr = as_array(values)
    out = on_uniques(arr, lambda u: fake_values(keyed_u64(u, key), params))
    t = arr.type.value_type if pa.types.is_dictionary(arr.type) else arr.type
    return out.cast(t) if is_text(t) and t != out.type else out
