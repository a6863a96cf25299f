"""Roles and policies: compilation errors, column resolution order, withheld columns, apply."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from masking.policy import MaskedTables, compile_policy
from microdb.errors import AccessDenied, PolicyError
from microdb.keys import Keyring

KEY = Keyring(bytes(range(32))).derive

ROLES = {
    "admin": {"raw": True},
    "analyst": {"policy": "analytics"},
    "tester": {"policy": "test", "detokenize": True},
}
POLICIES = {
    "base": {
        "columns": {
            "*.customer_id": {"fn": "hmac_token", "domain": "customer"},
            "customers.segment": "keep",
            "*.created_at": "keep",
        },
    },
    "analytics": {
        "extends": "base",
        "columns": {
            "customers.email": {"fn": "hmac_token"},
            "customers.national_id": {"fn": "redact"},
            "cards.pan": {"fn": "fpe", "luhn": True, "keep_prefix": 6},
            "*.created_at": {"fn": "generalize", "unit": "month"},
            "cust*.*": "redact",
        },
        "tags": {"email": {"fn": "hmac_token"}, "name": {"fn": "fake", "kind": "first_name"}},
    },
    "test": {
        "extends": "analytics",
        "columns": {"customers.national_id": {"fn": "partial", "keep_last": 2}},
    },
}


def tables() -> dict[str, pa.Table]:
    return {
        "customers": pa.table({
            "customer_id": pa.array([1, 2, 3]),
            "email": ["a@x.org", "b@x.org", "a@x.org"],
            "national_id": ["123-45-6789", "987-65-4321", None],
            "segment": ["gold", "silver", "gold"],
            "nickname": ["Al", "Bo", "Cy"],
            "created_at": pa.array([dt.date(2020, 5, 17)] * 3),
        }),
        "cards": pa.table({
            "customer_id": pa.array([1, 1, 2]),
            "pan": ["4111-1111-1111-1111", "5500000000000004", "340000000000009"],
            "new_col": [1, 2, 3],
            "holder": ["A", "B", "C"],
        }),
        "audit_notes": pa.table({"note": ["x"]}),
    }


@pytest.fixture(scope="module")
def policy_set():
    return compile_policy(ROLES, POLICIES)


def test_raw_role_sees_everything(policy_set):
    out = policy_set.role("admin").apply(tables(), KEY)
    assert out.withheld == [] and all(out.tables[n].equals(t) for n, t in tables().items())


def test_resolution_order_and_withheld_columns(policy_set):
    role = policy_set.role("analyst")
    assert role.resolve("customers", "email").fn.name == "hmac_token"  # exact
    assert role.resolve("customers", "customer_id").key == "*.customer_id"  # more literal glob beats cust*.*
    assert role.resolve("customers", "nickname").key == "cust*.*"
    assert role.resolve("customers", "created_at").fn.name == "generalize"  # child overrides parent
    assert role.resolve("cards", "holder", ["name"]).fn.name == "fake"  # tag
    assert role.resolve("customers", "nickname", ["name"]).key == "cust*.*"  # glob before tag
    assert role.resolve("cards", "new_col") is None

    out = role.apply(tables(), KEY, tags={"cards.holder": ["name"]})
    assert isinstance(out, MaskedTables)
    assert out.withheld == ["audit_notes.note", "cards.new_col"]
    assert out.withheld_tables == ["audit_notes"]
    assert "new_col" not in out.tables["cards"].column_names
    customers = out.tables["customers"]
    assert customers.column("segment").to_pylist() == ["gold", "silver", "gold"]
    assert customers.column("national_id").to_pylist() == ["***", "***", None]
    assert customers.column("nickname").to_pylist() == ["***"] * 3
    emails = customers.column("email").to_pylist()
    assert emails[0] == emails[2] != "a@x.org"
    assert customers.column("created_at").to_pylist() == [dt.date(2020, 5, 1)] * 3
    # the same customer_id tokenizes the same in both tables, so joins still work
    assert out.tables["cards"].column("customer_id").to_pylist()[0] == customers.column("customer_id").to_pylist()[0]
    assert out.tables["cards"].column("pan").to_pylist()[0][:7] == "4111-11"


def test_zero_row_tables(policy_set):
    empty = {name: t.slice(0, 0) for name, t in tables().items()}
    out = policy_set.role("analyst").apply(empty, KEY)
    assert out.tables["customers"].num_rows == 0
    assert out.tables["customers"].column_names == ["customer_id", "email", "national_id", "segment", "nickname", "created_at"]


def test_detokenize_needs_permission_and_a_reversible_function(policy_set):
    tester = policy_set.role("tester")
    masked = tester.apply(tables(), KEY).tables
    assert masked["customers"].column("national_id").to_pylist() == ["*********89", "*********21", None]
    pans = masked["cards"].column("pan")
    assert tester.detokenize("cards", "pan", pans, KEY).to_pylist() == tables()["cards"].column("pan").to_pylist()
    with pytest.raises(PolicyError, match="not reversible"):
        tester.detokenize("customers", "email", masked["customers"].column("email"), KEY)
    with pytest.raises(PolicyError, match="withheld"):
        tester.detokenize("cards", "new_col", pa.array([1]), KEY)
    with pytest.raises(AccessDenied, match="analyst"):
        policy_set.role("analyst").detokenize("cards", "pan", pans, KEY)


def test_unknown_role_lists_known_roles(policy_set):
    with pytest.raises(PolicyError, match="unknown role 'intern' \\(known: admin, analyst, tester\\)"):
        policy_set.role("intern")


def test_compile_collects_every_problem_at_once():
    roles = {
        "a": {"policy": "missing"},
        "b": {"raw": True, "policy": "p"},
        "c": {"policy": "loop1"},
        "d": {"policy": "p"},
    }
    policies = {
        "p": {"columns": {
            "customers.email": {"fn": "hmac_tokn"},
            "cards.pan": {"fn": "fpe", "luhn": True, "alphabet": "lower36"},
            "nodot": "keep",
            "customers.x": {"fn": "partial", "keep_last": "many"},
        }},
        "loop1": {"extends": "loop2"},
        "loop2": {"extends": "loop1"},
        "orphan": {"extends": "nobody"},
    }
    with pytest.raises(PolicyError) as info:
        compile_policy(roles, policies)
    problems = info.value.problems
    text = info.value.message
    assert len(problems) == 8, problems
    assert "role 'a': unknown policy 'missing'" in text
    assert "role 'b': " in text and "not both" in text
    assert "policy 'p' (role d), column 'customers.email': unknown masking function 'hmac_tokn'" in text
    assert "column 'cards.pan': fpe: luhn = true needs alphabet = 'digits'" in text
    assert "column 'nodot'" in text
    assert "column 'customers.x': partial: keep_last" in text
    assert "extends cycle loop1 -> loop2 -> loop1" in text
    assert "policy 'orphan': extends unknown policy 'nobody'" in text


def test_validate_columns_fails_closed_on_dangling_exact_rules(policy_set):
    role = policy_set.role("analyst")
    schema = {name: t.column_names for name, t in tables().items()}
    assert role.validate_columns(schema, tags={"cards.holder": ["name"]}) == ["audit_notes.note", "cards.new_col"]
    broken = dict(schema, customers=[c for c in schema["customers"] if c != "email"])
    with pytest.raises(PolicyError, match="customers.email: table 'customers' has no column 'email'"):
        role.validate_columns(broken)
    partial_schema = {"customers": schema["customers"]}
    with pytest.raises(PolicyError, match="cards.pan: no table 'cards'"):
        role.validate_columns(partial_schema)
    assert "customers.nickname" not in role.validate_columns(partial_schema, all_tables=False)
    assert policy_set.role("admin").validate_columns(schema) == []


def test_fingerprint_tracks_the_effective_policy(policy_set):
    analyst = policy_set.role("analyst").fingerprint()
    assert analyst == compile_policy(ROLES, POLICIES).role("analyst").fingerprint()
    assert analyst != policy_set.role("tester").fingerprint()
    assert analyst != policy_set.role("admin").fingerprint()
    changed = {**POLICIES, "analytics": {**POLICIES["analytics"], "columns": {
        **POLICIES["analytics"]["columns"], "cards.pan": {"fn": "fpe", "luhn": True, "keep_prefix": 4},
    }}}
    assert compile_policy(ROLES, changed).role("analyst").fingerprint() != analyst
    explicit_default = {**POLICIES, "analytics": {**POLICIES["analytics"], "columns": {
        **POLICIES["analytics"]["columns"], "customers.email": {"fn": "hmac_token", "domain": "default"},
    }}}
    assert compile_policy(ROLES, explicit_default).role("analyst").fingerprint() == analyst
