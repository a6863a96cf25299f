"""Masking functions: properties (determinism, bijection, bounds, round trips) and outputs."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from cryptography.hazmat.primitives import cmac as crypto_cmac
from cryptography.hazmat.primitives.ciphers import algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from masking.functions import MaskContext, function_names, get_function
from masking.functions.fpe import luhn_digit
from masking.functions.prf import IntPermutation, cmac
from masking.functions.textbuf import string_buffers
from microdb.errors import PolicyError
from microdb.keys import Keyring

KEYRING = Keyring(bytes(range(32)))


def ctx(table: str = "t", column: str = "c", entity_key: str | None = "customer/1", keyring: Keyring = KEYRING) -> MaskContext:
    return MaskContext(key=keyring.derive, table=table, column=column, entity_key=entity_key, role="tester")


def mask(name: str, values, context: MaskContext | None = None, **params) -> pa.Array:
    fn = get_function(name)
    out = fn.apply(values, fn.parse(params), context or ctx())
    assert len(out) == len(values)
    return out


def unmask(name: str, values, context: MaskContext | None = None, **params) -> pa.Array:
    fn = get_function(name)
    return fn.detokenize(values, fn.parse(params), context or ctx())


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    return int(luhn_digit(np.array([digits[:-1]], dtype=np.uint8))[0]) == digits[-1]


# --- registry --------------------------------------------------------------------------


def test_registry_lists_functions_and_reversibility():
    assert set(function_names()) >= {"keep", "redact", "partial", "hmac_token", "fpe", "fake", "generalize", "date_shift", "noise"}
    assert get_function("fpe").reversible
    assert not get_function("hmac_token").reversible
    with pytest.raises(PolicyError, match="unknown masking function 'nope'.*known: "):
        get_function("nope")
    with pytest.raises(PolicyError, match="partial: keep_last"):
        get_function("partial").parse({"keep_last": -1})
    with pytest.raises(PolicyError, match="colour: Extra inputs"):
        get_function("redact").parse({"colour": "red"})


@pytest.mark.parametrize("name,params,values", [
    ("keep", {}, pa.array([], pa.int64())),
    ("redact", {}, pa.array([], pa.string())),
    ("partial", {}, pa.array([], pa.string())),
    ("partial", {"preserve_separators": True}, pa.array([], pa.string())),
    ("hmac_token", {}, pa.array([], pa.string())),
    ("hmac_token", {}, pa.array([], pa.int64())),
    ("fpe", {}, pa.array([], pa.string())),
    ("fake", {"kind": "first_name"}, pa.array([], pa.string())),
    ("generalize", {"bucket": 10}, pa.array([], pa.int64())),
    ("date_shift", {}, pa.array([], pa.date32())),
    ("noise", {}, pa.array([], pa.float64())),
])
def test_empty_columns_work(name, params, values):
    assert len(mask(name, values, **params)) == 0


# --- keyed primitives ------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=30), st.binary(min_size=32, max_size=32))
def test_cmac_matches_cryptography(values, key):
    data, offsets = string_buffers(pa.array(values, pa.binary()))
    tags = cmac(key, data, offsets)
    for value, tag in zip(values, tags):
        ref = crypto_cmac.CMAC(algorithms.AES(key))
        ref.update(value)
        assert ref.finalize() == tag.tobytes()


@pytest.mark.parametrize("bits", [2, 7, 8, 15, 31, 32, 63, 64])
def test_int_permutation_is_a_bijection(bits):
    perm = IntPermutation(bytes(32), bits)
    if bits <= 16:
        x = np.arange(1 << bits, dtype=np.uint64)
    else:
        top = np.uint64((1 << bits) - 1)
        sample = np.random.default_rng(bits).integers(0, 2**64 - 1, 50_000, dtype=np.uint64, endpoint=True) & top
        x = np.unique(np.concatenate([sample, np.array([0, 1, top], dtype=np.uint64)]))
    y = perm.encrypt(x)
    assert len(np.unique(y)) == len(x)
    assert int(y.max()) < (1 << bits)
    assert (perm.decrypt(y) == x).all()
    if bits <= 16:
        assert sorted(y.tolist()) == x.tolist()


# --- hmac_token --------------------------------------------------------------------------


def test_hmac_token_int_is_collision_free_and_keeps_type_and_sign():
    rng = np.random.default_rng(7)
    extremes = np.array([0, 1, -1, 2**63 - 1, -(2**63), 2**62, -(2**62)], dtype=np.int64)
    values = np.unique(np.concatenate([rng.integers(-(2**63), 2**63 - 1, 200_000, dtype=np.int64), extremes]))
    out = mask("hmac_token", pa.array(values))
    assert out.type == pa.int64()
    tokens = out.to_numpy()
    assert len(np.unique(tokens)) == len(values)
    assert ((tokens < 0) == (values < 0)).all()
    again = mask("hmac_token", pa.array(values[::-1]))
    assert (again.to_numpy()[::-1] == tokens).all()


@pytest.mark.parametrize("t", [pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()])
def test_hmac_token_small_int_types_are_permuted_within_the_type(t):
    info = np.iinfo(t.to_pandas_dtype())
    values = np.arange(info.min, info.max + 1, dtype=np.int64) if t.bit_width <= 16 else np.unique(
        np.random.default_rng(1).integers(info.min, info.max, 100_000, dtype=t.to_pandas_dtype())
    )
    out = mask("hmac_token", pa.array(values).cast(t))
    assert out.type == t
    assert len(pc.unique(out)) == len(values)


def test_hmac_token_strings_are_unique_deterministic_and_fixed_length():
    values = pa.array([f"user{i}@example.com" for i in range(200_000)])
    out = mask("hmac_token", values)
    assert out.type == pa.string()
    assert len(pc.unique(out)) == 200_000
    assert set(pc.utf8_length(out).to_pylist()) == {24}
    assert mask("hmac_token", values.slice(1000, 10)).equals(out.slice(1000, 10))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), max_size=40))
def test_hmac_token_same_value_same_token(values):
    out = mask("hmac_token", pa.array(values, pa.string())).to_pylist()
    seen: dict[str, str] = {}
    for v, tok in zip(values, out):
        assert (v is None) == (tok is None)
        if v is not None:
            assert seen.setdefault(v, tok) == tok
    assert len(set(seen.values())) == len(seen)


def test_hmac_token_joins_across_tables_only_within_a_domain():
    values = pa.array([10, 20, 30])
    a = mask("hmac_token", values, ctx("customers", "id"), domain="customer")
    b = mask("hmac_token", values, ctx("accounts", "customer_id"), domain="customer")
    c = mask("hmac_token", values, ctx("accounts", "customer_id"), domain="other")
    d = mask("hmac_token", values, ctx(keyring=Keyring(bytes(32))), domain="customer")
    assert a.equals(b)
    assert not a.equals(c)
    assert not a.equals(d)


def test_hmac_token_options_and_other_types():
    out = mask("hmac_token", pa.array(["a", "b"]), alphabet="base32", length=20, prefix="tok_")
    assert all(v.startswith("tok_") and len(v) == 24 for v in out.to_pylist())
    assert set("".join(v[4:] for v in out.to_pylist())) <= set("abcdefghijklmnopqrstuvwxyz234567")
    dates = mask("hmac_token", pa.array([dt.date(2020, 1, 1), None, dt.date(2020, 1, 1)]))
    assert dates.type == pa.string() and dates[0] == dates[2] and dates[1].as_py() is None
    binary = mask("hmac_token", pa.array([b"\x00\x01", b"\x00\x01"]))
    assert binary.type == pa.binary() and binary[0] == binary[1]
    large = mask("hmac_token", pa.array(["a"], pa.large_string()))
    assert large.type == pa.large_string()
    chunked = pa.chunked_array([pa.array(["x", "y"]), pa.array(["x"])])
    assert mask("hmac_token", chunked).to_pylist()[0] == mask("hmac_token", chunked).to_pylist()[2]
    with pytest.raises(PolicyError):
        get_function("hmac_token").parse({"alphabet": "base32", "length": 30})


def test_distinct_and_repetitive_columns_take_the_same_path_results():
    rng = np.random.default_rng(3)
    distinct = pa.array([f"v{i}" for i in rng.permutation(100_000)])
    repeated = distinct.take(pa.array(rng.integers(0, 50, 100_000)))
    with_nulls = pa.array([None if i % 7 == 0 else f"v{i}" for i in range(100_000)])
    for values in (distinct, repeated, with_nulls):
        whole = mask("hmac_token", values)
        small = mask("hmac_token", values.slice(0, 500))
        assert whole.slice(0, 500).equals(small)
    assert mask("hmac_token", with_nulls).null_count == with_nulls.null_count


# --- fpe --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.from_regex(r"\A[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{2,8}\Z"), min_size=1, max_size=20))
def test_fpe_round_trip_keeps_format(values):
    arr = pa.array(values)
    out = mask("fpe", arr)
    for before, after in zip(values, out.to_pylist()):
        assert len(after) == len(before)
        assert [c.isdigit() for c in after] == [c.isdigit() for c in before]
        assert [c for c in after if not c.isdigit()] == [c for c in before if not c.isdigit()]
    assert unmask("fpe", out).to_pylist() == values


def test_fpe_pan_keeps_bin_and_luhn_and_round_trips():
    pans = ["4111-1111-1111-1111", "5500 0000 0000 0004", "340000000000009", "6011000990139424"]
    params = {"luhn": True, "keep_prefix": 6}
    out = mask("fpe", pa.array(pans + [None]), **params).to_pylist()
    assert out[-1] is None
    for before, after in zip(pans, out):
        assert after != before
        assert luhn_ok(after)
        assert [c for c in after if c.isdigit()][:6] == [c for c in before if c.isdigit()][:6]
        assert len(after) == len(before)
    assert unmask("fpe", pa.array(out), **params).to_pylist() == pans + [None]


def test_fpe_alphanumeric_keep_suffix_tweak_and_domain():
    values = pa.array(["GB82-WEST-1234-5698-7654-32", "DE89370400440532013000"])
    out = mask("fpe", values, alphabet="upper36", keep_suffix=4, tweak="iban")
    for before, after in zip(values.to_pylist(), out.to_pylist()):
        assert after[-4:] == before[-4:] and after != before
        assert all(c.isdigit() or c.isupper() or c == "-" for c in after)
    assert unmask("fpe", out, alphabet="upper36", keep_suffix=4, tweak="iban").equals(values)
    assert not mask("fpe", values, alphabet="upper36", keep_suffix=4, tweak="other").equals(out)
    assert not mask("fpe", values, alphabet="upper36", keep_suffix=4, tweak="iban", domain="d2").equals(out)
    lower = mask("fpe", pa.array(["abc123xyz9"]), alphabet="lower36")
    assert lower[0].as_py().isalnum() and lower[0].as_py().islower()


def test_fpe_refuses_small_domains():
    with pytest.raises(PolicyError, match=r"column t\.c: fpe: 1 value\(s\) have fewer than 6 .*1,000,000"):
        mask("fpe", pa.array(["123456789", "1234"]))
    with pytest.raises(PolicyError, match="fewer than 6"):
        mask("fpe", pa.array(["41111111111"]), keep_prefix=6, luhn=True)
    out = mask("fpe", pa.array(["123456789", "1234", "12-34"]), on_short="null")
    assert out[1].as_py() is None and out[2].as_py() is None and len(out[0].as_py()) == 9
    assert len(mask("fpe", pa.array(["123456"]))[0].as_py()) == 6  # exactly one million is allowed
    assert len(mask("fpe", pa.array(["abcd"]), alphabet="lower36")[0].as_py()) == 4  # 36^4 > 10^6


def test_fpe_parameter_and_type_errors():
    parse = get_function("fpe").parse
    with pytest.raises(PolicyError, match="luhn"):
        parse({"luhn": True, "alphabet": "lower36"})
    with pytest.raises(PolicyError, match="keep_suffix"):
        parse({"luhn": True, "keep_suffix": 4})
    with pytest.raises(PolicyError, match="alphabet"):
        parse({"alphabet": "aa"})
    with pytest.raises(PolicyError, match="needs a string column"):
        mask("fpe", pa.array([1234567]))


def test_fpe_ff3_mode_round_trips():
    values = pa.array(["890121234567890000", "4000-1234-5678-9010"])
    out = mask("fpe", values, mode="ff3")
    assert not out.equals(values)
    assert [len(v) for v in out.to_pylist()] == [len(v) for v in values.to_pylist()]
    assert not out.equals(mask("fpe", values))
    assert unmask("fpe", out, mode="ff3").equals(values)


# --- fake -------------------------------------------------------------------------------


def test_fake_is_stable_across_calls_tables_and_entities():
    values = pa.array([f"person{i}" for i in range(300)] + [None])
    first = mask("fake", values, ctx("a", "x", "customer/1"), kind="first_name")
    again = mask("fake", values, ctx("b", "y", "customer/2"), kind="first_name")
    assert first.equals(again)
    assert first[-1].as_py() is None
    assert len(set(first.to_pylist()[:-1])) > 100
    other_key = mask("fake", values, ctx(keyring=Keyring(bytes(32))), kind="first_name")
    assert sum(a != b for a, b in zip(first.to_pylist(), other_key.to_pylist())) > 200


def test_fake_name_and_email_look_real():
    values = pa.array(["alice", "bob", "alice"])
    names = mask("fake", values, kind="name").to_pylist()
    assert names[0] == names[2] and names[0] != names[1] and " " in names[0]
    emails = mask("fake", values, kind="email").to_pylist()
    assert emails[0] == emails[2]
    for e in emails:
        local, _, domain = e.partition("@")
        assert "." in local and domain.startswith("example.")
    ints = mask("fake", pa.array([1, 2, 1]), kind="last_name")
    assert ints.type == pa.string() and ints[0] == ints[2]
    with pytest.raises(PolicyError, match="unknown kind"):
        get_function("fake").parse({"kind": "spaceship"})
    with pytest.raises(PolicyError, match="locale"):
        get_function("fake").parse({"kind": "city", "locale": "xx_XX"})


# --- generalize, date_shift, noise, partial, redact -----------------------------------


def test_generalize_modes():
    assert mask("generalize", pa.array([31, 45, None, -1]), bucket=10).to_pylist() == [30, 40, None, -10]
    assert mask("generalize", pa.array([31, 45]), bucket=10, label=True).to_pylist() == ["30-39", "40-49"]
    assert mask("generalize", pa.array([31.5, 45.0]), bucket=10).to_pylist() == [30.0, 40.0]
    dec = mask("generalize", pa.array([decimal.Decimal("12.34")], pa.decimal128(5, 2)), bucket=5)
    assert dec.type == pa.decimal128(5, 2) and dec[0].as_py() == decimal.Decimal("10.00")
    days = pa.array([dt.date(2020, 5, 17), dt.date(2021, 12, 31)])
    assert mask("generalize", days, unit="month").to_pylist() == [dt.date(2020, 5, 1), dt.date(2021, 12, 1)]
    assert mask("generalize", days, unit="year").to_pylist() == [dt.date(2020, 1, 1), dt.date(2021, 1, 1)]
    stamps = pa.array([dt.datetime(2020, 5, 17, 13, 45)])
    assert mask("generalize", stamps, unit="day").to_pylist() == [dt.datetime(2020, 5, 17)]
    assert mask("generalize", pa.array(["75011", "1", None]), prefix=3).to_pylist() == ["750", "1", None]
    assert mask("generalize", pa.array(["75011"]), prefix=3, fill="*").to_pylist() == ["750**"]
    births = pa.array([dt.date(1990, 5, 17), dt.date(1990, 6, 2), dt.date(2000, 6, 1)])
    assert mask("generalize", births, age=True, reference_date="2024-06-01").to_pylist() == [34, 33, 24]
    assert mask("generalize", births, age=True, band=10, reference_date="2024-06-01").to_pylist() == ["30-39", "30-39", "20-29"]
    with pytest.raises(PolicyError, match="exactly one"):
        get_function("generalize").parse({"bucket": 10, "unit": "year"})
    with pytest.raises(PolicyError, match="whole number"):
        mask("generalize", pa.array([1]), bucket=2.5)
    with pytest.raises(PolicyError, match="needs a date"):
        mask("generalize", pa.array([1]), unit="year")


def test_date_shift_keeps_intervals_within_an_entity_and_differs_between_entities():
    dates = pa.array([dt.date(2020, 1, 1), dt.date(2020, 3, 15), None])
    stamps = pa.array([dt.datetime(2020, 1, 1, 8, 30), dt.datetime(2021, 1, 1)], pa.timestamp("us", tz="UTC"))
    shifts = set()
    for entity in [f"customer/{i}" for i in range(20)]:
        a = mask("date_shift", dates, ctx("accounts", "opened", entity), max_days=30)
        b = mask("date_shift", stamps, ctx("transactions", "at", entity), max_days=30)
        assert a.type == dates.type and b.type == stamps.type and a[2].as_py() is None
        delta = a[0].as_py() - dates[0].as_py()
        assert a[1].as_py() - a[0].as_py() == dates[1].as_py() - dates[0].as_py()
        assert b[0].as_py() - stamps[0].as_py() == delta
        assert b[1].as_py() - b[0].as_py() == stamps[1].as_py() - stamps[0].as_py()
        assert 1 <= abs(delta.days) <= 30
        assert mask("date_shift", dates, ctx("x", "y", entity), max_days=30).equals(a)
        shifts.add(delta.days)
    assert len(shifts) > 5
    with pytest.raises(PolicyError, match="entity key"):
        mask("date_shift", dates, ctx(entity_key=None))
    with pytest.raises(PolicyError, match="date or timestamp"):
        mask("date_shift", pa.array(["2020-01-01"]))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=-(10**12), max_value=10**12), min_size=1, max_size=50), st.floats(0.01, 0.5))
def test_noise_is_bounded_and_stable(values, relative):
    arr = pa.array(values, pa.int64())
    out = mask("noise", arr, relative=relative)
    assert out.type == pa.int64()
    for x, y in zip(values, out.to_pylist()):
        assert abs(y - x) <= relative * abs(x) + 0.5
    assert mask("noise", arr, relative=relative).equals(out)


def test_noise_keeps_types():
    floats = pa.array(np.linspace(1, 1000, 2000))
    out = mask("noise", floats, absolute=2.0).to_numpy()
    assert (np.abs(out - floats.to_numpy()) <= 2.0).all() and (out != floats.to_numpy()).mean() > 0.99
    decimals = pa.array([decimal.Decimal("100.00"), decimal.Decimal("999.99"), None], pa.decimal128(5, 2))
    dec = mask("noise", decimals, relative=0.05)
    assert dec.type == pa.decimal128(5, 2) and dec[2].as_py() is None
    assert abs(dec[0].as_py() - decimal.Decimal("100")) <= decimal.Decimal("5.01")
    assert dec[1].as_py() <= decimal.Decimal("999.99")
    small = mask("noise", pa.array([127, -128, 5], pa.int8()), relative=0.9)
    assert small.type == pa.int8()
    assert mask("noise", pa.array([2**63 - 1]), relative=0.5)[0].as_py() <= 2**63 - 1
    with pytest.raises(PolicyError, match="numeric"):
        mask("noise", pa.array(["a"]))


def test_partial_masks_and_preserves_separators():
    values = pa.array(["4111-1111-1111-1234", "12", "héllo wörld", None, ""])
    assert mask("partial", values).to_pylist() == ["***************1234", "**", "*******örld", None, ""]
    assert mask("partial", values, preserve_separators=True).to_pylist() == [
        "****-****-****-1234", "**", "***** *örld", None, ""
    ]
    assert mask("partial", pa.array(["ABCDEFGH"]), keep_first=2, keep_last=2, mask_char="#").to_pylist() == ["AB####GH"]
    assert mask("partial", pa.array([123456789])).to_pylist() == ["*****6789"]


def test_redact_and_keep():
    assert mask("redact", pa.array(["a", None])).to_pylist() == ["***", None]
    assert mask("redact", pa.array(["a"]), value="[x]").to_pylist() == ["[x]"]
    assert mask("redact", pa.array(["a"]), null=True).to_pylist() == [None]
    nums = mask("redact", pa.array([1, 2]))
    assert nums.type == pa.int64() and nums.null_count == 2
    assert mask("keep", pa.array([1, 2])).to_pylist() == [1, 2]


@pytest.mark.parametrize("kind", ["string_view", "dictionary", "chunked"])
def test_view_dictionary_and_chunked_inputs_mask_like_plain_strings(kind):
    plain = pa.array(["4111111111111111", "5500000000000004", None, "4111111111111111"])
    values = {
        "string_view": plain.cast(pa.string_view()),
        "dictionary": plain.dictionary_encode(),
        "chunked": pa.chunked_array([plain.slice(0, 1), plain.slice(1)]),
    }[kind]
    for name, params in [
        ("hmac_token", {}), ("partial", {}), ("partial", {"preserve_separators": True}), ("fpe", {}),
        ("fake", {"kind": "last_name"}), ("redact", {}), ("generalize", {"prefix": 3, "fill": "*"}),
    ]:
        assert mask(name, values, **params).to_pylist() == mask(name, plain, **params).to_pylist(), name
