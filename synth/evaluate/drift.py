"""Drift: which columns' distributions moved between two bundles (or a bundle and a newer
snapshot of the real data).

Each compared column gets the KS statistic (numbers, dates, timestamps) or the TVD
(categories) between ``a`` and ``b``, and each child table the KS of its children per
parent. A column drifted when its distance exceeds the threshold *and* the noise two
samples of these sizes show without any drift (KS: the 1 % critical value; TVD: twice
its expected value under no change), so small samples do not raise false alarms. The
noise level counts entities, not rows: the rows of one entity are not independent draws
(a customer's transactions share a home country and a device), so a child table's
sample size is the number of entities that have rows in it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import ConfigError, SchemaError
from synth.evaluate.frames import ancestor_index, as_text, compared_columns, parent_index
from synth.metrics_basic import child_count_distances, column_distances
from synth.schema import SynthSchema

KS_CRITICAL_1PCT = 1.628


def ks_noise(n: int, m: int) -> float:
    """KS statistic exceeded with 1 % probability by two samples of one distribution."""
    if n == 0 or m == 0:
        return 1.0
    return KS_CRITICAL_1PCT * float(np.sqrt((n + m) / (n * m)))


def tvd_noise(a: pa.Array, b: pa.Array, n: int = 0, m: int = 0) -> float:
    """Twice the TVD expected between two samples of one distribution, of sizes ``n`` and
    ``m`` (default: their lengths)."""
    n, m = n or len(a), m or len(b)
    if n == 0 or m == 0 or len(a) + len(b) == 0:
        return 1.0
    counts = pc.value_counts(pa.chunked_array([a, b]))
    p = counts.field("counts").to_numpy() / (len(a) + len(b))
    expected = 0.5 * np.sum(np.sqrt(2 / np.pi) * np.sqrt(p * (1 - p) * (1 / n + 1 / m)))
    return 2.0 * float(expected)


def entity_sizes(schema: SynthSchema, tables: Mapping[str, pa.Table]) -> dict[str, int]:
    """Per tree table, the number of entities with at least one row in it (the sampling unit)."""
    parents = parent_index(schema, tables)
    out = {}
    for t in schema.tables:
        owner = ancestor_index(schema, parents, t.name, schema.root)
        out[t.name] = len(np.unique(owner[owner >= 0]))
    return out


def drift(schema: SynthSchema, a: Mapping[str, pa.Table], b: Mapping[str, pa.Table], threshold: float = 0.1) -> dict:
    """Distance, noise level and verdict per column and child table; ``drifted`` lists the moved ones."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"drift: threshold {threshold} must be in (0, 1]")
    for name in schema.names():
        for side, tables in (("a", a), ("b", b)):
            if name not in tables:
                raise SchemaError(f"drift: table {name!r} missing from bundle {side}")
    columns = compared_columns(schema, a)
    for table, column, _ in columns:
        if column not in b[table].column_names:
            raise SchemaError(f"drift: column {table}.{column} missing from bundle b")
    distances = column_distances(schema, a, b)
    size_a, size_b = entity_sizes(schema, a), entity_sizes(schema, b)
    report: dict = {"threshold": threshold, "columns": {}, "child_counts": {}}
    for table, column, kind in columns:
        name = f"{table}.{column}"
        x, y = a[table].column(column), b[table].column(column)
        if kind == "numeric":
            noise = ks_noise(size_a[table], size_b[table])
        else:
            noise = tvd_noise(as_text(x), as_text(y), size_a[table], size_b[table])
        d = distances[name]
        report["columns"][name] = {"kind": kind, "statistic": "KS" if kind == "numeric" else "TVD",
                                   "distance": d, "noise": noise, "drifted": bool(d > threshold and d > noise)}
    for child, d in child_count_distances(schema, a, b).items():
        noise = ks_noise(size_a[schema.table(child).parent], size_b[schema.table(child).parent])
        report["child_counts"][child] = {"statistic": "KS", "distance": d, "noise": noise,
                                         "drifted": bool(d > threshold and d > noise)}
    report["drifted"] = ([k for k, v in report["columns"].items() if v["drifted"]]
                         + [f"{k}#count" for k, v in report["child_counts"].items() if v["drifted"]])
    report["status"] = "drift" if report["drifted"] else "stable"
    report["sizes"] = {"a": {k: a[k].num_rows for k in schema.names()}, "b": {k: b[k].num_rows for k in schema.names()}}
    return report
