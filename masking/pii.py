"""PII detection: a tag and a proposed masking rule for every column (``microdb pii scan``).

Evidence comes from two places. The column name is split into tokens
(``cust_email_addr``, ``EmailAddress``, ``mobile_no``) and matched against phrases per
tag. The values are a seeded sample matched with Arrow regex kernels, then validated
exactly where a checksum exists (Luhn for card numbers, ISO 7064 mod-97 for IBANs,
``ipaddress`` for IPs). Name alone gives a low confidence, name and values agreeing a
high one, values alone a high one only when most of the sample matches. Every column
gets a rule, ``"keep"`` included, so ``policy_draft`` classifies the whole schema.
"""

from __future__ import annotations

import datetime as dt
import importlib
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tomli_w

from masking.functions.registry import as_array
from masking.functions.textbuf import is_text, string_buffers
from microdb.errors import ConfigError

By = Literal["name", "values", "both"]
Rule = str | dict[str, Any]
KEY_TAG = "key"
"""Tag of entity and foreign key columns: not PII, tokenized so joins keep working."""


@dataclass(frozen=True)
class ColumnFinding:
    """What the scan concluded about one column.

    ``tag`` is None for columns with nothing personal in them; ``by`` says which
    evidence supports the tag; ``matched_share`` is the share of the non-null sample
    that passed the tag's value check; ``examples_masked`` shows value shapes only
    (``aaaa.aaa99@aaaaaaa.aaa``), never the values.
    """

    table: str
    column: str
    tag: str | None
    confidence: float
    by: By | None
    matched_share: float
    examples_masked: list[str]
    rule: Rule = "keep"
    type: str = ""

    @property
    def pii(self) -> bool:
        """Whether the column holds personal data (entity keys are not counted)."""
        return self.tag is not None and self.tag != KEY_TAG


# ------------------------------------------------------------------------- names

_SYNONYMS = {
    "cust": "customer", "addr": "address", "adr": "address", "no": "number", "num": "number", "nr": "number",
    "nbr": "number", "tel": "phone", "telephone": "phone", "cell": "mobile", "latitude": "lat",
    "lng": "lon", "longitude": "lon", "surname": "last name", "forename": "first name",
    "fname": "first name", "lname": "last name", "givenname": "first name",
}
_FILLERS = ("of", "name", "date", "code", "number", "id", "address", "line", "user", "customer",
            "client", "home", "work", "billing", "shipping", "primary", "secondary", "contact")
_PERSON_WORDS = frozenset({
    "customer", "client", "person", "people", "user", "member", "employee", "patient", "contact",
    "holder", "cardholder", "owner", "beneficiary", "passenger", "guest", "student", "staff",
    "applicant", "payee", "payer", "recipient", "sender", "subscriber", "driver", "author",
})


def _split_camel(word: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])",
                    " ", word)
    return spaced.lower().split()


@lru_cache(maxsize=4096)
def _word_break(word: str) -> tuple[str, ...]:
    """``emailaddress`` -> (``email``, ``address``) when the whole word splits into
    known words; otherwise the word itself (``ethnicity`` stays whole)."""
    vocab = _vocabulary()
    if word in vocab or len(word) < 4:
        return (word,)
    best: list[tuple[str, ...] | None] = [()] + [None] * len(word)
    for end in range(1, len(word) + 1):
        for start in range(max(0, end - 16), end):
            part, head = word[start:end], best[start]
            if head is not None and part in vocab and len(part) >= 2:
                if best[end] is None or len(head) + 1 < len(best[end]):
                    best[end] = (*head, part)
    return best[-1] or (word,)


def name_tokens(name: str) -> tuple[str, ...]:
    """Normalized tokens of a table or column name: split on separators, camelCase and
    digits, compound words broken, abbreviations expanded (``addr`` -> ``address``)."""
    out: list[str] = []
    for word in re.split(r"[^0-9A-Za-z]+", name):
        for piece in _split_camel(word):
            for token in _word_break(piece):
                out.extend(_SYNONYMS.get(token, token).split())
    return tuple(out)


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _has_phrase(tokens: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(tokens[i:i + n] == phrase for i in range(len(tokens) - n + 1))


# ------------------------------------------------------------------------ values


@dataclass
class _Sample:
    """The non-null sampled values of one column and the column's name tokens."""

    raw: pa.Array
    tokens: tuple[str, ...]
    _text: pa.Array | None = field(default=None, repr=False)

    @property
    def text(self) -> pa.Array:
        if self._text is None:
            self._text = self.raw if is_text(self.raw.type) else pc.cast(self.raw, pa.string())
        return self._text

    def matches(self, pattern: str) -> np.ndarray:
        return _np(pc.match_substring_regex(self.text, pattern))


def _np(mask: pa.Array) -> np.ndarray:
    return mask.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)


_EMAIL = r"[A-Za-z0-9._%+'\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
_SSN = r"^\d{3}-\d{2}-\d{4}$"
_NINO = r"^[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]$"
_LETTER = r"[^\x00-\x40\x5B-\x60\x7B-\x7F]"  # an ASCII letter or any non-ASCII character: \p{L} costs RE2 ~1 ms a call
_NAME_SHAPE = rf"^{_LETTER}({_LETTER}|['’.\- ])*$"
_MAC = r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$"
_DATE_TEXT = r"^(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.\-]\d{1,2}[/.\-]\d{4})([ T].*)?$"
_EMBEDDED = (
    _EMAIL,
    r"(^|[^\d])\d{3}-\d{2}-\d{4}([^\d]|$)",
    r"\+\d{1,3}[ .\-]?\(?\d{1,4}\)?([ .\-]?\d{2,4}){2,4}",
    r"(^|[^\d])\d{4}[ \-]?\d{4}[ \-]?\d{4}[ \-]?\d{1,7}([^\d]|$)",
)


def _digits_only(text: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(text, r"[^0-9]", "")


def _email(s: _Sample) -> np.ndarray:
    return s.matches(f"^{_EMAIL}$")


def _phone(s: _Sample, loose: bool = False) -> np.ndarray:
    """Phone-shaped: 7-15 digits with ``+``, spaces, dashes, dots or parentheses; bare
    digit strings count only with name evidence (``loose``)."""
    shaped = s.matches(r"^\+?[0-9][0-9 ().\-]{5,22}[0-9]$") | s.matches(r"^\+?\([0-9]{1,4}\)[0-9 .\-]{5,20}[0-9]$")
    formatted = s.matches(r"^\+|[ ()\-.]")
    ndigits = pc.utf8_length(_digits_only(s.text)).to_numpy(zero_copy_only=False)
    ok = shaped & (ndigits >= 7) & (ndigits <= 15) & ~s.matches(_DATE_TEXT) & ~s.matches(_SSN)
    return ok if loose else ok & formatted


def _national_id(s: _Sample) -> np.ndarray:
    """US SSNs with valid area, group and serial, and UK National Insurance numbers."""
    t = s.text
    ssn = s.matches(_SSN)
    area, group, serial = (pc.utf8_slice_codeunits(t, a, b) for a, b in ((0, 3), (4, 6), (7, 11)))
    valid = (_np(pc.less(area, "900")) & ~_np(pc.is_in(area, pa.array(["000", "666"])))
             & ~_np(pc.equal(group, "00")) & ~_np(pc.equal(serial, "0000")))
    return (ssn & valid) | s.matches(_NINO)


def _digit_matrix(text: pa.Array, width: int) -> np.ndarray:
    """Equal-length ASCII strings (left-padded to ``width``) as an (n, width) uint8 matrix."""
    padded = pc.utf8_lpad(text, width, "0")
    data, _ = string_buffers(padded)
    return data.reshape(len(text), width)


def luhn_valid(digits: pa.Array) -> np.ndarray:
    """Whether each digit string (13-19 digits, separators already removed) passes Luhn."""
    lengths = pc.utf8_length(digits).to_numpy(zero_copy_only=False)
    ok = (lengths >= 13) & (lengths <= 19) & _np(pc.match_substring_regex(digits, r"^[0-9]+$"))
    out = np.zeros(len(digits), dtype=bool)
    if not ok.any():
        return out
    m = _digit_matrix(digits.filter(pa.array(ok)), 19).astype(np.int64) - 48
    rev = m[:, ::-1]
    doubled = rev[:, 1::2] * 2
    total = rev[:, 0::2].sum(axis=1) + (doubled - 9 * (doubled > 9)).sum(axis=1)
    out[ok] = total % 10 == 0
    return out


def _pan_shape(s: _Sample) -> np.ndarray:
    ndigits = pc.utf8_length(_digits_only(s.text)).to_numpy(zero_copy_only=False)
    return s.matches(r"^[0-9][0-9 \-]{11,24}[0-9]$") & (ndigits >= 13) & (ndigits <= 19)


def _pan(s: _Sample) -> np.ndarray:
    return _pan_shape(s) & luhn_valid(_digits_only(s.text))


def iban_valid(values: pa.Array) -> np.ndarray:
    """Whether each string is an IBAN with valid ISO 7064 mod-97 check digits (spaces allowed)."""
    compact = pc.utf8_upper(pc.replace_substring(values, " ", ""))
    ok = _np(pc.match_substring_regex(compact, r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$"))
    out = np.zeros(len(values), dtype=bool)
    if not ok.any():
        return out
    kept = compact.filter(pa.array(ok))
    moved = pc.binary_join_element_wise(pc.utf8_slice_codeunits(kept, 4), pc.utf8_slice_codeunits(kept, 0, 4), "")
    chars = _digit_matrix(moved, 34).astype(np.int64)
    letter = chars >= 65
    value = np.where(letter, chars - 55, chars - 48)
    remainder = np.zeros(len(kept), dtype=np.int64)
    for j in range(chars.shape[1]):
        remainder = (remainder * np.where(letter[:, j], 100, 10) + value[:, j]) % 97
    out[ok] = remainder == 1
    return out


def _iban(s: _Sample) -> np.ndarray:
    return iban_valid(s.text)


def _iban_shape(s: _Sample) -> np.ndarray:
    return s.matches(r"^[A-Za-z]{2}[0-9]{2}[A-Za-z0-9 ]{11,40}$")


def _ip(s: _Sample) -> np.ndarray:
    """IPv4/IPv6 literals: regex candidates of the sample, then ``ipaddress`` on each."""
    candidate = s.matches(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$") | s.matches(r"^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$")
    out = np.zeros(len(s.raw), dtype=bool)
    where = np.flatnonzero(candidate)
    for i, value in zip(where.tolist(), s.text.take(pa.array(where)).to_pylist()):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            continue
        out[i] = True
    return out


def _in_list(words: pa.Array, names: pa.Array) -> np.ndarray:
    return _np(pc.is_in(words, value_set=names))


def _first_name(s: _Sample) -> np.ndarray:
    return _in_list(pc.utf8_trim_whitespace(s.text), _name_list("first_names"))


def _last_name(s: _Sample) -> np.ndarray:
    return _in_list(pc.utf8_trim_whitespace(s.text), _name_list("last_names"))


def _person_name(s: _Sample) -> np.ndarray:
    """``First Last`` or ``First M. Last``: a listed first name and a listed last name."""
    title = r"(?:(?:Mr|Mrs|Ms|Dr|Miss)\.?\s+)?"
    pattern = rf"^{title}(?P<first>{_LETTER}+)\s+(?:.*\s)?(?P<last>{_LETTER}(?:{_LETTER}|['\-])*)$"
    parts = pc.extract_regex(s.text, pattern)
    return (_in_list(pc.struct_field(parts, "first"), _name_list("first_names"))
            & _in_list(pc.struct_field(parts, "last"), _name_list("last_names")))


def _street(s: _Sample) -> np.ndarray:
    """A house number, words, and a street suffix (``12 Kathryn Park``, ``4 Elm St.``)."""
    return s.matches(rf"(?i)^\d{{1,5}}[a-z]?,?\s+(\S+\s+)+({_street_suffixes()})\.?$")


def _looks_like_address(s: _Sample) -> np.ndarray:
    return s.matches(rf"^({_LETTER}|[0-9])({_LETTER}|[0-9 .,'’#/\-])*$") & s.matches(_LETTER)


def _postcode(s: _Sample) -> np.ndarray:
    return s.matches(r"^[A-Za-z0-9][A-Za-z0-9 \-]{1,8}[A-Za-z0-9]$") & s.matches(r"[0-9]")


def _device(s: _Sample) -> np.ndarray:
    return s.matches(_MAC)


def _device_like(s: _Sample) -> np.ndarray:
    return s.matches(r"^[0-9A-Fa-f:\-]{12,}$") | s.matches(r"^[A-Za-z0-9+/=_\-]{16,}$")


def _generic_id(s: _Sample) -> np.ndarray:
    return s.matches(r"^[A-Za-z0-9][A-Za-z0-9 ./\-]{3,24}$") & s.matches(r"[0-9]")


def _birth_date(s: _Sample) -> np.ndarray:
    """A date between 1900 and today (from a date type, or date-shaped text)."""
    raw = s.raw
    if pa.types.is_date(raw.type) or pa.types.is_timestamp(raw.type):
        years = pc.year(raw).to_numpy(zero_copy_only=False)
        return (years >= 1900) & (years <= dt.date.today().year)
    return s.matches(_DATE_TEXT)


def _geo(s: _Sample) -> np.ndarray:
    x = pc.cast(s.raw, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    limit = 90.0 if "lat" in s.tokens else 180.0
    return np.isfinite(x) & (np.abs(x) <= limit)


def _city(s: _Sample) -> np.ndarray:
    return s.matches(_NAME_SHAPE)


def _name_shape(s: _Sample) -> np.ndarray:
    return s.matches(_NAME_SHAPE)


def _embedded(s: _Sample) -> np.ndarray:
    """Multi-word text with an email, SSN, international phone or card number inside."""
    hit = np.zeros(len(s.raw), dtype=bool)
    for pattern in _EMBEDDED:
        hit |= s.matches(pattern)
    return hit & s.matches(r"\S\s+\S")


@lru_cache(maxsize=2)
def _name_list(attr: str) -> pa.Array:
    """First or last names from faker's person providers of a few locales (offline, bundled)."""
    names: set[str] = set()
    for locale in ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL"):
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        names.update(getattr(provider, attr, ()))
    return pa.array(sorted(n for n in names if len(n) > 1))


@lru_cache(maxsize=1)
def _street_suffixes() -> str:
    provider = importlib.import_module("faker.providers.address.en_US").Provider
    words = set(provider.street_suffixes) | {"St", "Ave", "Rd", "Ln", "Dr", "Blvd", "Ct", "Pl", "Sq", "Hwy", "Way"}
    return "|".join(sorted(re.escape(w) for w in words))


# -------------------------------------------------------------------------- tags

_TEXT, _INT, _FLOAT, _TEMPORAL, _BINARY = "text", "int", "float", "temporal", "binary"
Check = Callable[[_Sample], np.ndarray]


@dataclass(frozen=True)
class _Tag:
    """A PII tag: the name phrases that suggest it, the column kinds it can live in,
    a strict value check usable without name evidence (``detect``, with the share of
    the sample it must reach) and a looser one that confirms name evidence (shape
    only: a column named ``card_number`` holding Luhn-invalid test numbers is still
    card numbers)."""

    name: str
    phrases: tuple[tuple[str, ...], ...]
    kinds: frozenset[str]
    confirm: Check | None
    detect: Check | None = None
    detect_min: float = 0.5
    overrides: bool = True
    """Whether ``detect`` is specific enough to overrule another tag's name evidence
    (an IBAN checksum is; a name list is not: names are also surnames and streets)."""


def _p(*phrases: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(p.split()) for p in phrases)


_T, _TI = frozenset({_TEXT}), frozenset({_TEXT, _INT})
TAGS: tuple[_Tag, ...] = (  # priority order: the first tag whose phrase matches wins
    _Tag("email", _p("email", "e mail"), _T, _email, _email),
    _Tag("ip_address", _p("ip", "ipv4", "ipv6", "remote address", "ip address"), _T, _ip, _ip),
    _Tag("device_id", _p("fingerprint", "imei", "udid", "idfa", "gaid", "mac address", "device id",
                         "device token", "advertising id", "user agent"), frozenset({_TEXT, _BINARY}),
         _device_like, _device),
    _Tag("iban", _p("iban"), _T, _iban_shape, _iban),
    _Tag("pan", _p("pan", "card number", "cc number", "credit card", "ccn", "primary account number"),
         _TI, _pan_shape, _pan),
    _Tag("national_id", _p("ssn", "social security", "national id", "national number", "national insurance",
                           "nino", "tax id", "tax number", "taxpayer id", "passport", "driver license",
                           "drivers license", "driving licence", "driving license", "id number", "id card",
                           "personal number", "nid", "bsn", "cpf", "aadhaar", "nif"), _TI, _generic_id, _national_id),
    _Tag("date_of_birth", _p("date of birth", "dob", "birth date", "birthdate", "birthday", "born"),
         frozenset({_TEMPORAL, _TEXT}), _birth_date),
    _Tag("phone", _p("phone", "mobile", "msisdn", "fax", "phone number", "contact number"), _TI,
         lambda s: _phone(s, loose=True), _phone),
    _Tag("postcode", _p("postcode", "post code", "postal code", "postal", "zip", "zip code", "plz"), _TI, _postcode),
    _Tag("city", _p("city", "town", "municipality", "locality"), _T, _city),
    _Tag("first_name", _p("first name", "given name", "middle name"), _T, _name_shape, _first_name, 0.8, False),
    _Tag("last_name", _p("last name", "family name", "maiden name"), _T, _name_shape, _last_name, 0.8, False),
    _Tag("person_name", _p("full name", "person name", "cardholder", "card holder", "account holder",
                           "holder name", "contact name", "customer name", "display name"),
         _T, _name_shape, _person_name, 0.8, False),
    _Tag("street_address", _p("street", "address", "address line", "house number"), _T,
         _looks_like_address, _street, 0.8, False),
    _Tag("geo", _p("lat", "lon", "geo", "coordinates", "geolocation"), frozenset({_FLOAT}), _geo),
    _Tag("free_text", _p("note", "notes", "comment", "comments", "remark", "remarks", "memo", "free text"),
         _T, _embedded, _embedded, 0.0, False),
)
_BY_NAME = {t.name: t for t in TAGS}
PII_TAGS: tuple[str, ...] = tuple(t.name for t in TAGS)


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    words = {w for t in TAGS for p in t.phrases for w in p} | set(_SYNONYMS) | set(_FILLERS) | _PERSON_WORDS
    return frozenset(words)


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if is_text(t):
        return _TEXT
    if pa.types.is_integer(t):
        return _INT
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return _FLOAT
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return _TEMPORAL
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return _BINARY
    return None


def _name_tag(tokens: tuple[str, ...], table_tokens: tuple[str, ...], kind: str) -> tuple[_Tag | None, bool]:
    """The tag the name points to and whether that evidence is weak (a bare ``name``
    column with no person word in the table or column name)."""
    for tag in TAGS:
        if kind in tag.kinds and any(_has_phrase(tokens, p) for p in tag.phrases):
            return tag, False
    if kind == _TEXT and "name" in tokens:
        words = (*tokens, *table_tokens) if tokens == ("name",) else tokens  # products.name vs customers.name
        return _BY_NAME["person_name"], not ({_singular(w) for w in words} & _PERSON_WORDS)
    return None, False


_CONTRADICTS = 20
"""Sampled values needed before 'none of them fits' overrules name evidence."""


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else 0.0


Verdict = tuple[str | None, float, By | None, float]


def _classify(table_name: str, sample: _Sample, kind: str | None) -> Verdict:
    """(tag, confidence, by, matched share) of one column."""
    if kind is None:
        return None, 0.0, None, 0.0
    tag, weak = _name_tag(sample.tokens, name_tokens(table_name), kind)
    have_values = len(sample.raw) > 0
    best, best_share = None, 0.0
    if have_values:
        for candidate in TAGS:
            if candidate.detect is not None and kind in candidate.kinds:
                share = _share(candidate.detect(sample))
                if share > best_share and share >= max(candidate.detect_min, 1e-9):
                    best, best_share = candidate, share
    if tag is not None and not weak:
        if not have_values or tag.confirm is None:
            return tag.name, 0.5, "name", 0.0
        share = _share(tag.confirm(sample))
        if tag.name == "free_text":
            return _free_text(sample, share)
        if best is not None and best is not tag and best.overrides and best_share >= max(0.8, share):
            return best.name, _values_confidence(best_share), "values", best_share
        if share >= 0.5:
            return tag.name, round(min(0.99, 0.7 + 0.3 * share), 3), "both", share
        if share > 0 or len(sample.raw) < _CONTRADICTS:
            return tag.name, 0.35, "name", share
        tag = None  # not one value of a fair sample fits (mobile_os = 'iOS'): the name misled
    if tag is not None and best is tag:
        return tag.name, round(min(0.99, 0.7 + 0.3 * best_share), 3), "both", best_share
    if best is not None:
        return best.name, _values_confidence(best_share), "values", best_share
    return None, 0.0, None, 0.0


def _free_text(sample: _Sample, share: float) -> Verdict:
    """A notes-like column: PII found inside its text makes it certain; prose without
    hits in the sample is still flagged (a sample can miss the one leaking row)."""
    if share > 0:
        return "free_text", round(min(0.99, 0.8 + share), 3), "both", share
    if _share(sample.matches(r"\S\s+\S+\s+\S")) >= 0.5:
        return "free_text", 0.3, "name", 0.0
    return None, 0.0, None, 0.0


def _values_confidence(share: float) -> float:
    return round(0.4 + 0.55 * share, 3)


def _is_key(tokens: tuple[str, ...], kind: str | None) -> bool:
    """Integer or text columns named ``id`` or ``..._id`` / ``...Id``."""
    return kind in (_INT, _TEXT) and bool(tokens) and tokens[-1] == "id"


def key_domain(table_name: str, column: str) -> str:
    """The token domain of a key column: ``customer_id`` -> ``customer``; a bare ``id``
    takes its table's singular name (``customers.id`` -> ``customer``), so a primary key
    and the foreign keys naming it tokenize alike."""
    tokens = name_tokens(column)[:-1]
    if not tokens:
        tokens = name_tokens(table_name)
        tokens = (*tokens[:-1], _singular(tokens[-1])) if tokens else ("default",)
    return "_".join(tokens)


# ------------------------------------------------------------------------- rules


def propose_rule(tag: str | None, table_name: str, column: str, arrow_type: pa.DataType) -> Rule:
    """The masking rule proposed for a column with ``tag``; parameters are those of
    ``masking.functions`` (checked by its tests), chosen so the column keeps its type."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    text = is_text(arrow_type)
    temporal = pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type)
    if tag is None:
        return "keep"
    if tag == KEY_TAG:
        return {"fn": "hmac_token", "domain": key_domain(table_name, column)}
    fake = {"email": "email", "phone": "phone", "first_name": "first_name", "last_name": "last_name",
            "person_name": "name", "street_address": "street_address", "city": "city"}
    if tag in fake and text:
        return {"fn": "fake", "kind": fake[tag]}
    if tag == "pan" and text:
        return {"fn": "fpe", "luhn": True, "keep_prefix": 6, "domain": "pan"}
    if tag == "iban" and text:
        return {"fn": "fpe", "alphabet": "upper36", "keep_prefix": 2, "domain": "iban"}
    if tag == "postcode":
        return {"fn": "generalize", "prefix": 3, "fill": "*"} if text else {"fn": "generalize", "bucket": 100}
    if tag == "date_of_birth" and temporal:
        return {"fn": "generalize", "unit": "year"}
    if tag == "geo":
        return {"fn": "generalize", "bucket": 0.1}
    if tag in ("national_id", "free_text", "date_of_birth"):
        return {"fn": "redact"}
    domain = {"ip_address": "ip", "device_id": "device"}.get(tag, tag)
    return {"fn": "hmac_token", "domain": domain}


# -------------------------------------------------------------------------- scan


def _shapes(values: pa.Array, n: int = 3) -> list[str]:
    """Up to ``n`` distinct value shapes: digits -> 9, capitals -> A, other letters -> a."""
    text = values if is_text(values.type) else pc.cast(values, pa.string())
    head = pc.unique(pc.utf8_slice_codeunits(text.slice(0, 256), 0, 40)).to_pylist()
    shapes = ("".join("9" if c.isdigit() else "A" if c.isupper() else "a" if c.isalpha() else c for c in v)
              for v in head)
    return list(dict.fromkeys(shapes))[:n]


def _sample_rows(num_rows: int, sample: int, seed: int) -> np.ndarray | None:
    if sample <= 0:
        raise ConfigError(f"pii scan: sample must be positive, got {sample}")
    if num_rows <= sample:
        return None
    return np.sort(np.random.default_rng(seed).choice(num_rows, sample, replace=False))


def scan_table(table_name: str, table: pa.Table, *, sample: int = 2000, seed: int = 0) -> list[ColumnFinding]:
    """Classify every column of ``table`` from its name and a seeded sample of ``sample``
    rows (the same rows for every column); findings in column order."""
    rows = _sample_rows(table.num_rows, sample, seed)
    sampled = table if rows is None else table.take(pa.array(rows))
    findings = []
    for index, f in enumerate(table.schema):
        column = f.name
        values = as_array(sampled.column(index))
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        kind = _kind(values.type)
        s = _Sample(values.drop_null() if kind is not None else values, name_tokens(column))
        tag, confidence, by, share = _classify(table_name, s, kind)
        if tag is None and _is_key(s.tokens, kind):
            tag, confidence, by = KEY_TAG, 0.9, "name"
        findings.append(ColumnFinding(
            table=table_name, column=column, tag=tag, confidence=confidence, by=by,
            matched_share=round(share, 4), examples_masked=_shapes(s.raw) if kind is not None else [],
            rule=propose_rule(tag, table_name, column, f.type), type=str(f.type),
        ))
    return findings


def scan_tables(tables: Mapping[str, pa.Table], *, sample: int = 2000, seed: int = 0) -> list[ColumnFinding]:
    """``scan_table`` over many tables, in table-name order."""
    return [f for name in sorted(tables) for f in scan_table(name, tables[name], sample=sample, seed=seed)]


def finding_tags(findings: Iterable[ColumnFinding]) -> dict[str, list[str]]:
    """``{"table.column": [tag]}`` for tagged columns: the ``tags`` that ``Role.apply``
    and ``Role.validate_columns`` take, so ``[policies.X.tags]`` rules reach them."""
    return {f"{f.table}.{f.column}": [f.tag] for f in findings if f.tag is not None}


def policy_draft(findings: Iterable[ColumnFinding], policy_name: str) -> str:
    """A ``[policies.NAME.columns]`` TOML section with a rule for every scanned column
    (``"keep"`` included), tables in name order and columns in scan order, for a person
    to review and paste into ``microdb.toml``. Deterministic for the same findings."""
    if not policy_name:
        raise ConfigError("pii scan: the policy name of the draft must not be empty")
    ordered = sorted(findings, key=lambda f: f.table)
    twice = sorted(n for n, c in Counter(f"{f.table}.{f.column}" for f in ordered).items() if c > 1)
    if twice:
        raise ConfigError(f"pii scan: column(s) scanned twice, the draft would repeat keys: {', '.join(twice)}")
    lines = [tomli_w.dumps({"policies": {policy_name: {"columns": {}}}}).rstrip("\n")]
    for f in ordered:
        key = tomli_w.dumps({f"{f.table}.{f.column}": 0}).rsplit(" = ", 1)[0]
        lines.append(f"{key} = {_inline(f.rule)}")
    return "\n".join(lines) + "\n"


def _inline(rule: Rule) -> str:
    """A rule as a TOML value: a bare function name or an inline table (tomli_w writes
    nested tables as ``[sub.tables]``, one per column, which is harder to review)."""
    if isinstance(rule, str):
        return tomli_w.dumps({"v": rule}).split(" = ", 1)[1].strip()
    return "{ " + ", ".join(tomli_w.dumps({k: v}).strip() for k, v in rule.items()) + " }"
