"""k-anonymity: known k on constructed tables, nulls as a value, agreement with a plain
count, and the bank's customers before and after generalization."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from masking.functions import MaskContext, get_function
from masking.kanon import k_anonymity
from microdb.errors import ConfigError, SchemaError


def test_known_classes():
    # classes: (30, a) x3, (30, b) x4, (40, a) x5
    table = pa.table({
        "age": [30] * 7 + [40] * 5,
        "zip": ["a"] * 3 + ["b"] * 4 + ["a"] * 5,
        "salary": list(range(12)),
    })
    r = k_anonymity(table, ["age", "zip"])
    assert (r.k, r.classes, r.rows) == (3, 3, 12)
    assert r.smallest_classes[0] == {"age": 30, "zip": "a", "count": 3}
    assert [c["count"] for c in r.smallest_classes] == [3, 4, 5]
    assert r.share_below == {2: 0.0, 3: 0.0, 5: 7 / 12, 10: 1.0}
    assert k_anonymity(table, ["age"]).k == 5
    assert k_anonymity(table, ["salary"]).k == 1


def test_nulls_form_one_class_and_dictionaries_group_by_value():
    table = pa.table({
        "year": pa.array([None, None, 1980, 1980, None], pa.int32()),
        "city": pa.array(["x", "x", "x", "x", "x"]).dictionary_encode(),
    })
    r = k_anonymity(table, ["year", "city"])
    assert (r.k, r.classes) == (2, 2)
    assert {"year": None, "city": "x", "count": 3} in r.smallest_classes


def test_empty_table_and_errors():
    table = pa.table({"a": pa.array([], pa.int64())})
    r = k_anonymity(table, ["a"])
    assert (r.k, r.classes, r.rows, r.smallest_classes) == (0, 0, 0, [])
    with pytest.raises(SchemaError, match="nope"):
        k_anonymity(table, ["a", "nope"])
    with pytest.raises(ConfigError):
        k_anonymity(table, [])
    with pytest.raises(ConfigError):
        k_anonymity(table, ["a"], thresholds=[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 3)), st.sampled_from(["p", "q", None])),
                min_size=1, max_size=60))
def test_agrees_with_a_plain_count(rows):
    table = pa.table({
        "a": pa.array([r[0] for r in rows], pa.int64()),
        "b": pa.array([r[1] for r in rows], pa.string()),
    })
    counts = Counter(rows)
    r = k_anonymity(table, ["a", "b"], thresholds=[2, 4])
    assert r.k == min(counts.values())
    assert r.classes == len(counts)
    assert r.share_below[4] == sum(c for c in counts.values() if c < 4) / len(rows)
    assert [c["count"] for c in r.smallest_classes] == sorted(counts.values())[:5]


def _generalize(column: pa.ChunkedArray, **params) -> pa.Array:
    fn = get_function("generalize")
    return fn.apply(column, fn.parse(params), MaskContext(key=lambda purpose: bytes(32)))


def test_generalizing_bank_customers_raises_k():
    from fixtures.bank import generate

    crm = generate(customers=2000, seed=3)["crm"]
    addresses = crm["addresses"]
    home = addresses.filter(pc.equal(addresses["kind"], "home")).select(["customer_id", "postcode"])
    people = crm["customers"].join(home, "customer_id", join_type="inner").select(["date_of_birth", "postcode"])
    qis = ["date_of_birth", "postcode"]

    raw = k_anonymity(people, qis)
    by_year = k_anonymity(pa.table({
        "date_of_birth": _generalize(people["date_of_birth"], unit="year"),
        "postcode": _generalize(people["postcode"], prefix=1),
    }), qis)
    by_band = k_anonymity(pa.table({
        "date_of_birth": _generalize(people["date_of_birth"], age=True, band=10, reference_date=dt.date(2025, 1, 1)),
        "postcode": _generalize(people["postcode"], prefix=1),
    }), qis)

    assert raw.k == 1 and raw.share_below[2] > 0.9
    assert raw.classes > by_year.classes > by_band.classes
    assert raw.share_below[2] > by_year.share_below[2] > by_band.share_below[2]
    assert raw.k <= by_year.k < by_band.k
