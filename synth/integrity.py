"""Referential integrity of generated entity slices: keys unique, every foreign key found.

``match_rows`` is the one vectorized join that links child rows to parent rows; the
generators use it on training data and ``check_integrity`` on their output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import SchemaError
from synth.schema import SynthSchema

_ROW = "__synth_row"
_REF = "__synth_ref"


def match_rows(child: pa.Table, child_columns: tuple[str, ...], parent: pa.Table,
               parent_columns: tuple[str, ...]) -> np.ndarray:
    """For each child row, the index of the parent row with equal key values (-1: none or null).

    One hash join; when several parent rows match, the first one wins.
    """
    if len(child_columns) != len(parent_columns):
        raise SchemaError(f"match_rows: {child_columns} vs {parent_columns} differ in length")
    names = [f"__k{i}" for i in range(len(child_columns))]
    left = pa.table([child.column(c) for c in child_columns] + [pa.array(np.arange(child.num_rows))],
                    names=names + [_ROW])
    right_cols = []
    for c_name, p_name in zip(child_columns, parent_columns):
        column = parent.column(p_name)
        wanted = child.schema.field(c_name).type
        if column.type != wanted:
            try:
                column = column.cast(wanted)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"match_rows: cannot compare {c_name} ({wanted}) with {p_name} "
                                  f"({column.type})") from exc
        right_cols.append(column)
    right = pa.table(right_cols + [pa.array(np.arange(parent.num_rows))], names=names + [_REF])
    right = right.group_by(names, use_threads=False).aggregate([(_REF, "min")]).rename_columns(names + [_REF])
    joined = left.join(right, keys=names, join_type="inner", use_threads=False)
    out = np.full(child.num_rows, -1, dtype=np.int64)
    out[joined.column(_ROW).to_numpy()] = joined.column(_REF).to_numpy()
    return out


@dataclass(frozen=True)
class IntegrityReport:
    """``ri_percent``: share of non-null foreign-key values that find their target, in percent."""

    ok: bool
    violations: list[str] = field(default_factory=list)
    ri_percent: float = 100.0


def _duplicates(table: pa.Table, columns: tuple[str, ...]) -> int:
    if not columns or table.num_rows == 0:
        return 0
    distinct = table.select(list(columns)).group_by(list(columns), use_threads=False).aggregate([]).num_rows
    return table.num_rows - distinct


def _dangling(child: pa.Table, columns: tuple[str, ...], target: pa.Table,
              target_columns: tuple[str, ...]) -> tuple[int, int]:
    """(non-null references, references not found)."""
    present = np.ones(child.num_rows, dtype=bool)
    for c in columns:
        present &= pc.is_valid(child.column(c)).to_numpy(zero_copy_only=False)
    found = match_rows(child, columns, target, target_columns) >= 0
    return int(present.sum()), int((present & ~found).sum())


def check_integrity(schema: SynthSchema, tables: Mapping[str, pa.Table],
                    references: Mapping[str, pa.Table] | None = None) -> IntegrityReport:
    """Check keys and links of generated tables: primary keys unique and non-null, every
    child's foreign key finds its parent, every reference link finds its target."""
    references = references or {}
    violations: list[str] = []
    total = bad = 0
    for t in schema.tables:
        if t.name not in tables:
            violations.append(f"{t.name}: table missing")
            continue
        data = tables[t.name]
        if t.primary_key:
            dupes = _duplicates(data, t.primary_key)
            if dupes:
                violations.append(f"{t.name}({', '.join(t.primary_key)}): {dupes} duplicate primary keys")
            nulls = sum(data.column(c).null_count for c in t.primary_key)
            if nulls:
                violations.append(f"{t.name}({', '.join(t.primary_key)}): {nulls} null primary key values")
        if t.parent is None or t.parent not in tables:
            continue
        n, missing = _dangling(data, t.columns, tables[t.parent], t.parent_columns)
        nulls = data.num_rows - n
        total += data.num_rows
        bad += missing + nulls
        if missing or nulls:
            violations.append(f"{t.name}({', '.join(t.columns)}) -> {t.parent}: {missing} rows without parent, "
                              f"{nulls} with a null foreign key")
    for link in schema.references:
        target = tables.get(link.ref_table) if schema.is_tree_table(link.ref_table) else references.get(link.ref_table)
        if link.table not in tables:
            continue
        if target is None:
            violations.append(f"{link.table}.{','.join(link.columns)} -> {link.ref_table}: target table not given")
            continue
        n, missing = _dangling(tables[link.table], link.columns, target, link.ref_columns)
        total += n
        bad += missing
        if missing:
            violations.append(f"{link.table}.{','.join(link.columns)} -> {link.ref_table}."
                              f"{','.join(link.ref_columns)}: {missing} of {n} values not found")
    ri = 100.0 if total == 0 else 100.0 * (total - bad) / total
    return IntegrityReport(ok=not violations, violations=violations, ri_percent=ri)



def ancestor_rows(schema: SynthSchema, parents: Mapping[str, np.ndarray | None], table: str,
                  ancestor: str, n_rows: int) -> np.ndarray:
    """For each of the ``n_rows`` rows of ``table``, the index of its row in ``ancestor``
    (identity when ``ancestor`` is ``table``). ``parents`` maps each tree table to the
    parent-row index of each of its rows."""
    chain = schema.ancestors(table)
    if ancestor not in chain:
        raise SchemaError(f"synth: {ancestor!r} is not an ancestor of {table!r} (ancestors: {chain[1:]})")
    index = np.arange(n_rows)
    for name in chain[: chain.index(ancestor)]:
        index = parents[name][index]
    return index


def select_entities(schema: SynthSchema, tables: Mapping[str, pa.Table],
                    keep_root: np.ndarray) -> dict[str, pa.Table]:
    """The entity slices of the root rows where ``keep_root`` is true: each tree table
    filtered to the rows whose parent chain leads to a kept root row."""
    kept = {schema.root: tables[schema.root].filter(pa.array(np.asarray(keep_root, dtype=bool)))}
    for t in schema.tables:
        if t.parent is None:
            continue
        rows = match_rows(tables[t.name], t.columns, kept[t.parent], t.parent_columns)
        kept[t.name] = tables[t.name].filter(pa.array(rows >= 0))
    return kept
