"""Conditions (steer what is sampled) and constraints (rules every sampled row obeys).

A ``Condition`` asks that a share of a table's rows take a value
(``Condition("transactions", "is_fraud", True, 0.3)``); generators condition their model
on it and the share comes out exact. A ``Constraint`` is parsed from a short string:

* ``"transactions.ts >= accounts.opened_at"``: a column against a column of the same
  table or of an ancestor (``>=``, ``>``, ``<=``, ``<``), or against a literal
  (``"amount > 0"``, ``"ts >= '2016-01-01'"``);
* ``"customers.segment in ('retail', 'sme')"``: a value set;
* ``"unique(customers.email)"``.

Constraints are checked against the training data at fit time (a violated one is an
error) and enforced at sampling by adjusting values: out-of-range values are reflected
into range, values outside a set are redrawn, duplicates are made distinct.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import ConfigError
from synth.integrity import ancestor_rows
from synth.schema import SynthSchema
from synth.transform import from_numeric, is_numeric_type

US_PER_DAY = 86_400_000_000
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
_OPS = (">=", "<=", ">", "<")


@dataclass(frozen=True)
class Condition:
    """``share`` (0 < share <= 1) of the rows of ``table`` take ``column = value``.

    For a child table the share is of that table's generated rows."""

    table: str
    column: str
    value: object
    share: float = 1.0


@dataclass(frozen=True)
class Constraint:
    """A parsed constraint; ``parse_constraint`` builds it from text."""

    kind: str                       # "compare", "in" or "unique"
    table: str | None
    column: str
    op: str | None = None
    other_table: str | None = None
    other_column: str | None = None
    literal: object = None
    values: tuple = ()
    text: str = ""

    def __str__(self) -> str:
        return self.text


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_COLREF = rf"(?:{_IDENT}\.)?{_IDENT}"


def _split_ref(ref: str) -> tuple[str | None, str]:
    table, _, column = ref.rpartition(".")
    return (table or None), column


def _literal(text: str, source: str) -> object:
    cleaned = re.sub(r"\b(true|TRUE|True)\b", "True", text)
    cleaned = re.sub(r"\b(false|FALSE|False)\b", "False", cleaned)
    try:
        return ast.literal_eval(cleaned)
    except (ValueError, SyntaxError) as exc:
        raise ConfigError(f"constraint {source!r}: cannot read {text!r} as a literal") from exc


def parse_constraint(text: str) -> Constraint:
    """Parse one constraint string (see the module docstring for the forms)."""
    if isinstance(text, Constraint):
        return text
    source = text.strip()
    if m := re.fullmatch(rf"unique\s*\(\s*({_COLREF})\s*\)", source, flags=re.IGNORECASE):
        table, column = _split_ref(m.group(1))
        return Constraint("unique", table, column, text=source)
    if m := re.fullmatch(rf"({_COLREF})\s+in\s*\((.*)\)", source, flags=re.IGNORECASE | re.DOTALL):
        table, column = _split_ref(m.group(1))
        values = _literal("(" + m.group(2) + ",)", source)
        if not values:
            raise ConfigError(f"constraint {source!r}: empty value set")
        return Constraint("in", table, column, values=tuple(values), text=source)
    if m := re.fullmatch(rf"({_COLREF})\s*(>=|<=|>|<)\s*(.+)", source):
        table, column = _split_ref(m.group(1))
        rhs = m.group(3).strip()
        if re.fullmatch(_COLREF, rhs) and rhs.lower() not in ("true", "false"):
            other_table, other_column = _split_ref(rhs)
            return Constraint("compare", table, column, m.group(2), other_table, other_column, text=source)
        return Constraint("compare", table, column, m.group(2), literal=_literal(rhs, source), text=source)
    raise ConfigError(f"constraint {source!r}: not understood; use 'table.col >= table.col', 'col > 0', "
                      "\"table.col in ('a', 'b')\" or 'unique(table.col)'")


# ------------------------------------------------------------------ binding


def _resolve(schema: SynthSchema, types: Mapping[str, pa.Schema], table: str | None, column: str,
             source: str) -> str:
    if table is not None:
        if table not in types:
            raise ConfigError(f"constraint {source!r}: no table {table!r} in the entity tree ({sorted(types)})")
        if column not in types[table].names:
            raise ConfigError(f"constraint {source!r}: no column {table}.{column}")
        return table
    holders = [name for name in schema.names() if column in types[name].names]
    if len(holders) != 1:
        where = "no table has it" if not holders else f"ambiguous, in {holders}"
        raise ConfigError(f"constraint {source!r}: column {column!r}: {where}; qualify it as table.column")
    return holders[0]


def _is_time(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date(t)


def bind_constraint(c: Constraint | str, schema: SynthSchema, types: Mapping[str, pa.Schema]) -> Constraint:
    """Resolve tables, check columns and operand types; the result names every table."""
    c = parse_constraint(c) if isinstance(c, str) else c
    table = _resolve(schema, types, c.table, c.column, c.text)
    field_type = types[table].field(c.column).type
    if c.kind == "unique":
        return Constraint("unique", table, c.column, text=c.text)
    if c.kind == "in":
        try:
            pa.array(list(c.values)).cast(field_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(f"constraint {c.text!r}: values {c.values} do not fit {table}.{c.column} "
                              f"({field_type})") from exc
        return Constraint("in", table, c.column, values=c.values, text=c.text)
    if not is_numeric_type(field_type):
        raise ConfigError(f"constraint {c.text!r}: {table}.{c.column} ({field_type}) cannot be compared; "
                          "comparisons need numbers, dates or timestamps")
    if c.other_column is not None:
        other = _resolve(schema, types, c.other_table, c.other_column, c.text)
        if other not in schema.ancestors(table):
            raise ConfigError(f"constraint {c.text!r}: {other!r} is neither {table!r} nor one of its ancestors "
                              f"{schema.ancestors(table)[1:]}")
        other_type = types[other].field(c.other_column).type
        if not is_numeric_type(other_type) or _is_time(other_type) != _is_time(field_type):
            raise ConfigError(f"constraint {c.text!r}: {table}.{c.column} ({field_type}) and "
                              f"{other}.{c.other_column} ({other_type}) are not comparable")
        return Constraint("compare", table, c.column, c.op, other, c.other_column, text=c.text)
    literal = c.literal
    if _is_time(field_type):
        if not isinstance(literal, str):
            raise ConfigError(f"constraint {c.text!r}: compare {table}.{c.column} with a quoted date or timestamp")
        try:
            literal = float(np.datetime64(literal, "us").astype(np.int64))
        except ValueError as exc:
            raise ConfigError(f"constraint {c.text!r}: {c.literal!r} is not a date or timestamp") from exc
    elif isinstance(literal, bool) or not isinstance(literal, (int, float)):
        raise ConfigError(f"constraint {c.text!r}: {c.literal!r} is not a number")
    return Constraint("compare", table, c.column, c.op, literal=float(literal), text=c.text)


# ------------------------------------------------------------------ comparable values


def comparable(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 values on a common scale (times in microseconds since the epoch), NaN for null."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_timestamp(t):
        raw, scale = column.cast(pa.int64()), _US_PER_UNIT[t.unit]
    elif pa.types.is_date32(t):
        raw, scale = column.cast(pa.int32()), US_PER_DAY
    elif pa.types.is_date64(t):
        raw, scale = column.cast(pa.int64()), 1_000
    else:
        raw, scale = column.cast(pa.float64()), 1
    out = raw.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64) * scale
    if column.null_count:
        out[~pc.is_valid(column).to_numpy(zero_copy_only=False)] = np.nan
    return out


def _unit(t: pa.DataType) -> float:
    """Size of one step of type ``t`` on the comparable scale."""
    if pa.types.is_timestamp(t):
        return max(_US_PER_UNIT[t.unit], 1)
    if pa.types.is_date32(t):
        return US_PER_DAY
    if pa.types.is_date64(t):
        return 1_000
    if pa.types.is_integer(t):
        return 1
    if pa.types.is_decimal(t):
        return 10.0 ** -t.scale
    return 0.0


def from_comparable(x: np.ndarray, t: pa.DataType, upward: np.ndarray) -> pa.Array:
    """Back to type ``t``; where ``upward``, round up to the next representable value."""
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        step = _unit(t)
        scaled = x / step
        native = np.where(upward, np.ceil(scaled - 1e-9), np.floor(scaled + 1e-9))
        if pa.types.is_timestamp(t) and t.unit == "ns":
            native = x * 1_000
        return from_numeric(native, t)
    if pa.types.is_integer(t):
        return from_numeric(np.where(upward, np.ceil(x - 1e-9), np.floor(x + 1e-9)), t)
    if pa.types.is_decimal(t):
        s = 10.0 ** t.scale
        return from_numeric(np.where(upward, np.ceil(x * s - 1e-6), np.floor(x * s + 1e-6)) / s, t)
    return from_numeric(x, t)


# ------------------------------------------------------------------ checking and enforcing


def _compare(x: np.ndarray, op: str, bound: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        if op == ">=":
            return x >= bound
        if op == ">":
            return x > bound
        if op == "<=":
            return x <= bound
        return x < bound


def _bound(c: Constraint, schema: SynthSchema, tables: Mapping[str, pa.Table],
           parents: Mapping[str, np.ndarray | None]) -> np.ndarray:
    n = tables[c.table].num_rows
    if c.other_column is None:
        return np.full(n, c.literal, dtype=np.float64)
    other = comparable(tables[c.other_table].column(c.other_column))
    return other[ancestor_rows(schema, parents, c.table, c.other_table, n)]


def violations(c: Constraint, schema: SynthSchema, tables: Mapping[str, pa.Table],
               parents: Mapping[str, np.ndarray | None]) -> np.ndarray:
    """Rows of ``c.table`` breaking bound constraint ``c`` (nulls never break a comparison)."""
    column = tables[c.table].column(c.column)
    if c.kind == "unique":
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        codes = pc.dictionary_encode(column.combine_chunks()).indices.fill_null(-1).to_numpy(zero_copy_only=False)
        counts = np.bincount(codes[valid], minlength=1) if valid.any() else np.zeros(1, dtype=np.int64)
        dup = np.zeros(len(codes), dtype=bool)
        dup[valid] = counts[codes[valid]] > 1
        return dup
    if c.kind == "in":
        allowed = pa.array(list(c.values)).cast(column.type)
        inside = pc.is_in(column, value_set=allowed).to_numpy(zero_copy_only=False)
        return ~inside & pc.is_valid(column).to_numpy(zero_copy_only=False)
    x = comparable(column)
    bound = _bound(c, schema, tables, parents)
    checked = ~np.isnan(x) & ~np.isnan(bound)
    return checked & ~_compare(x, c.op, bound)


def check_training(constraints: Sequence[Constraint], schema: SynthSchema, tables: Mapping[str, pa.Table],
                   parents: Mapping[str, np.ndarray | None]) -> None:
    """Raise ConfigError naming every constraint the training data breaks."""
    problems = []
    for c in constraints:
        bad = violations(c, schema, tables, parents)
        if bad.any():
            example = tables[c.table].column(c.column).take(pa.array(np.nonzero(bad)[0][:3])).to_pylist()
            problems.append(f"{c.text!r} is broken by {int(bad.sum())} of {len(bad)} training rows of "
                            f"{c.table} (e.g. {c.column} = {example})")
    if problems:
        raise ConfigError("synth fit: the training data breaks constraints: " + "; ".join(problems))


def _set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i), values.cast(table.schema.field(i).type))


def enforce(c: Constraint, schema: SynthSchema, tables: dict[str, pa.Table],
            parents: Mapping[str, np.ndarray | None], rng: np.random.Generator,
            limits: Mapping[str, tuple[float, float]], weights: Mapping[str, tuple[pa.Array, np.ndarray]]) -> None:
    """Adjust ``tables[c.table]`` in place so that ``c`` holds on every row.

    Comparisons reflect a breaking value across the bound (``x' = b + (b - x)``), or put
    it on the bound when the reflection leaves the column's training range (``limits``);
    a value outside an ``in`` set is redrawn from the set (weighted by training shares
    when ``weights`` has them); duplicates get a distinguishing suffix or new numbers.
    """
    table = tables[c.table]
    bad = violations(c, schema, tables, parents)
    if not bad.any():
        return
    column = table.column(c.column).combine_chunks()
    t = column.type
    if c.kind == "in":
        allowed = pa.array(list(c.values)).cast(t)
        p = np.ones(len(allowed))
        if f"{c.table}.{c.column}" in weights:
            cats, shares = weights[f"{c.table}.{c.column}"]
            idx = pc.index_in(allowed, value_set=cats.cast(t)).fill_null(-1).to_numpy(zero_copy_only=False)
            learned = np.where(idx >= 0, shares[np.clip(idx, 0, None)], 0.0)
            if learned.sum() > 0:
                p = learned
        draw = allowed.take(pa.array(rng.choice(len(allowed), int(bad.sum()), p=p / p.sum())))
        fixed = pc.replace_with_mask(column, pa.array(bad), draw)
        tables[c.table] = _set_column(table, c.column, fixed)
        return
    if c.kind == "unique":
        tables[c.table] = _set_column(table, c.column, make_unique(column))
        return
    x = comparable(column)
    bound = _bound(c, schema, tables, parents)
    lo, hi = limits.get(f"{c.table}.{c.column}", (-np.inf, np.inf))
    step = _unit(t)
    up = c.op in (">=", ">")
    reflected = 2 * bound - x
    if up:
        reflected = np.where(reflected > hi, bound, reflected)
        if c.op == ">":
            reflected = np.maximum(reflected, bound + step) if step else np.nextafter(bound, np.inf)
    else:
        reflected = np.where(reflected < lo, bound, reflected)
        if c.op == "<":
            reflected = np.minimum(reflected, bound - step) if step else np.nextafter(bound, -np.inf)
    new = np.where(bad, reflected, x)
    fixed = from_comparable(new, t, np.full(len(new), up))
    keep = pa.array(~bad)
    tables[c.table] = _set_column(table, c.column, pc.if_else(keep, column, fixed))


def make_unique(column: pa.Array) -> pa.Array:
    """Give the second and later copies of a value a distinguishing variant."""
    for _ in range(8):
        encoded = pc.dictionary_encode(column)
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
        rank_sorted = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
        rank = np.empty_like(rank_sorted)
        rank[order] = rank_sorted
        dup = (rank > 0) & (codes >= 0)
        if not dup.any():
            return column
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            suffix = pc.cast(pa.array(rank + 1), pa.string())
            has_at = pc.match_substring(column, "@")
            local = pc.replace_substring_regex(column, r"@[^@]*$", "")
            domain = pc.replace_substring_regex(column, r"^.*(@[^@]*)$", r"\1")
            emailish = pc.binary_join_element_wise(local, ".", suffix, domain, "")
            plain = pc.binary_join_element_wise(column, "-", suffix, "")
            variant = pc.if_else(has_at, emailish, plain)
        elif is_numeric_type(column.type):
            values = comparable(column)
            top = np.nanmax(values) if len(values) else 0.0
            step = _unit(column.type) or 1.0
            variant = from_comparable(top + step * np.cumsum(dup), column.type, np.ones(len(values), dtype=bool))
        else:
            raise ConfigError(f"unique(): cannot make {column.type} values distinct")
        column = pc.if_else(pa.array(dup), variant, column)
    raise ConfigError("unique(): could not make values distinct")


_CONDITION = re.compile(r"^\s*([A-Za-z_][\w$]*)\.([A-Za-z_][\w$]*)\s*=\s*(.+?)\s*$")


def parse_condition(text: str, share: float = 1.0) -> Condition:
    """``"transactions.is_fraud=1"`` or ``"customers.segment = 'sme'"`` with a share of rows."""
    m = _CONDITION.match(text)
    if not m:
        raise ConfigError(f"condition {text!r}: write TABLE.COLUMN=VALUE (e.g. transactions.is_fraud=1)")
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"condition {text!r}: share {share} must be in (0, 1]")
    raw = m.group(3)
    try:
        value = _literal(raw, text)
    except ConfigError:
        value = raw  # a bare word: a string value
    return Condition(m.group(1), m.group(2), value, float(share))
