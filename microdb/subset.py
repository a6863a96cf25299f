"""Subsets: which entities to provision or export, and their tables as one data set.

A subset is chosen from the synced entities of one type by explicit keys, a SQL
predicate, and/or a (stratified) random sample, in that order. It is assembled from the
sealed store in bulk: entities are unsealed chunk by chunk and their tables concatenated
(an ``entity`` column says whose row is whose), then masked for the role column by column
over the whole chunk. Only a function that reads the entity key (``date_shift``) is
applied entity by entity. The result is referentially complete: whole entities (every
child row hangs off its entity) plus the rows of the reference tables they use.

The predicate is a boolean SQL expression over one entity's tables and sees what the
role sees (masked values for a masked role, raw for a raw one). An entity satisfies it
when ``SELECT 1 FROM T1, T2 … WHERE <predicate>`` returns a row on its micro-database,
where T1, T2 … are the tables its top-level column references name (``transactions.is_fraud``
means "some transaction is fraudulent"); subqueries (``EXISTS (SELECT 1 FROM cards WHERE
…)``) see the same entity's tables only. It passes the SQL guard, then runs once over all
candidate entities in a locked DuckDB database, rewritten so every table is scoped to the
entity being tested.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from microdb.entity import EntityType
from microdb.errors import EntityNotFound, PolicyError, QueryError, SchemaError

if TYPE_CHECKING:
    from microdb.workspace import Workspace

ENTITY_COLUMN = "__mdb_entity"
CHUNK = 2000
Progress = Callable[[str, int, int], None]


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


# --------------------------------------------------------------------------- links


@dataclass(frozen=True)
class Link:
    """``child(columns)`` references ``parent(parent_columns)``; names are the entity type's
    local table names."""

    child: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]


def links(ws: Workspace, et: EntityType) -> list[Link]:
    """Every known reference between the entity type's tables (reference tables included):
    the sources' declared foreign keys, ``[[relations]]`` and the type's parent joins."""
    local = {(t.source, t.table): t.name for t in et.tables}
    local.update({(r.source, r.table): r.name for r in et.references})
    found: dict[tuple, Link] = {}

    def add(child: str, cols: Sequence[str], parent: str, pcols: Sequence[str]) -> None:
        pairs = tuple(sorted(zip(cols, pcols)))
        found.setdefault((child, parent, pairs), Link(child, tuple(cols), parent, tuple(pcols)))

    for (source, table), name in sorted(local.items()):
        info = ws.sources.catalog(source).tables.get(table)
        for fk in info.foreign_keys if info else ():
            parent = local.get((source, fk.ref_table))
            if parent is not None:
                add(name, fk.columns, parent, fk.ref_columns)
    for rel in ws.config.relations:
        child = local.get(tuple(rel.child.split(".", 1)))
        parent = local.get(tuple(rel.parent.split(".", 1)))
        if child is not None and parent is not None:
            add(child, rel.columns, parent, rel.parent_columns)
    for t in et.tables:
        if t.parent is not None:
            add(t.name, t.columns, t.parent, t.parent_columns)
    return list(found.values())


# --------------------------------------------------------------------------- masking


class _NeedsEntity(Exception):
    """Raised by the probe context when a masking function asks for the entity key."""


def _probe_context(base: Any) -> Any:
    """A MaskContext like ``base`` whose ``entity_key`` cannot be read: a function that
    reads it depends on the entity and must be applied entity by entity."""
    return _probe_class(type(base))(key=base.key, table=base.table, column=base.column, entity_key=None, role=base.role)


@functools.lru_cache(maxsize=4)
def _probe_class(cls: type) -> type:
    class Probe(cls):  # type: ignore[misc, valid-type]
        def __getattribute__(self, name: str) -> Any:
            if name == "entity_key":
                raise _NeedsEntity(name)
            return object.__getattribute__(self, name)

    return Probe


def mask_bulk(ws: Workspace, et: EntityType, role: str, tables: dict[str, pa.Table]) -> tuple[dict[str, pa.Table], list[str]]:
    """Mask concatenated entity tables (each with an ``ENTITY_COLUMN`` of ``TYPE/KEY``,
    rows grouped by entity) for ``role``; return them (entity column kept) and the
    withheld ``table.column`` names. Same values as masking entity by entity."""
    spec = ws.policies.role(role)
    ws.policies.check(role, et.name, {n: [c for c in t.column_names if c != ENTITY_COLUMN] for n, t in tables.items()})
    if spec is None or spec.raw:
        return tables, []
    from masking.functions.registry import MaskContext

    out: dict[str, pa.Table] = {}
    withheld: list[str] = []
    for name, table in tables.items():
        entity = table.column(ENTITY_COLUMN)
        arrays, fields = [entity], [pa.field(ENTITY_COLUMN, pa.string())]
        bounds: np.ndarray | None = None
        for fld, col in zip(table.schema, table.columns):
            if fld.name == ENTITY_COLUMN:
                continue
            rule = spec.resolve(name, fld.name)
            if rule is None:
                withheld.append(f"{name}.{fld.name}")
                continue
            ctx = MaskContext(key=ws.keyring.derive, table=name, column=fld.name, role=role)
            try:
                masked = rule.fn.apply(col, rule.params, _probe_context(ctx))
            except _NeedsEntity:
                if bounds is None:
                    bounds = _run_bounds(entity)
                masked = _per_entity(rule, col, ctx, entity, bounds)
            if len(masked) != table.num_rows:
                raise PolicyError(f"role {role!r}, column {name}.{fld.name}: {rule.fn.name} changed the row count")
            arrays.append(masked)
            fields.append(pa.field(fld.name, masked.type))
        out[name] = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    return out, sorted(withheld)


def _run_bounds(entity: pa.ChunkedArray) -> np.ndarray:
    """Start offsets of runs of equal entity values, plus the end."""
    if len(entity) == 0:
        return np.array([0], dtype=np.int64)
    codes = pc.dictionary_encode(entity).combine_chunks().indices.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.diff(codes)) + 1
    return np.concatenate([[0], starts, [len(codes)]]).astype(np.int64)


def _per_entity(rule: Any, col: pa.ChunkedArray, ctx: Any, entity: pa.ChunkedArray, bounds: np.ndarray) -> pa.Array:
    from dataclasses import replace

    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        one = replace(ctx, entity_key=entity[int(lo)].as_py())
        parts.append(rule.fn.apply(col.slice(int(lo), int(hi - lo)), rule.params, one))
    if not parts:  # no rows: any entity key gives the output type
        return rule.fn.apply(col, rule.params, replace(ctx, entity_key="(none)"))
    chunked = pa.chunked_array(parts)
    return chunked.combine_chunks()


# --------------------------------------------------------------------------- store access


def stored_keys(ws: Workspace, et: EntityType, keys: Sequence[str] | None) -> list[str]:
    """``keys`` (synced first if missing and the type allows it), or every stored key."""
    if keys is None:
        found = ws.store.keys(et.name)
        if not found:
            raise EntityNotFound(f"no {et.name} entities are in the store (run `microdb sync {et.name} --all`)")
        return found
    wanted = list(dict.fromkeys(str(k) for k in keys))
    missing = [k for k in wanted if ws.store.info(et.name, k) is None]
    if missing and et.on_demand != "never":
        ws.sync(et.name, keys=missing)
        missing = [k for k in missing if ws.store.info(et.name, k) is None]
    if missing:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        raise EntityNotFound(f"{len(missing)} {et.name} key(s) not found: {shown}")
    return wanted


def _unsealed_chunks(ws: Workspace, et: EntityType, keys: Sequence[str], tables: Sequence[str] | None,
                     chunk: int = CHUNK) -> Iterator[tuple[list[str], dict[str, pa.Table]]]:
    """Chunks of entities: (keys, {table: rows of those entities with ENTITY_COLUMN first})."""
    for start in range(0, len(keys), chunk):
        part = list(keys[start:start + chunk])
        pieces: dict[str, list[pa.Table]] = {}
        counts: dict[str, list[int]] = {}
        for key in part:
            rec = ws.store.get(et.name, key)
            if rec is None:
                raise EntityNotFound(f"{et.name}/{key} is not in the store")
            for name, t in rec.tables.items():
                if tables is None or name in tables:
                    pieces.setdefault(name, []).append(t)
                    counts.setdefault(name, []).append(t.num_rows)
        out = {}
        addresses = pa.array([f"{et.name}/{k}" for k in part], pa.string())
        for name, parts in pieces.items():
            rows = _concat(parts).combine_chunks()  # one chunk: masking kernels then run once per column
            owner = addresses.take(pa.array(np.repeat(np.arange(len(part)), counts[name])))
            out[name] = rows.add_column(0, ENTITY_COLUMN, owner)
        yield part, out


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate tables; schemas that drifted between syncs are unified (slower path)."""
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid:
        return pa.concat_tables(tables, promote_options="permissive")


# --------------------------------------------------------------------------- the data set


@dataclass
class EntitySet:
    """Whole entities of one type as a role sees them, ready to write somewhere."""

    etype: str
    role: str
    keys: list[str]
    tables: dict[str, pa.Table]  # entity tables, parents first; ENTITY_COLUMN first
    references: dict[str, pa.Table]  # the rows the entities use
    withheld: list[str] = field(default_factory=list)

    def rows(self) -> dict[str, int]:
        return {n: t.num_rows for n, t in {**self.references, **self.tables}.items()}

    def plain(self) -> dict[str, pa.Table]:
        """Reference tables first, then entity tables, without the entity column."""
        out = dict(self.references)
        out.update({n: t.drop_columns([ENTITY_COLUMN]) for n, t in self.tables.items()})
        return out


def gather(ws: Workspace, etype: str, keys: Sequence[str], role: str, *, progress: Progress = _no_progress,
           all_references: bool = False) -> EntitySet:
    """Unseal and mask the entities ``keys`` in chunks and concatenate them per table."""
    et = ws.entity_type(etype)
    parts: dict[str, list[pa.Table]] = {t.name: [] for t in et.tables}
    withheld: set[str] = set()
    done = 0
    progress("reading entities", 0, len(keys))
    for chunk, raw in _unsealed_chunks(ws, et, keys, None):
        masked, hidden = mask_bulk(ws, et, role, raw)
        withheld.update(hidden)
        for name, t in masked.items():
            parts.setdefault(name, []).append(t)
        done += len(chunk)
        progress("reading entities", done, len(keys))
    tables = {}
    for name, group in parts.items():
        if group:
            tables[name] = _concat(group)
        else:
            tables[name] = _empty(ws, et, name, role)
    refs, ref_hidden = ws._references(et, role)
    withheld.update(ref_hidden)
    if not all_references:
        refs = used_references(tables, refs, links(ws, et))
    return EntitySet(etype, role, list(keys), tables, refs, sorted(withheld))


def _empty(ws: Workspace, et: EntityType, name: str, role: str) -> pa.Table:
    """An empty table with the columns and masked types ``role`` sees."""
    t = et.table(name)
    info = ws.sources.catalog(t.source).table(t.table)
    cols = [c for c in info.columns if t.projection is None or c.name in t.projection]
    empty = pa.schema([pa.field(ENTITY_COLUMN, pa.string())] + [pa.field(c.name, c.type) for c in cols]).empty_table()
    masked, _ = mask_bulk(ws, et, role, {name: empty})
    return masked.get(name, pa.schema([pa.field(ENTITY_COLUMN, pa.string())]).empty_table())


def used_references(tables: dict[str, pa.Table], refs: dict[str, pa.Table], edges: Sequence[Link]) -> dict[str, pa.Table]:
    """Rows of each reference table that the entity tables (or other used reference rows)
    point at; a reference table nothing is known to point at is kept whole."""
    import duckdb

    con = duckdb.connect(":memory:", config={"enable_external_access": False})
    try:
        pointed = {e.parent for e in edges if e.parent in refs and e.child != e.parent}
        current = {n: t for n, t in refs.items()}
        for _ in range(len(refs) + 1):
            changed = False
            for name in sorted(pointed):
                sources = [e for e in edges if e.parent == name and e.child != name
                           and (e.child in tables or e.child in refs)]
                ref = refs[name]
                if not sources or any(c not in ref.column_names for e in sources for c in e.parent_columns):
                    continue
                con.register("__ref", ref)
                conds = []
                for i, e in enumerate(sources):
                    child = tables.get(e.child, current.get(e.child))
                    if child is None or any(c not in child.column_names for c in e.columns):
                        conds = []
                        break
                    con.register(f"__c{i}", child)
                    on = " AND ".join(f"__c{i}.{_q(c)} = __ref.{_q(p)}" for c, p in zip(e.columns, e.parent_columns))
                    conds.append(f"EXISTS (SELECT 1 FROM __c{i} WHERE {on})")
                if not conds:
                    continue
                kept = con.sql(f"SELECT * FROM __ref WHERE {' OR '.join(conds)}").to_arrow_table()
                kept = kept.cast(ref.schema)
                if current[name].num_rows != kept.num_rows:
                    changed = True
                current[name] = kept
            if not changed:
                break
        return current
    finally:
        con.close()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Choice:
    """How to choose entities: candidates (explicit keys, else all synced), then a
    predicate, then a sample of ``sample`` entities, stratified on ``stratify``."""

    keys: tuple[str, ...] | None = None
    where: str | None = None
    sample: int | None = None
    stratify: str | None = None
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.keys is not None:
            out["keys"] = len(self.keys)
        for name in ("where", "sample", "stratify"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.sample is not None:
            out["seed"] = self.seed
        return out


def choose(ws: Workspace, etype: str, choice: Choice, role: str) -> list[str]:
    """The keys ``choice`` selects, in store order."""
    et = ws.entity_type(etype)
    if choice.stratify is not None and choice.sample is None:
        raise SchemaError("stratify needs a sample size")
    if choice.sample is not None and choice.sample < 0:
        raise SchemaError(f"sample size must not be negative, got {choice.sample}")
    keys = stored_keys(ws, et, choice.keys)
    if choice.where is not None:
        keys = matching(ws, et, keys, choice.where, role)
    if choice.sample is not None:
        keys = sample_keys(ws, et, keys, choice.sample, choice.stratify, choice.seed, role)
    return keys


def sample_keys(ws: Workspace, et: EntityType, keys: list[str], n: int, stratify: str | None, seed: int,
                role: str) -> list[str]:
    """``n`` keys at random (seeded); with ``stratify = TABLE.COLUMN`` each stratum gets a
    share proportional to its size (largest remainders), at least one where ``n`` allows.
    An entity's stratum is the column's value in the root table, or its maximum over the
    entity's rows in a child table (NULL when it has none)."""
    rng = np.random.default_rng(seed)
    if n >= len(keys):
        return list(keys)
    if stratify is None:
        picked = np.sort(rng.choice(len(keys), size=n, replace=False))
        return [keys[i] for i in picked]
    table, column = _table_column(et, stratify)
    strata = _strata(ws, et, keys, table, column, role)
    codes = pc.dictionary_encode(strata, null_encoding="encode").indices.to_numpy(zero_copy_only=False)
    labels, sizes = np.unique(codes, return_counts=True)
    quota = sizes * n / len(keys)
    take = np.floor(quota).astype(int)
    if n >= len(labels):
        take = np.maximum(take, 1)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    for i in order:
        if take.sum() >= n:
            break
        if take[i] < sizes[i]:
            take[i] += 1
    while take.sum() > n:  # the minimum of one per stratum overshot: trim the largest
        take[int(np.argmax(take))] -= 1
    picked: list[int] = []
    for label, k in zip(labels, take):
        members = np.flatnonzero(codes == label)
        picked += rng.choice(members, size=int(k), replace=False).tolist()
    return [keys[i] for i in sorted(picked)]


def _table_column(et: EntityType, ref: str) -> tuple[str, str]:
    table, _, column = ref.rpartition(".")
    if not table or table not in [t.name for t in et.tables]:
        raise SchemaError(f"stratify column must be TABLE.COLUMN of an entity table of {et.name!r}, got {ref!r} "
                          f"(tables: {', '.join(t.name for t in et.tables)})")
    return table, column


def _strata(ws: Workspace, et: EntityType, keys: list[str], table: str, column: str, role: str) -> pa.Array:
    import duckdb

    values = []
    con = duckdb.connect(":memory:", config={"enable_external_access": False})
    try:
        for chunk, raw in _unsealed_chunks(ws, et, keys, [table]):
            masked, _ = mask_bulk(ws, et, role, raw)
            t = masked.get(table)
            if t is None or column not in t.column_names:
                raise SchemaError(f"table {table!r} has no column {column!r} that role {role!r} may see")
            ent = pa.table({ENTITY_COLUMN: pa.array([f"{et.name}/{k}" for k in chunk], pa.string()),
                            "__ord": pa.array(np.arange(len(chunk)))})
            con.register("__t", t.select([ENTITY_COLUMN, column]))
            con.register("__e", ent)
            values.append(con.sql(
                f"SELECT max(__t.{_q(column)}) AS v FROM __e LEFT JOIN __t USING ({ENTITY_COLUMN}) "
                "GROUP BY __e.__ord ORDER BY __e.__ord").to_arrow_table().column("v"))
    finally:
        con.close()
    return pa.chunked_array(values).combine_chunks()


# --------------------------------------------------------------------------- predicates


def matching(ws: Workspace, et: EntityType, keys: list[str], where: str, role: str) -> list[str]:
    """The keys among ``keys`` whose entity satisfies ``where`` (see the module docstring)."""
    tree = _checked_predicate(ws, et, where, role)
    referenced = sorted({t.name for t in tree.find_all(exp.Table)} | set(_top_tables(tree)))
    local = [t.name for t in et.tables] + [r.name for r in et.references]
    sql = _scoped(tree, _top_tables(tree), set(local), {r.name for r in et.references})
    from microdb.hydrate import locked_database

    db = locked_database(ws.config.query.memory_limit)
    hits: list[str] = []
    try:
        refs, _ = ws._references(et, role)
        entity_tables = [n for n in referenced if n in {t.name for t in et.tables}]
        for chunk, raw in _unsealed_chunks(ws, et, keys, entity_tables or [et.root]):
            masked, _ = mask_bulk(ws, et, role, raw)
            cur = db.cursor()
            try:
                cur.register("__mdb_entities", pa.table({"k": pa.array([f"{et.name}/{k}" for k in chunk], pa.string()),
                                                         "key": pa.array(chunk, pa.string())}))
                for name in referenced:
                    if name in masked:
                        cur.register(f"__mdb_all_{name}", masked[name])
                    elif name in refs:
                        cur.register(f"__mdb_all_{name}", refs[name])
                    elif name in {t.name for t in et.tables}:
                        cur.register(f"__mdb_all_{name}", _empty(ws, et, name, role))
                try:
                    found = cur.sql(sql).to_arrow_table().column("key").to_pylist()
                except Exception as exc:  # DuckDB binder/runtime errors: the predicate is wrong
                    raise QueryError(f"predicate {where!r} failed: {' '.join(str(exc).split())[:300]}") from None
            finally:
                cur.close()
            wanted = set(found)
            hits += [k for k in chunk if k in wanted]
    finally:
        db.close()
    ws.record("subset", role=role, entity=f"{et.name}/*", sql=where, rows=len(hits),
              details={"candidates": len(keys)})
    return hits


def _checked_predicate(ws: Workspace, et: EntityType, where: str, role: str) -> exp.Expression:
    """Parse ``where`` as one boolean expression and pass its per-entity query through the
    SQL guard (refusals are audited); return the predicate's tree."""
    try:
        cond = sqlglot.parse_one(where, read="duckdb", into=exp.Condition)
    except sqlglot.errors.SqlglotError as exc:
        raise QueryError(f"predicate {where!r} is not one SQL expression: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(cond, (exp.Query, exp.DDL, exp.DML, exp.Command)):
        raise QueryError(f"predicate {where!r} must be a boolean expression, not a statement")
    cond = _qualify_top(cond, ws, et, role)
    tops = _top_tables(cond)
    query = exp.select("1").where(cond.copy())
    if tops:
        query = query.from_(exp.to_table(_q(tops[0]), dialect="duckdb"))
        for t in tops[1:]:
            query = query.join(exp.to_table(_q(t), dialect="duckdb"), join_type="cross")
    ws.checked(et.name, query.sql(dialect="duckdb"), f"{et.name}/*", role)
    return cond


def _outer_columns(cond: exp.Expression) -> list[exp.Column]:
    """Column references of the predicate outside any subquery."""
    out = []
    for col in cond.find_all(exp.Column):
        node = col.parent
        inside = False
        while node is not None and node is not cond:
            if isinstance(node, exp.Query):
                inside = True
                break
            node = node.parent
        if not inside:
            out.append(col)
    return out


def _qualify_top(cond: exp.Expression, ws: Workspace, et: EntityType, role: str) -> exp.Expression:
    """Give unqualified top-level columns the one entity table that has them."""
    cond = cond.copy()
    names = [t.name for t in et.tables]
    columns: dict[str, list[str]] = {}
    for t in et.tables:
        info = ws.sources.catalog(t.source).table(t.table)
        for c in info.columns:
            if t.projection is None or c.name in t.projection:
                columns.setdefault(c.name, []).append(t.name)
    for col in _outer_columns(cond):
        if col.table:
            if col.table not in names:
                raise QueryError(f"predicate names table {col.table!r}, not an entity table of {et.name!r} "
                                 f"(tables: {', '.join(names)})")
            continue
        owners = columns.get(col.name, [])
        if len(owners) != 1:
            where = "no entity table has it" if not owners else f"it is in {', '.join(owners)}"
            raise QueryError(f"predicate column {col.name!r} needs a table (TABLE.{col.name}): {where}")
        col.set("table", exp.to_identifier(owners[0], quoted=True))
    return cond


def _top_tables(cond: exp.Expression) -> list[str]:
    return sorted({c.table for c in _outer_columns(cond) if c.table})


def _scoped(cond: exp.Expression, tops: list[str], local: set[str], shared: set[str]) -> str:
    """The bulk query: the keys of candidate entities that satisfy ``cond``, every table
    reference replaced by that table's rows of the entity under test."""
    cond = cond.copy()
    ent_ref = exp.column("k", table="__mdb_ent")
    for table in list(cond.find_all(exp.Table)):
        if table.args.get("db") is not None or table.name not in local or _is_cte(table):
            continue
        alias = table.alias_or_name
        if table.name in shared:  # reference tables are the same for every entity
            table.replace(exp.to_table(_q(f"__mdb_all_{table.name}"), dialect="duckdb").as_(alias, quoted=True))
            continue
        inner = (exp.select(exp.Star(**{"except": [exp.to_identifier(ENTITY_COLUMN, quoted=True)]}))
                 .from_(exp.to_table(_q(f"__mdb_all_{table.name}"), dialect="duckdb"))
                 .where(exp.EQ(this=exp.column(ENTITY_COLUMN, quoted=True), expression=ent_ref.copy())))
        table.replace(exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True))))
    query = exp.select(exp.column("key", table="__mdb_ent")).from_(
        exp.to_table("__mdb_entities", dialect="duckdb").as_("__mdb_ent"))
    for t in tops:
        on = exp.EQ(this=exp.column(ENTITY_COLUMN, table=t, quoted=True), expression=ent_ref.copy())
        query = query.join(exp.to_table(_q(f"__mdb_all_{t}"), dialect="duckdb").as_(t, quoted=True), on=on)
    query = query.where(cond).distinct()
    return query.sql(dialect="duckdb")


def _is_cte(table: exp.Table) -> bool:
    node = table.parent
    while node is not None:
        if isinstance(node, exp.Query):
            with_ = node.args.get("with_")
            if with_ is not None and any(cte.alias == table.name for cte in with_.expressions):
                return True
        node = node.parent
    return False
