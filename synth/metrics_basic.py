"""Small fidelity metrics: per-column marginal distances and child-count distances
between real and synthetic entity slices (0 = identical, 1 = disjoint).

Numeric columns (numbers, dates, timestamps) use the two-sample Kolmogorov–Smirnov
statistic, categorical ones the total variation distance; child counts per parent use
KS; pairs of small categorical columns of one table use the TVD of their joint shares.
Keys, links within the entity, excluded and free-text columns are not compared;
links to shared reference tables are compared as categories.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.conditions import comparable
from synth.integrity import match_rows
from synth.schema import SynthSchema
from synth.transform import column_kind


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample KS statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    if len(a) == 0 or len(b) == 0:
        return 0.0 if len(a) == len(b) else 1.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def tvd(a: pa.Array | pa.ChunkedArray, b: pa.Array | pa.ChunkedArray) -> float:
    """Total variation distance between the value shares of two columns (null is a value)."""
    def shares(x) -> dict:
        counts = pc.value_counts(x)
        n = max(len(x), 1)
        return dict(zip(counts.field("values").to_pylist(), (counts.field("counts").to_numpy() / n).tolist()))

    sa, sb = shares(a), shares(b)
    return 0.5 * float(sum(abs(sa.get(k, 0.0) - sb.get(k, 0.0)) for k in set(sa) | set(sb)))


def _compared_columns(schema: SynthSchema, real: Mapping[str, pa.Table]) -> list[tuple[str, str, str]]:
    out = []
    for t in schema.tables:
        table = real[t.name]
        skip = set(schema.key_columns(t.name))
        for fld in table.schema:
            if fld.name in skip or f"{t.name}.{fld.name}" in schema.exclude:
                continue
            links = [link for _, link in schema.links_of(t.name) if fld.name in link.columns]
            if any(schema.is_tree_table(link.ref_table) for link in links):
                continue  # points at generated rows: the key values themselves mean nothing
            kind = "categorical" if links else column_kind(t.name, fld, table.column(fld.name))
            if kind != "text":
                out.append((t.name, fld.name, kind))
    return out


def column_distances(schema: SynthSchema, real: Mapping[str, pa.Table],
                     synth: Mapping[str, pa.Table]) -> dict[str, float]:
    """``"table.column"`` → KS (numeric, worst of value KS and null-share gap) or TVD (categorical)."""
    out = {}
    for table, column, kind in _compared_columns(schema, real):
        a, b = real[table].column(column), synth[table].column(column)
        if kind == "numeric":
            null_gap = abs(a.null_count / max(len(a), 1) - b.null_count / max(len(b), 1))
            out[f"{table}.{column}"] = max(ks_distance(comparable(a), comparable(b)), null_gap)
        else:
            out[f"{table}.{column}"] = tvd(a, b)
    return out


def child_counts(schema: SynthSchema, tables: Mapping[str, pa.Table], child: str) -> np.ndarray:
    """Number of ``child`` rows of every parent row (zeros included)."""
    t = schema.table(child)
    parent = tables[t.parent]
    rows = match_rows(tables[child], t.columns, parent, t.parent_columns)
    return np.bincount(rows[rows >= 0], minlength=parent.num_rows)


def child_count_distances(schema: SynthSchema, real: Mapping[str, pa.Table],
                          synth: Mapping[str, pa.Table]) -> dict[str, float]:
    """Child table → KS between real and synthetic children-per-parent distributions."""
    return {t.name: ks_distance(child_counts(schema, real, t.name).astype(float),
                                child_counts(schema, synth, t.name).astype(float))
            for t in schema.tables if t.parent is not None}


def pair_distances(schema: SynthSchema, real: Mapping[str, pa.Table], synth: Mapping[str, pa.Table],
                   max_values: int = 20) -> dict[str, float]:
    """``"table.a|b"`` → TVD between the joint shares of two categorical columns of a table
    (each with at most ``max_values`` values): how well dependence is kept, not just marginals."""
    small = [(t, c) for t, c, kind in _compared_columns(schema, real)
             if kind == "categorical" and pc.count_distinct(real[t].column(c)).as_py() <= max_values]
    out = {}
    for i, (table, a) in enumerate(small):
        for other, b in small[i + 1:]:
            if other != table:
                continue

            def joint(tables: Mapping[str, pa.Table]) -> pa.Array:
                x = tables[table]
                return pc.binary_join_element_wise(pc.cast(x.column(a), pa.string()).fill_null("<null>"),
                                                   pc.cast(x.column(b), pa.string()).fill_null("<null>"), "|")

            out[f"{table}.{a}|{b}"] = tvd(joint(real), joint(synth))
    return out


def fidelity(schema: SynthSchema, real: Mapping[str, pa.Table], synth: Mapping[str, pa.Table]) -> dict:
    """Mean column, child-count and pair distances, and the per-item distances."""
    columns = column_distances(schema, real, synth)
    counts = child_count_distances(schema, real, synth)
    pairs = pair_distances(schema, real, synth)

    def mean(values: dict) -> float:
        return float(np.mean(list(values.values()))) if values else 0.0

    return {"column_mean": mean(columns), "child_count_mean": mean(counts), "pair_mean": mean(pairs),
            "columns": columns, "child_counts": counts, "pairs": pairs}
