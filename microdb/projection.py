"""Projection of sources into entity micro-databases.

Set-based: each table of the entity type is read once (filters pushed down to the
source), every row is labelled with its entity key by joining down the parent chain in
DuckDB, rows are ordered by entity, and the store receives one slice per entity. The
number of source queries depends on the number of tables, never on the number of
entities. Rows of an entity are ordered by the table's primary key, so a micro-database
has the same bytes however the sources were read.

Partitioned sync (:meth:`Projector.sync_partitioned`) splits the keys into the store's key
partitions and runs :func:`run_partition` once per partition on an
:class:`~microdb.executors.Executor` (in process, spawned processes or Ray tasks): each
reads only its partition's rows (key lists pushed down to the sources) and publishes the
partition in one atomic store write, so a failed partition never shows half its entities.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.entity import KEY_SEPARATOR, EntityTable, EntityType
from microdb.errors import EntityNotFound, SchemaError
from microdb.sources import KeyIn, Since
from microdb.sourceset import SourceSet
from microdb.store import SealedItem, SealedStore, partition_ids

if TYPE_CHECKING:
    from microdb.executors import Executor

KEY_COL = "__mdb_key"
ORD_COL = "__mdb_ord"
ROW_COL = "__mdb_row"

Progress = Callable[[str, int, int], None]


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class Selection:
    """Which entities to project: all, explicit keys, or those changed since a time."""

    keys: tuple[str, ...] | None = None
    changed_since: datetime | None = None

    @property
    def is_all(self) -> bool:
        return self.keys is None and self.changed_since is None


@dataclass
class SyncResult:
    entity_type: str
    entities: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    orphans: dict[str, int] = field(default_factory=dict)
    missing_keys: list[str] = field(default_factory=list)
    references: dict[str, int] = field(default_factory=dict)
    source_queries: int = 0
    seconds: float = 0.0
    read_seconds: float = 0.0
    partitions: list = field(default_factory=list)  # PartitionResult per partition (partitioned sync)

    @property
    def entities_per_second(self) -> float:
        return self.entities / self.seconds if self.seconds else 0.0


def key_strings(table: pa.Table, columns: tuple[str, ...]) -> pa.Array:
    """The canonical text key of each row (composite keys joined with '/')."""
    parts = [pc.cast(table.column(c), pa.string()) for c in columns]
    if len(parts) == 1:
        arr = parts[0]
    else:
        arr = pc.binary_join_element_wise(*parts, KEY_SEPARATOR)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


class Projector:
    """Projects one entity type from a :class:`SourceSet` into a :class:`SealedStore`."""

    def __init__(self, etype: EntityType, sources: SourceSet, store: SealedStore) -> None:
        self.etype = etype
        self.sources = sources
        self.store = store
        self._key: tuple[str, ...] | None = None
        self._schemas: dict[str, pa.Schema] = {}

    # schema resolution --------------------------------------------------------------------
    def resolve(self) -> tuple[str, ...]:
        """Check every table and column against the source catalogs; return the key columns."""
        if self._key is not None:
            return self._key
        problems: list[str] = []
        where = f"entities.{self.etype.name}"
        for t in self.etype.tables:
            info = self.sources.catalog(t.source).table(t.table)
            names = {c.name for c in info.columns}
            cols = list(t.projection) if t.projection else [c.name for c in info.columns]
            for c in cols:
                if c not in names:
                    problems.append(f"{where}.tables.{t.name}.columns: {t.qualified} has no column {c!r}")
            for c in t.columns:
                if c not in names:
                    problems.append(f"{where}.tables.{t.name}.join: {t.qualified} has no column {c!r}")
                elif c not in cols:
                    cols.append(c)
            if t.watermark and t.watermark not in names:
                problems.append(f"{where}.tables.{t.name}.watermark: {t.qualified} has no column {t.watermark!r}")
            if t.parent is not None:
                parent = self.etype.table(t.parent)
                pinfo = self.sources.catalog(parent.source).table(parent.table)
                pnames = {c.name for c in pinfo.columns}
                for c in t.parent_columns:
                    if c not in pnames:
                        problems.append(f"{where}.tables.{t.name}.join: parent {parent.qualified} has no column {c!r}")
            self._schemas[t.name] = pa.schema([pa.field(c, info.column(c).type) for c in cols if c in names])
        root = self.etype.root_table
        rinfo = self.sources.catalog(root.source).table(root.table)
        key = self.etype.key or rinfo.primary_key
        if not key:
            problems.append(
                f"{where}: root table {root.qualified} has no primary key; declare one in the source "
                f"or set {where}.key = [\"column\"]"
            )
        else:
            for c in key:
                if c not in {col.name for col in rinfo.columns}:
                    problems.append(f"{where}.key: {root.qualified} has no column {c!r}")
        for r in self.etype.references:
            info = self.sources.catalog(r.source).table(r.table)
            names = {c.name for c in info.columns}
            for c in r.projection or ():
                if c not in names:
                    problems.append(f"{where}.references.{r.name}.columns: {r.source}.{r.table} has no column {c!r}")
        if problems:
            raise SchemaError("entity type does not match the sources:\n" + "\n".join(f"  {p}" for p in problems))
        # the parent side of each join must be projected too
        for t in self.etype.tables:
            if t.parent is not None:
                ps = self._schemas[t.parent]
                pinfo = self.sources.catalog(self.etype.table(t.parent).source).table(self.etype.table(t.parent).table)
                for c in t.parent_columns:
                    if ps.get_field_index(c) < 0:
                        self._schemas[t.parent] = ps.append(pa.field(c, pinfo.column(c).type))
                        ps = self._schemas[t.parent]
        rs = self._schemas[root.name]
        for c in key:
            if rs.get_field_index(c) < 0:
                self._schemas[root.name] = rs.append(pa.field(c, rinfo.column(c).type))
                rs = self._schemas[root.name]
        self._key = tuple(key)
        return self._key

    def table_schemas(self) -> dict[str, pa.Schema]:
        self.resolve()
        return dict(self._schemas)

    # reading ------------------------------------------------------------------------------
    def typed_keys(self, keys: tuple[str, ...]) -> pa.Table:
        """Text keys as a typed table of the root key columns."""
        key = self.resolve()
        schema = self._schemas[self.etype.root]
        parts = [k.split(KEY_SEPARATOR, len(key) - 1) for k in keys]
        cols = {}
        for i, c in enumerate(key):
            values = [p[i] if len(p) == len(key) else None for p in parts]
            try:
                cols[c] = pa.array(values, pa.string()).cast(schema.field(c).type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                bad = next(k for k, p in zip(keys, parts) if len(p) != len(key) or not _castable(p[i], schema.field(c).type))
                raise EntityNotFound(
                    f"{self.etype.name}/{bad}: not a valid key (key {', '.join(key)} of type "
                    f"{', '.join(str(schema.field(k).type) for k in key)})"
                ) from None
        return pa.table(cols)

    def _read(self, t: EntityTable, key_in: KeyIn | None, since: Since | None = None) -> pa.Table:
        schema = self._schemas[t.name]
        return self.sources[t.source].read(t.table, columns=schema.names, key_in=key_in, since=since)

    def read(self, selection: Selection, progress: Progress = _no_progress) -> dict[str, pa.Table]:
        """Read every table of the entity type for the selected entities (one pass each)."""
        key = self.resolve()
        keys = selection.keys
        if selection.changed_since is not None:
            keys = tuple(sorted(self.changed_keys(selection.changed_since)))
        out: dict[str, pa.Table] = {}
        total = len(self.etype.tables)
        for done, t in enumerate(self.etype.tables, 1):
            progress("reading sources", done - 1, total)
            if keys is None:
                out[t.name] = self._read(t, None)
                continue
            if t.parent is None:
                flt = KeyIn(key, self.typed_keys(keys)) if keys else None
            else:
                parent_rows = out[t.parent].select(list(t.parent_columns))
                flt = KeyIn(t.columns, _distinct(parent_rows).rename_columns(list(t.columns))) if parent_rows.num_rows else None
            out[t.name] = self._read(t, flt) if flt is not None else self._schemas[t.name].empty_table()
        return out

    def changed_keys(self, since: datetime) -> set[str]:
        """Keys of entities with any row whose watermark is after ``since``."""
        key = self.resolve()
        found: set[str] = set()
        for t in self.etype.tables:
            if not t.watermark:
                continue
            need = list(key) if t.parent is None else list(t.columns)
            rows = self.sources[t.source].read(t.table, columns=need, since=Since(t.watermark, since))
            cur = t
            while cur.parent is not None and rows.num_rows:
                parent = self.etype.table(cur.parent)
                vals = _distinct(rows.select(list(cur.columns))).rename_columns(list(cur.parent_columns))
                up = list(key) if parent.parent is None else list(parent.columns)
                cols = list(dict.fromkeys(list(cur.parent_columns) + up))
                rows = self.sources[parent.source].read(parent.table, columns=cols, key_in=KeyIn(cur.parent_columns, vals))
                cur = parent
            if rows.num_rows:
                found.update(key_strings(rows, key).to_pylist())
        return found

    # partitioning -------------------------------------------------------------------------
    def partition(self, raw: dict[str, pa.Table]) -> tuple[list[str], dict[str, tuple[pa.RecordBatch, np.ndarray]], dict[str, int]]:
        """Label rows with their entity and order them by entity.

        Returns the sorted entity keys, per table the entity-ordered batch and the row
        offsets of each entity (length n+1), and the number of orphan rows per table.
        """
        key = self.resolve()
        con = duckdb.connect(":memory:")
        try:
            root = self.etype.root_table
            rt = raw[root.name]
            rt = rt.append_column(KEY_COL, key_strings(rt, key))
            keys_sorted = pc.unique(rt.column(KEY_COL))
            keys_sorted = keys_sorted.take(pc.sort_indices(keys_sorted))
            ords = pa.table({KEY_COL: keys_sorted, ORD_COL: pa.array(np.arange(len(keys_sorted), dtype=np.int64))})
            con.register("__mdb_ords", ords)
            labelled: dict[str, pa.Table] = {root.name: rt}
            orphans: dict[str, int] = {}
            for t in self.etype.tables[1:]:
                parent = labelled[t.parent]
                child = raw[t.name]
                con.register("__mdb_parent", parent.select(list(t.parent_columns) + [KEY_COL]))
                con.register("__mdb_child", child.append_column(ROW_COL, pa.array(np.arange(child.num_rows, dtype=np.int64))))
                pj = ", ".join(f'{_q(pcol)} AS "__j{i}"' for i, pcol in enumerate(t.parent_columns))
                on = " AND ".join(f'c.{_q(ccol)} = p."__j{i}"' for i, ccol in enumerate(t.columns))
                res = con.sql(
                    f"SELECT c.*, p.{KEY_COL} FROM __mdb_child c JOIN "
                    f"(SELECT DISTINCT {pj}, {KEY_COL} FROM __mdb_parent) p ON {on}"
                ).to_arrow_table()
                linked = pc.count_distinct(res.column(ROW_COL)).as_py() if res.num_rows else 0
                orphans[t.name] = child.num_rows - linked
                labelled[t.name] = res.drop_columns([ROW_COL])
                con.unregister("__mdb_parent")
                con.unregister("__mdb_child")
            n = len(keys_sorted)
            out: dict[str, tuple[pa.RecordBatch, np.ndarray]] = {}
            for t in self.etype.tables:
                tbl = labelled[t.name]
                tbl = tbl.append_column(ROW_COL, pa.array(np.arange(tbl.num_rows, dtype=np.int64)))
                con.register("__mdb_t", tbl)
                order = "".join(f"t.{_q(c)}, " for c in self._row_order(t))
                res = con.sql(
                    f"SELECT t.* EXCLUDE ({KEY_COL}, {ROW_COL}), o.{ORD_COL} FROM __mdb_t t JOIN __mdb_ords o "
                    f"USING ({KEY_COL}) ORDER BY o.{ORD_COL}, {order}t.{ROW_COL}"
                ).to_arrow_table()
                con.unregister("__mdb_t")
                ordcol = res.column(ORD_COL).to_numpy()
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(np.bincount(ordcol, minlength=n), out=offsets[1:])
                schema = self._schemas[t.name]
                data = res.drop_columns([ORD_COL]).select(schema.names).cast(schema).combine_chunks()
                batches = data.to_batches()
                batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=schema)
                out[t.name] = (batch, offsets)
            return keys_sorted.to_pylist(), out, orphans
        finally:
            con.close()

    def _row_order(self, t: EntityTable) -> list[str]:
        """Columns that order an entity's rows of ``t``: its primary key, else every column."""
        names = self._schemas[t.name].names
        pk = self.sources.catalog(t.source).table(t.table).primary_key
        return list(pk) if pk and all(c in names for c in pk) else list(names)

    # the whole job -------------------------------------------------------------------------
    def sync(
        self,
        selection: Selection,
        progress: Progress = _no_progress,
        batch_size: int = 2000,
        *,
        atomic: bool = False,
        references: bool | None = None,
        record_state: bool = True,
    ) -> SyncResult:
        """Project the selected entities. ``atomic``: publish them in one store write;
        ``references``: (re)write reference tables (default: on a full sync or when absent)."""
        started = time.perf_counter()
        q0 = self.sources.queries()
        result = SyncResult(self.etype.name)
        progress("reading sources", 0, len(self.etype.tables))
        raw = self.read(selection, progress)
        progress("reading sources", len(self.etype.tables), len(self.etype.tables))
        result.read_seconds = time.perf_counter() - started
        keys, parts, orphans = self.partition(raw)
        result.orphans = {k: v for k, v in orphans.items() if v}
        if selection.keys is not None:
            present = set(keys)
            result.missing_keys = [k for k in selection.keys if k not in present]
        if references if references is not None else (selection.is_all or not self._references_present()):
            for r in self.etype.references:
                cols = list(r.projection) if r.projection else None
                ref = self.sources[r.source].read(r.table, columns=cols)
                self.store.put_reference(self.etype.name, r.name, ref)
                result.references[r.name] = ref.num_rows
        sids = {name: self.store.register_schema(batch.schema) for name, (batch, _) in parts.items()}
        result.rows = {name: batch.num_rows for name, (batch, _) in parts.items()}
        total = len(keys)
        progress("sealing entities", 0, total)
        self._write(keys, parts, sids, batch_size, progress, total, atomic)
        if record_state:
            self.store.set_sync_state(self.etype.name, time.time(), None, list(self.resolve()))
        result.entities = total
        result.source_queries = self.sources.queries() - q0
        result.seconds = time.perf_counter() - started
        return result

    # partitioned -------------------------------------------------------------------------
    def plan(self, selection: Selection) -> list[tuple[int, tuple[str, ...]]]:
        """The selected keys split into the store's key partitions: ``[(partition, keys)]``.

        A full sync reads only the root table's key columns here (one query)."""
        key = self.resolve()
        if selection.keys is not None:
            keys = pa.array(list(dict.fromkeys(selection.keys)), pa.string())
        elif selection.changed_since is not None:
            keys = pa.array(sorted(self.changed_keys(selection.changed_since)), pa.string())
        else:
            root = self.etype.root_table
            keys = pc.unique(key_strings(self.sources[root.source].read(root.table, columns=list(key)), key))
        keys = keys.take(pc.sort_indices(keys))
        ids = partition_ids(keys, self.store.partitions)
        order = np.argsort(ids, kind="stable")
        cuts = np.flatnonzero(np.diff(ids[order])) + 1
        return [(int(ids[g[0]]), tuple(keys.take(pa.array(g)).to_pylist())) for g in np.split(order, cuts) if len(g)]

    def sync_partitioned(self, selection: Selection, executor: Executor, root: Path,
                         progress: Progress = _no_progress,
                         task: Callable[[PartitionJob], PartitionResult] | None = None) -> SyncResult:
        """Sync one task per key partition on ``executor``; each task publishes its partition atomically.

        ``root`` is the workspace folder every worker opens (its config, key and store);
        ``task`` replaces :func:`run_partition` (a picklable wrapper around it)."""
        started = time.perf_counter()
        q0 = self.sources.queries()
        result = SyncResult(self.etype.name)
        plan = self.plan(selection)
        if selection.is_all or not self._references_present():
            for r in self.etype.references:
                ref = self.sources[r.source].read(r.table, columns=list(r.projection) if r.projection else None)
                self.store.put_reference(self.etype.name, r.name, ref)
                result.references[r.name] = ref.num_rows
        result.read_seconds = time.perf_counter() - started
        jobs = [PartitionJob(str(root), self.etype.name, part, keys) for part, keys in plan]
        progress("syncing partitions", 0, len(jobs))
        parts = executor.map_partitions(task or run_partition, jobs, lambda n, total: progress("syncing partitions", n, total))
        self.store.invalidate(self.etype.name)
        for pr in parts:
            result.entities += pr.entities
            result.missing_keys += pr.missing_keys
            result.source_queries += pr.source_queries
            for name, n in pr.rows.items():
                result.rows[name] = result.rows.get(name, 0) + n
            for name, n in pr.orphans.items():
                result.orphans[name] = result.orphans.get(name, 0) + n
        result.partitions = parts
        self.store.set_sync_state(self.etype.name, time.time(), None, list(self.resolve()))
        result.source_queries += self.sources.queries() - q0
        result.seconds = time.perf_counter() - started
        return result

    def _references_present(self) -> bool:
        return not self.etype.references or bool(self.store.references(self.etype.name))

    def _write(self, keys, parts, sids, batch_size, progress, total, atomic: bool = False) -> None:
        """Seal on this thread, write to the store on another (SQLite and sockets release the GIL).

        Entities go to the store in the groups it publishes atomically (batches for SQLite,
        whole key partitions for object storage), or all in one write when ``atomic``."""
        pending: queue.Queue = queue.Queue(maxsize=2)
        failure: list[BaseException] = []

        def writer() -> None:
            while (rows := pending.get()) is not None:
                if failure:
                    continue
                try:
                    self.store.write_rows(rows)
                except BaseException as exc:  # re-raised on the calling thread below
                    failure.append(exc)

        th = threading.Thread(target=writer, name="microdb-store-writer", daemon=True)
        th.start()
        names = list(parts)
        groups = [np.arange(total)] if atomic else self.store.write_groups(keys, batch_size)
        done = 0
        try:
            for group in groups:
                if failure:
                    break
                rows_out: list[tuple] = []
                items = []
                for n, i in enumerate(group.tolist(), 1):
                    batches = {}
                    rows = 0
                    for name in names:
                        batch, offsets = parts[name]
                        lo, hi = int(offsets[i]), int(offsets[i + 1])
                        batches[name] = (sids[name], batch.slice(lo, hi - lo))
                        rows += hi - lo
                    items.append(SealedItem(keys[i], batches, rows))
                    if len(items) == batch_size or n == len(group):
                        rows_out += self.store.seal_rows("entity", self.etype.name, items)
                        done += len(items)
                        items = []
                        progress("sealing entities", done, total)
                pending.put(rows_out)
        finally:
            pending.put(None)
            th.join()
        if failure:
            raise failure[0]


@dataclass(frozen=True)
class PartitionJob:
    """One key partition of a sync as sent to a worker: plain, picklable data."""

    root: str
    etype: str
    partition: int
    keys: tuple[str, ...]


@dataclass
class PartitionResult:
    """What a worker reports for its partition."""

    partition: int
    entities: int
    rows: dict[str, int]
    orphans: dict[str, int]
    missing_keys: list[str]
    source_queries: int
    seconds: float
    read_seconds: float
    worker: int
    store_requests: dict[str, int] = field(default_factory=dict)  # object-store API calls by operation


def run_partition(job: PartitionJob) -> PartitionResult:
    """Project one key partition and publish it in one atomic store write (runs in any worker).

    The worker opens the workspace's config, master key (``MICRODB_MASTER_KEY`` or the key
    file), sources and store itself; it writes no audit record (the driver does)."""
    from microdb.config import CONFIG_FILE, load_config
    from microdb.entity import entity_type
    from microdb.keys import Keyring, load_master_key
    from microdb.store import open_store

    root = Path(job.root)
    cfg = load_config(root / CONFIG_FILE)
    store = open_store(cfg.store, root, Keyring(load_master_key(root / cfg.workspace.key_file)))
    sources = SourceSet(cfg, root)
    try:
        proj = Projector(entity_type(cfg, job.etype), sources, store)
        res = proj.sync(Selection(keys=job.keys), batch_size=cfg.store.batch_size, atomic=True,
                        references=False, record_state=False)
    finally:
        sources.close()
        store.close()
    return PartitionResult(job.partition, res.entities, res.rows, res.orphans, res.missing_keys, res.source_queries,
                           res.seconds, res.read_seconds, os.getpid(), dict(getattr(store, "requests", {})))


def _distinct(table: pa.Table) -> pa.Table:
    return table.group_by(table.column_names).aggregate([]) if table.num_rows else table


def _castable(value: str, typ: pa.DataType) -> bool:
    try:
        pa.array([value], pa.string()).cast(typ)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
