"""Sampling many entities in shards, by seed streams, so that any executor (in-process,
spawned processes, Ray) produces the same bundle for the same seed.

A request for N entities is cut into ``ceil(N / shard_entities)`` shards of near-equal
size; shard i samples with the i-th seed of ``SeedSequence(seed)``. Keys are assigned by
construction within a shard (1..n per table), so merging renumbers every key a generator
assigned — and every column that refers to one — by the rows of that table in earlier
shards, then restores uniqueness constraints across shards. One shard is the plain
``Generator.sample`` with the caller's seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import ConfigError
from synth.conditions import Condition, make_unique
from synth.generators import Generator, load_generator

Job = tuple[str, int, int, tuple[tuple[str, str, object, float], ...]]
"""(model folder, entities, seed, conditions as (table, column, value, share))."""


def plan(entities: int, seed: int, shard_entities: int) -> list[tuple[int, int]]:
    """(entities, seed) per shard."""
    if shard_entities < 1:
        raise ConfigError(f"shard_entities must be at least 1, got {shard_entities}")
    if entities <= shard_entities:
        return [(entities, seed)]
    k = math.ceil(entities / shard_entities)
    seeds = np.random.SeedSequence(seed).generate_state(k, dtype=np.uint32).tolist()
    return [(entities // k + (1 if i < entities % k else 0), int(s)) for i, s in enumerate(seeds)]


def sample_job(job: Job) -> dict[str, bytes]:
    """One shard, run where the executor puts it: the tables as Arrow IPC streams."""
    from microdb.executors import tables_to_ipc

    model, n, seed, conditions = job
    return tables_to_ipc(load_generator(model).sample(n, seed=seed, conditions=[Condition(*c) for c in conditions]))


def _renumber(column: pa.ChunkedArray | pa.Array, offset: int, width: int, where: str) -> pa.Array:
    t = column.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pc.add(pc.cast(column, pa.int64()), offset).cast(t)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        ids = pc.add(pc.cast(column, pa.int64()), offset)
        return pc.utf8_lpad(pc.cast(ids, pa.string()), width, "0").cast(t)
    raise ConfigError(f"sharded sampling cannot renumber key column {where} of type {t}; "
                      "sample at most [synth] shard_entities entities at once")


def merge(gen: Generator, shards: Sequence[dict[str, pa.Table]]) -> dict[str, pa.Table]:
    """One bundle from shards: keys renumbered, references to them too, uniqueness restored."""
    if len(shards) == 1:
        return dict(shards[0])
    schema, tree_plan = gen._fitted()
    totals = {t.name: sum(s[t.name].num_rows for s in shards) for t in schema.tables}
    assigned = {t.name: set(tree_plan.tables[t.name].keys) for t in schema.tables}
    # column -> the table whose assigned key sequence its values come from
    refers: dict[str, dict[str, str]] = {t.name: {c: t.name for c in assigned[t.name]} for t in schema.tables}
    for t in schema.tables:
        if t.parent is not None:
            for c, pcol in zip(t.columns, t.parent_columns):
                if pcol in assigned[t.parent]:
                    refers[t.name][c] = t.parent
        for _, link in schema.links_of(t.name):
            if schema.is_tree_table(link.ref_table):
                for c, rc in zip(link.columns, link.ref_columns):
                    if rc in assigned[link.ref_table]:
                        refers[t.name][c] = link.ref_table
    widths = {name: max(len(str(n)), 6) for name, n in totals.items()}
    offsets = {t.name: 0 for t in schema.tables}
    parts: dict[str, list[pa.Table]] = {t.name: [] for t in schema.tables}
    for shard in shards:
        for t in schema.tables:
            table = shard[t.name]
            for c, owner in refers[t.name].items():
                i = table.schema.get_field_index(c)
                fixed = _renumber(table.column(c), offsets[owner], widths[owner], f"{t.name}.{c}")
                table = table.set_column(i, table.schema.field(i), fixed)
            parts[t.name].append(table)
        for t in schema.tables:
            offsets[t.name] += shard[t.name].num_rows
    out = {name: pa.concat_tables(tables).combine_chunks() for name, tables in parts.items()}
    for c in gen.constraints:
        if c.kind == "unique":
            table = out[c.table]
            i = table.schema.get_field_index(c.column)
            unique = make_unique(table.column(c.column).combine_chunks()).cast(table.schema.field(i).type)
            out[c.table] = table.set_column(i, table.schema.field(i), unique)
    return out
