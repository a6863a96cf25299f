"""k-anonymity of a table over its quasi-identifiers.

Rows that agree on every quasi-identifier (nulls agreeing with nulls) form one
equivalence class; the table is k-anonymous for k = the size of its smallest class.
One Arrow hash aggregation counts the classes, so the cost is one pass over the table.
Use it to check that a policy's generalizations (birth date to year, postcode to a
prefix) leave no one alone in a class before releasing masked or synthetic data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import ConfigError, SchemaError

COUNT = "count"


@dataclass(frozen=True)
class KAnonReport:
    """``k``: size of the smallest class (0 for an empty table); ``classes``: number of
    distinct quasi-identifier combinations; ``smallest_classes``: the smallest ones as
    ``{qi: value, ..., "count": n}``; ``share_below[t]``: share of rows in classes of
    fewer than ``t`` rows (the rows a k = t release would still expose)."""

    k: int
    classes: int
    rows: int
    smallest_classes: list[dict]
    share_below: dict[int, float]


def k_anonymity(
    table: pa.Table,
    quasi_identifiers: list[str],
    *,
    thresholds: Iterable[int] = (2, 3, 5, 10),
    smallest: int = 5,
) -> KAnonReport:
    """Measure k-anonymity of ``table`` over ``quasi_identifiers``."""
    qis = list(dict.fromkeys(quasi_identifiers))
    if not qis:
        raise ConfigError("k_anonymity: give at least one quasi-identifier column")
    missing = [c for c in qis if c not in table.column_names]
    if missing:
        have = ", ".join(table.column_names)
        raise SchemaError(f"k_anonymity: no column(s) {', '.join(missing)} in the table (it has {have})")
    if COUNT in qis:
        raise SchemaError(f"k_anonymity: a quasi-identifier may not be called {COUNT!r}")
    steps = sorted({int(t) for t in thresholds})
    if any(t < 1 for t in steps):
        raise ConfigError(f"k_anonymity: thresholds must be positive, got {steps}")
    data = table.select(qis)
    for name in qis:
        column = data.column(name)
        if pa.types.is_dictionary(column.type):
            data = data.set_column(data.column_names.index(name), name, column.cast(column.type.value_type))
    try:
        groups = data.group_by(qis, use_threads=False).aggregate([([], "count_all")])
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(f"k_anonymity: cannot group by {', '.join(qis)}: {exc}") from None
    groups = groups.rename_columns([COUNT if c == "count_all" else c for c in groups.column_names])
    counts = groups.column(COUNT).to_numpy().astype(np.int64)
    rows = table.num_rows
    order = pc.sort_indices(groups, sort_keys=[(COUNT, "ascending")] + [(c, "ascending") for c in qis])
    head = groups.take(order.slice(0, smallest)).select([*qis, COUNT])
    share_below = {t: (float(counts[counts < t].sum()) / rows if rows else 0.0) for t in steps}
    return KAnonReport(
        k=int(counts.min()) if len(counts) else 0,
        classes=len(counts),
        rows=rows,
        smallest_classes=head.to_pylist(),
        share_below=share_below,
    )
