"""PII scan: name tokens, value checks (Luhn, mod-97, IPs), evidence combination, the
bank fixture's precision and recall, a second schema with other names, and the policy
draft compiled and applied for real."""

from __future__ import annotations

import tomllib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from masking.functions.fpe import luhn_digit
from masking.pii import (
    KEY_TAG,
    PII_TAGS,
    ColumnFinding,
    finding_tags,
    iban_valid,
    luhn_valid,
    name_tokens,
    policy_draft,
    propose_rule,
    scan_table,
    scan_tables,
)
from masking.policy import compile_policy
from microdb.errors import ConfigError
from microdb.keys import Keyring

KEY = Keyring(bytes(range(32))).derive

BANK_PII = {
    "customers.first_name": "first_name",
    "customers.last_name": "last_name",
    "customers.email": "email",
    "customers.phone": "phone",
    "customers.national_id": "national_id",
    "customers.date_of_birth": "date_of_birth",
    "addresses.street": "street_address",
    "addresses.city": "city",
    "addresses.postcode": "postcode",
    "cards.pan": "pan",
    "accounts.iban": "iban",
    "transactions.ip_address": "ip_address",
    "transactions.lat": "geo",
    "transactions.lon": "geo",
    "devices.fingerprint": "device_id",
}
BANK_NOT_PII = [
    "transactions.amount", "transactions.currency", "transactions.channel", "transactions.ts",
    "transactions.is_fraud", "customers.segment", "customers.country_code", "customers.created_at",
    "accounts.status", "accounts.balance", "accounts.product", "accounts.currency", "accounts.opened_at",
    "merchants.mcc", "merchants.name", "countries.name", "cards.brand", "cards.expires", "cards.status",
    "addresses.kind", "consents.channel", "consents.granted", "devices.os", "devices.device_type",
]


def flat(grouped: dict[str, dict[str, pa.Table]]) -> dict[str, pa.Table]:
    return {name: table for group in grouped.values() for name, table in group.items()}


@pytest.fixture(scope="module")
def bank(bank_tables) -> dict[str, pa.Table]:
    return flat(bank_tables)


@pytest.fixture(scope="module")
def bank_findings(bank) -> dict[str, ColumnFinding]:
    return {f"{f.table}.{f.column}": f for f in scan_tables(bank)}


# ------------------------------------------------------------------ name tokens


@pytest.mark.parametrize("name, tokens", [
    ("cust_email_addr", ("customer", "email", "address")),
    ("EmailAddress", ("email", "address")),
    ("mobile_no", ("mobile", "number")),
    ("IPAddr", ("ip", "address")),
    ("dateOfBirth", ("date", "of", "birth")),
    ("zipcode", ("zip", "code")),
    ("SURNAME", ("last", "name")),
    ("creditcardnumber", ("credit", "card", "number")),
    ("address_line2", ("address", "line", "2")),
    ("ethnicity", ("ethnicity",)),
    ("nationality", ("nationality",)),
])
def test_name_tokens(name, tokens):
    assert name_tokens(name) == tokens


# ---------------------------------------------------------------- value checks


def luhn_pans(n: int, seed: int = 0) -> np.ndarray:
    """Valid 16-digit PANs as a (n, 16) digit matrix, check digits from fpe's luhn_digit."""
    body = np.random.default_rng(seed).integers(0, 10, (n, 15)).astype(np.uint8)
    body[:, 0] = 4
    return np.concatenate([body, luhn_digit(body)[:, None]], axis=1)


def as_strings(digits: np.ndarray) -> list[str]:
    return ["".join(map(str, row)) for row in digits.tolist()]


def make_iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    number = int("".join(str(int(c, 36)) for c in moved))
    return f"{country}{98 - number % 97:02d}{bban}"


def test_luhn_accepts_valid_and_rejects_near_misses():
    known = ["4111111111111111", "5500000000000004", "340000000000009", "6011111111111117",
             "4012888888881881", "378282246310005", "4222222222222"]
    assert luhn_valid(pa.array(known)).all()
    digits = luhn_pans(500)
    valid = as_strings(digits)
    assert luhn_valid(pa.array(valid)).all()
    bumped = digits.copy()
    bumped[:, -1] = (bumped[:, -1] + 1) % 10
    assert not luhn_valid(pa.array(as_strings(bumped))).any()
    swapped = digits.copy()
    swapped[:, [3, 4]] = swapped[:, [4, 3]]
    differs = (digits[:, 3] != digits[:, 4]) & ~np.isin(digits[:, 3] + digits[:, 4] * 10, [9, 90])
    assert not luhn_valid(pa.array(as_strings(swapped)))[differs].any()
    too_short_or_long = ["411111111111", "41111111111111111111", "4111x11111111111", ""]
    assert not luhn_valid(pa.array(too_short_or_long)).any()


def test_iban_mod97_accepts_valid_and_rejects_near_misses():
    known = ["GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606",
             "NL91ABNA0417164300", "GB82 WEST 1234 5698 7654 32", "gb82west12345698765432"]
    assert iban_valid(pa.array(known)).all()
    near = ["GB82WEST12345698765433", "GB28WEST12345698765432", "GB82WEST12345689765432", "GB81WEST12345698765432",
            "DE89370400440532013001", "XX82WEST", "GB82WEST1234569876543@", ""]
    assert not iban_valid(pa.array(near)).any()
    made = [make_iban("DE", f"{i:018d}") for i in range(1000, 1300)]
    assert iban_valid(pa.array(made)).all()
    for step in (-1, 1, 10):  # moves the remainder to 0, 2 and 11: every near miss of the check digits
        moved = [f"{s[:2]}{(int(s[2:4]) + step) % 100:02d}{s[4:]}" for s in made]
        assert not iban_valid(pa.array(moved)).any()


def test_ssn_rules_and_phone_shapes():
    valid = ["123-45-6789", "665-01-0001", "899-99-9999"]
    invalid = ["000-12-3456", "666-12-3456", "900-12-3456", "987-65-4321", "123-00-4567", "123-45-0000"]
    found = {f.column: f for f in scan_table("t", pa.table({
        "a": valid * 40, "b": invalid * 20, "c": ["+1 555 010 9999", "(555) 010-9999", "+44 20 7946 0000"] * 40,
    }))}
    assert (found["a"].tag, found["a"].by) == ("national_id", "values")
    assert found["b"].tag is None  # SSN-shaped but not valid SSNs, and not phone numbers either
    assert (found["c"].tag, found["c"].by) == ("phone", "values")


def test_near_miss_values_without_name_evidence_get_no_tag():
    digits = luhn_pans(300, seed=1)
    digits[:, -1] = (digits[:, -1] + 3) % 10
    ibans = [make_iban("GB", f"WEST{i:014d}") for i in range(300)]
    broken_ibans = [s[:-1] + str((int(s[-1]) + 1) % 10) for s in ibans]
    table = pa.table({"ref": as_strings(digits), "acct_ref": broken_ibans, "other": ibans})
    found = {f.column: f for f in scan_table("ledger", table)}
    assert found["ref"].tag is None and found["acct_ref"].tag is None
    assert found["other"].tag == "iban" and found["other"].by == "values"


def test_name_evidence_needs_values_of_the_right_shape_not_checksums():
    digits = luhn_pans(200, seed=2)
    digits[:, -1] = (digits[:, -1] + 5) % 10
    table = pa.table({
        "card_number": as_strings(digits),  # Luhn-invalid test numbers are still card numbers
        "ref": as_strings(digits),
        "mobile_os": ["iOS", "Android"] * 100,  # names can mislead: not one value fits
        "email": ["n/a"] * 150 + [f"u{i}@example.org" for i in range(50)],
    })
    found = {f.column: f for f in scan_table("t", table)}
    assert (found["card_number"].tag, found["card_number"].by) == ("pan", "both")
    assert found["ref"].tag is None
    assert found["mobile_os"].tag is None
    assert (found["email"].tag, found["email"].by, found["email"].confidence) == ("email", "name", 0.35)


# ------------------------------------------------------------ the bank fixture


@pytest.mark.parametrize("column, tag", sorted(BANK_PII.items()))
def test_bank_pii_columns_get_their_tag(bank_findings, column, tag):
    f = bank_findings[column]
    assert f.tag == tag, f
    assert f.by == "both" and f.confidence >= 0.9 and f.matched_share >= 0.95


@pytest.mark.parametrize("column", BANK_NOT_PII)
def test_bank_plain_columns_get_no_pii_tag(bank_findings, column):
    f = bank_findings[column]
    assert f.tag is None and f.rule == "keep", f


def test_bank_precision_recall_and_keys(bank_findings):
    flagged = {c for c, f in bank_findings.items() if f.pii}
    true_positive = flagged & set(BANK_PII)
    assert len(true_positive) / len(flagged) == 1.0  # precision
    assert len(true_positive) / len(BANK_PII) == 1.0  # recall
    keys = {c: f.rule["domain"] for c, f in bank_findings.items() if f.tag == KEY_TAG}
    assert keys["customers.customer_id"] == keys["accounts.customer_id"] == keys["addresses.customer_id"] == "customer"
    assert keys["transactions.account_id"] == keys["accounts.account_id"] == "account"
    assert keys["transactions.device_id"] == keys["devices.device_id"] == "device"
    assert all(c.endswith("_id") for c in keys)
    assert set(flagged) | set(keys) | {c for c, f in bank_findings.items() if f.tag is None} == set(bank_findings)


def test_examples_show_shapes_not_values(bank_findings):
    email = bank_findings["customers.email"]
    assert email.examples_masked and all("@" in e and not any(ch.isdigit() and ch != "9" for ch in e)
                                         for e in email.examples_masked)
    assert set("".join(email.examples_masked)) <= set("aA9@.-_+")
    assert bank_findings["cards.pan"].examples_masked[0] == "9" * 16


def test_sampling_is_seeded_and_bounded(bank):
    tx = bank["transactions"]
    a = scan_table("transactions", tx, sample=200, seed=5)
    b = scan_table("transactions", tx, sample=200, seed=5)
    assert a == b
    c = scan_table("transactions", tx, sample=200, seed=6)
    assert [f.tag for f in a] == [f.tag for f in c]
    with pytest.raises(ConfigError, match="sample"):
        scan_table("transactions", tx, sample=0)


# -------------------------------------------------------- a differently named schema


def other_schema(n: int = 400) -> dict[str, pa.Table]:
    from faker import Faker

    fake = Faker("en_GB")
    fake.seed_instance(11)
    rng = np.random.default_rng(11)
    first = [fake.first_name() for _ in range(n)]
    last = [fake.last_name() for _ in range(n)]
    pans = as_strings(luhn_pans(n, seed=3))
    notes = [f"called back, now uses {f.lower()}@example.net" if i % 20 == 0 else "prefers calls in the morning"
             for i, f in enumerate(first)]
    contacts = pa.table({
        "ContactID": pa.array(np.arange(1, n + 1)),
        "EmailAddress": [f"{f.lower()}.{l.lower()}{i}@example.org" for i, (f, l) in enumerate(zip(first, last))],
        "mobile_no": [f"+44 7700 9{i:05d}" for i in range(n)],
        "ssn": [f"{100 + i % 500:03d}-{1 + i % 98:02d}-{1000 + i:04d}" for i in range(n)],
        "cc_number": ["-".join(p[j:j + 4] for j in range(0, 16, 4)) for p in pans],
        "GivenName": first,
        "SURNAME": last,
        "BillingCity": [fake.city() for _ in range(n)],
        "zipCode": [fake.postcode() for _ in range(n)],
        "DOB": pa.array(rng.integers(-9000, 12000, n).astype("datetime64[D]")),
        "home_lat": rng.uniform(-60, 60, n),
        "home_lng": rng.uniform(-170, 170, n),
        "client_ip": [f"2001:db8::{i:x}" if i % 2 else f"10.0.{i // 256}.{i % 256}" for i in range(n)],
        "notes": notes,
        "col7": [f"user{i}@mail.example" for i in range(n)],
        "hw": [":".join(f"{(i * 7 + j) % 256:02x}" for j in range(6)) for i in range(n)],
        "c1": first,
        "address": [f"{f.lower()}@example.com" for f in first],
        "payout_address": [" ".join(s[j:j + 4] for j in range(0, len(s), 4))
                           for s in (make_iban("NL", f"ABNA{i:010d}") for i in range(n))],
        "Amount": rng.normal(100, 20, n),
        "StatusCode": rng.choice(["A", "B", "C"], n),
        "is_active": rng.random(n) < 0.5,
        "email_opt_in": rng.random(n) < 0.5,
        "emailed_at": pa.array(rng.integers(0, 10**9, n).astype("datetime64[s]")),
        "Score": rng.integers(0, 1000, n),
        "currency_code": rng.choice(["EUR", "GBP"], n),
    })
    employees = pa.table({"id": pa.array(np.arange(n)), "name": [f"{f} {l}" for f, l in zip(first, last)]})
    products = pa.table({"id": pa.array(np.arange(n)), "name": rng.choice(["Basic plan", "Gold card", "Saver"], n)})
    members = pa.table({"member_id": pa.array(np.arange(n)), "country_name": rng.choice(["France", "Spain"], n)})
    return {"crmContacts": contacts, "employees": employees, "products": products, "members": members}


OTHER_EXPECTED = {
    "crmContacts.EmailAddress": ("email", "both"),
    "crmContacts.mobile_no": ("phone", "both"),
    "crmContacts.ssn": ("national_id", "both"),
    "crmContacts.cc_number": ("pan", "both"),
    "crmContacts.GivenName": ("first_name", "both"),
    "crmContacts.SURNAME": ("last_name", "both"),
    "crmContacts.BillingCity": ("city", "both"),
    "crmContacts.zipCode": ("postcode", "both"),
    "crmContacts.DOB": ("date_of_birth", "both"),
    "crmContacts.home_lat": ("geo", "both"),
    "crmContacts.home_lng": ("geo", "both"),
    "crmContacts.client_ip": ("ip_address", "both"),
    "crmContacts.notes": ("free_text", "both"),
    "crmContacts.col7": ("email", "values"),
    "crmContacts.hw": ("device_id", "values"),
    "crmContacts.c1": ("first_name", "values"),
    "crmContacts.address": ("email", "values"),
    "crmContacts.payout_address": ("iban", "values"),
    "employees.name": ("person_name", "both"),
}


@pytest.fixture(scope="module")
def other_findings() -> dict[str, ColumnFinding]:
    return {f"{f.table}.{f.column}": f for f in scan_tables(other_schema())}


@pytest.mark.parametrize("column, expected", sorted(OTHER_EXPECTED.items()))
def test_other_schema_tags(other_findings, column, expected):
    f = other_findings[column]
    assert (f.tag, f.by) == expected, f
    assert f.confidence >= 0.85


@pytest.mark.parametrize("column", ["Amount", "StatusCode", "is_active", "email_opt_in", "emailed_at", "Score",
                                    "currency_code"])
def test_other_schema_plain_columns(other_findings, column):
    assert other_findings[f"crmContacts.{column}"].tag is None


def test_other_schema_keys_and_bare_name_columns(other_findings):
    assert other_findings["crmContacts.ContactID"].rule == {"fn": "hmac_token", "domain": "contact"}
    assert other_findings["employees.id"].rule == {"fn": "hmac_token", "domain": "employee"}
    assert other_findings["products.name"].tag is None
    assert other_findings["members.country_name"].tag is None


def test_evidence_combination():
    n = 500
    emails = [f"u{i}@example.org" for i in range(n)]
    junk = [f"row {i}" for i in range(n)]
    mixed_60 = [e if i % 10 < 6 else j for i, (e, j) in enumerate(zip(emails, junk))]
    mixed_90 = [e if i % 10 < 9 else j for i, (e, j) in enumerate(zip(emails, junk))]
    found = {f.column: f for f in scan_table("t", pa.table({
        "email": junk, "contact": emails, "c60": mixed_60, "c90": mixed_90, "c20": [j for j in junk],
    }))}
    assert found["email"].tag is None
    assert found["contact"].by == "values" and found["contact"].confidence >= 0.9
    assert found["c90"].tag == "email" and found["c90"].confidence >= 0.85
    assert found["c60"].tag == "email" and 0.5 < found["c60"].confidence < found["c90"].confidence
    assert found["c20"].tag is None
    nulls = pa.table({"email": pa.array([None] * 10, pa.string()), "phone": pa.array([None] * 10, pa.int64())})
    verdicts = [(f.tag, f.by, f.confidence) for f in scan_table("t", nulls)]
    assert verdicts == [("email", "name", 0.5), ("phone", "name", 0.5)]


def test_proposed_rules_keep_types():
    assert propose_rule("pan", "t", "pan", pa.int64()) == {"fn": "hmac_token", "domain": "pan"}
    assert propose_rule("date_of_birth", "t", "dob", pa.string()) == {"fn": "redact"}
    assert propose_rule("postcode", "t", "zip", pa.int32()) == {"fn": "generalize", "bucket": 100}
    assert propose_rule(None, "t", "x", pa.string()) == "keep"


# ------------------------------------------------------------------ policy draft


def test_policy_draft_compiles_and_masks_the_bank(bank, bank_findings):
    findings = list(bank_findings.values())
    draft = policy_draft(findings, "draft")
    assert draft == policy_draft(findings, "draft")
    assert "#" not in draft and draft.startswith("[policies.draft.columns]\n")
    columns = tomllib.loads(draft)["policies"]["draft"]["columns"]
    assert set(columns) == set(bank_findings)
    assert list(columns) == [f"{f.table}.{f.column}" for f in sorted(findings, key=lambda f: f.table)]

    role = compile_policy({"analyst": {"policy": "draft"}}, tomllib.loads(draft)["policies"]).role("analyst")
    out = role.apply(bank, KEY, tags=finding_tags(findings))
    assert out.withheld == [] and out.withheld_tables == []
    masked, raw = out.tables, bank
    assert not pc.any(pc.equal(masked["customers"]["email"], raw["customers"]["email"])).as_py()
    assert pc.all(pc.match_substring(masked["customers"]["email"], "@")).as_py()
    assert set(masked["customers"]["national_id"].to_pylist()) == {"***"}
    pans = masked["cards"]["pan"]
    assert luhn_valid(pans.combine_chunks()).all()
    assert pc.utf8_slice_codeunits(pans, 0, 6).equals(pc.utf8_slice_codeunits(raw["cards"]["pan"], 0, 6))
    assert not pc.any(pc.equal(pans, raw["cards"]["pan"])).as_py()
    assert not pc.any(pc.equal(masked["accounts"]["iban"], raw["accounts"]["iban"])).as_py()
    assert set(pc.day(masked["customers"]["date_of_birth"]).to_pylist()) == {1}
    customer_tokens = set(masked["customers"]["customer_id"].to_pylist())
    assert set(masked["accounts"]["customer_id"].to_pylist()) <= customer_tokens
    assert masked["customers"]["customer_id"] != raw["customers"]["customer_id"]
    assert masked["transactions"]["amount"].equals(raw["transactions"]["amount"])


def test_policy_draft_quotes_odd_names_and_refuses_empty_name():
    f = ColumnFinding("my table", 'we"ird.col', "email", 0.9, "values", 1.0, [], {"fn": "fake", "kind": "email"})
    draft = policy_draft([f], "p 1")
    columns = {'my table.we"ird.col': {"fn": "fake", "kind": "email"}}
    assert tomllib.loads(draft) == {"policies": {"p 1": {"columns": columns}}}
    with pytest.raises(ConfigError):
        policy_draft([f], "")
    with pytest.raises(ConfigError, match="twice"):
        policy_draft([f, f], "p")


def test_tags_reach_tag_rules_of_a_policy(bank_findings):
    policy = {"bytag": {"tags": {"email": {"fn": "redact"}, "pan": {"fn": "partial", "keep_last": 4}}}}
    role = compile_policy({"r": {"policy": "bytag"}}, policy).role("r")
    tags = finding_tags(bank_findings.values())
    assert role.resolve("customers", "email", tags["customers.email"]).fn.name == "redact"
    assert role.resolve("cards", "pan", tags["cards.pan"]).fn.name == "partial"
    assert "customers.segment" not in tags
    assert role.validate_columns({"customers": ["email", "segment"]}, tags=tags) == ["customers.segment"]


def test_every_tag_has_a_valid_rule_for_its_usual_type():
    from masking.functions import get_function

    usual = {"date_of_birth": pa.date32(), "geo": pa.float64()}
    for tag in (*PII_TAGS, KEY_TAG):
        rule = propose_rule(tag, "customers", "some_id", usual.get(tag, pa.string()))
        assert isinstance(rule, dict)
        get_function(rule["fn"]).parse({k: v for k, v in rule.items() if k != "fn"})
