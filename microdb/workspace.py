"""The Python API: a workspace, its entities, SQL on them, sync, export and forget."""

from __future__ import annotations

import getpass
import os
from contextvars import ContextVar
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from microdb.config import CONFIG_FILE, Config, load_config
from microdb.entity import EntityType, entity_type, parse_address
from lineage.audit import AuditEvent, AuditLog
from microdb.errors import (AccessDenied, ConfigError, EntityNotFound, MicrodbError, PolicyError, QueryError, QueryRefused,
                            SourceError)
from microdb.hydrate import Hydrated, Pool, register_tables, write_database
from microdb.keys import Keyring, load_master_key
from microdb.policies import IMPLICIT_RAW_ROLE, Policies
from microdb.projection import Progress, Projector, Selection, SyncResult, _no_progress
from microdb.sources.base import display_url
from microdb.sourceset import SourceSet
from microdb.store import open_store

if TYPE_CHECKING:
    import polars

    from microdb.executors import Executor

WORKSPACE_ENV = "MICRODB_WORKSPACE"
# who is acting, when a server acts for an authenticated user (default: the OS user)
ACTOR: ContextVar[str | None] = ContextVar("microdb_actor", default=None)
# set to a list by a server: _ensure appends a warning for each entity served stale
STALE: ContextVar[list[str] | None] = ContextVar("microdb_stale", default=None)
FANOUT_KEY = "entity_key"


def find_workspace(path: str | os.PathLike[str] | None = None) -> Path:
    """The workspace folder: ``path``, else ``MICRODB_WORKSPACE``, else the current directory."""
    root = Path(path) if path is not None else Path(os.environ.get(WORKSPACE_ENV) or ".")
    root = root.expanduser().resolve()
    if not (root / CONFIG_FILE).exists():
        raise ConfigError(f"{root}: not a microdb workspace (no {CONFIG_FILE}; run `microdb init {root}`)")
    return root


class Workspace:
    """A folder with ``microdb.toml``, its key and its sealed store."""

    def __init__(self, root: Path, cfg: Config | None = None, actor: str | None = None) -> None:
        self.root = root
        self.config = cfg or load_config(root / CONFIG_FILE)
        self.keyring = Keyring(load_master_key(root / self.config.workspace.key_file))
        self.store = open_store(self.config.store, root, self.keyring)
        self.sources = SourceSet(self.config, root)
        q = self.config.query
        self.pool = Pool(q.pool_size, q.pool_memory_mb * 1024 * 1024, q.memory_limit)
        self.policies = Policies(self.config.roles, self.config.policies, self.keyring.derive)
        self.actor = actor or _os_user()
        a = self.config.audit
        self.audit = AuditLog(root / a.path, self.keyring.derive("audit"), max_bytes=a.max_bytes, fsync=a.fsync) if a.enabled else None
        self._lineage: Any = None
        self._types: dict[str, EntityType] = {}
        self._projectors: dict[str, Projector] = {}
        self._guards: dict[str, Any] = {}
        self._refs: dict[tuple[str, str], tuple[int, dict[str, pa.Table], list[str]]] = {}
        self._flight = [threading.Lock() for _ in range(64)]
        self._lock = threading.Lock()
        self._bundles: Any = None

    # audit --------------------------------------------------------------------------------
    def record(self, action: str, outcome: str = "ok", actor: str | None = None, **fields: Any) -> None:
        """Append one audit record (after the action); raises AuditError if it cannot be written."""
        if self.audit is not None:
            who = actor or ACTOR.get() or self.actor
            self.audit.append(AuditEvent(action=action, outcome=outcome, actor=who, **fields))

    def checked(self, etype: str, sql: str, entity: str, role: str) -> Any:
        """The guarded form of ``sql``; a refusal or syntax error is audited, then raised."""
        try:
            return self.guard(etype).check(sql)
        except (QueryRefused, QueryError) as exc:
            outcome = "refused" if isinstance(exc, QueryRefused) else "error"
            self.record("query", outcome, role=role, entity=entity, sql=sql, error=exc.message)
            raise

    def lineage(self) -> Any:
        """The OpenLineage emitter of this workspace (file, HTTP, or both), or None if disabled."""
        lc = self.config.lineage
        if lc.enabled and self._lineage is None:
            from lineage.events import LineageEmitter

            self._lineage = LineageEmitter(lc.namespace, self.root / lc.file if lc.file else None, lc.http_url)
        return self._lineage

    def _sync_run(self, et: EntityType, scope: str) -> Any:
        """A lineage run for a sync job: the sources' tables in, the entity store out."""
        from contextlib import nullcontext

        from lineage.events import DatasetRef, MicrodbRunFacet

        emitter = self.lineage()
        if emitter is None:
            return nullcontext()
        ns = lambda src: display_url(self.config.sources[src].url)  # noqa: E731
        inputs = [DatasetRef(ns(t.source), t.table) for t in et.tables]
        inputs += [DatasetRef(ns(r.source), r.table) for r in et.references]
        outputs = [DatasetRef(f"microdb://{self.root}", f"store/{et.name}")]
        facet = MicrodbRunFacet(parameters={"scope": scope, "entity_type": et.name})
        return emitter.run(f"sync.{et.name}", inputs, outputs, {"microdb": facet})

    # entity types ---------------------------------------------------------------------------
    def entity_type(self, name: str) -> EntityType:
        et = self._types.get(name)
        if et is None:
            et = self._types[name] = entity_type(self.config, name)
        return et

    def projector(self, name: str) -> Projector:
        with self._lock:
            p = self._projectors.get(name)
            if p is None:
                p = self._projectors[name] = Projector(self.entity_type(name), self.sources, self.store)
            return p

    # sync ----------------------------------------------------------------------------------
    def sync(
        self,
        etype: str,
        *,
        keys: Iterable[str] | None = None,
        changed_since: datetime | None = None,
        progress: Progress = _no_progress,
        executor: "str | Executor | None" = None,
    ) -> SyncResult:
        """Project entities from the sources into the store: all of them, some keys, or changed ones.

        ``executor`` (``"local"``, ``"process"``, ``"ray"`` or an :class:`~microdb.executors.Executor`)
        runs one task per key partition, each published atomically; default: one pass here."""
        selection = Selection(tuple(str(k) for k in keys) if keys is not None else None, changed_since)
        scope = "all" if selection.is_all else ("changed_since" if changed_since else "keys")
        try:
            with self._sync_run(self.entity_type(etype), scope):
                if executor is None:
                    result = self.projector(etype).sync(selection, progress, self.config.store.batch_size)
                else:
                    from microdb.executors import get_executor

                    ex = get_executor(executor) if isinstance(executor, str) else executor
                    try:
                        result = self.projector(etype).sync_partitioned(selection, ex, self.root, progress)
                    finally:
                        if ex is not executor:
                            ex.close()
        except MicrodbError as exc:
            self.record("sync", "error", entity=f"{etype}/*", error=exc.message, details={"scope": scope})
            raise
        self.record(
            "sync", entity=f"{etype}/*", rows=sum(result.rows.values()),
            details={"scope": scope, "entities": result.entities, "source_queries": result.source_queries,
                     "seconds": round(result.seconds, 3)},
        )
        self.pool.invalidate(etype)
        self._refs = {k: v for k, v in self._refs.items() if k[0] != etype}
        return result

    def _ensure(self, et: EntityType, key: str) -> int:
        """Make sure ``key`` is in the store per the type's on-demand mode; return its version."""
        info = self.store.info(et.name, key)
        fresh = info is not None and (
            et.on_demand == "never" or (et.on_demand == "ttl" and time.time() - info.synced_at <= et.ttl)
        )
        if fresh:
            return info.version
        if et.on_demand == "never":
            raise EntityNotFound(f"{et.name}/{key} is not in the store (on_demand = never: run `microdb sync {et.name}`)")
        with self._flight[hash((et.name, key)) % len(self._flight)]:
            again = self.store.info(et.name, key)
            if again is not None and info is not None and again.version != info.version:
                return again.version  # another caller projected it while we waited
            if again is not None and info is None:
                return again.version
            try:
                res = self.projector(et.name).sync(Selection(keys=(key,)))
            except SourceError as exc:  # the source is down: serve the sealed copy only if allowed
                where = f"{et.name}/{key}"
                if info is None or not et.serve_stale:
                    self.record("sync", "error", entity=where, error=exc.message, details={"scope": "on_demand"})
                    why = ("no sealed copy to fall back on" if info is None
                           else f"set serve_stale = true in [entities.{et.name}] to serve the sealed copy")
                    raise SourceError(f"{where}: on-demand refresh failed ({why}): {exc.message}") from exc
                age = round(time.time() - info.synced_at, 1)
                self.record("sync", "error", entity=where, error=exc.message,
                            details={"scope": "on_demand", "served_stale": True, "age_seconds": age})
                notes = STALE.get()
                if notes is not None:
                    notes.append(f"{where} is stale: served the copy synced {age:.0f}s ago (refresh failed: {exc.message})")
                return info.version
            self.record("sync", "error" if res.missing_keys else "ok", entity=f"{et.name}/{key}",
                        rows=sum(res.rows.values()), details={"scope": "on_demand", "source_queries": res.source_queries},
                        error="not found in the source" if res.missing_keys else None)
            if res.missing_keys:
                if info is not None:  # gone from the source: the stale copy goes too
                    self.store.forget(et.name, key)
                    self.pool.invalidate(et.name, key)
                raise EntityNotFound(f"{et.name}/{key} not found in {et.root_table.qualified}")
            self.pool.invalidate(et.name, key)
            now = self.store.info(et.name, key)
            assert now is not None
            return now.version

    # roles & masking -----------------------------------------------------------------------
    def _role(self, role: str | None) -> str:
        name = role or self.config.workspace.default_role or IMPLICIT_RAW_ROLE
        self.policies.role(name)  # unknown role: PolicyError before any data is read
        return name

    def _references(self, et: EntityType, role: str) -> tuple[dict[str, pa.Table], list[str]]:
        """Reference tables as ``role`` sees them, masked once per store version."""
        if not et.references:
            return {}, []
        version = self.store.reference_version(et.name)
        cached = self._refs.get((et.name, role))
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        with self._flight[hash(("references", et.name, role)) % len(self._flight)]:  # mask once, not per caller
            cached = self._refs.get((et.name, role))
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            raw = self.store.references(et.name)
            self.policies.check(role, et.name, {n: t.column_names for n, t in raw.items()})
            masked, withheld = self.policies.mask(role, raw, None)
            self._refs[(et.name, role)] = (version, masked, withheld)
        return masked, withheld

    def _load(self, et: EntityType, key: str, role: str) -> tuple[dict[str, pa.Table], list[str], int]:
        """Unseal one entity and mask it for ``role`` before anything reaches DuckDB."""
        rec = self.store.get(et.name, key)
        if rec is None:
            raise EntityNotFound(f"{et.name}/{key} is not in the store")
        self.policies.check(role, et.name, {n: t.column_names for n, t in rec.tables.items()})
        masked, withheld = self.policies.mask(role, rec.tables, f"{et.name}/{key}")
        refs, ref_withheld = self._references(et, role)
        own = sum(t.nbytes for t in masked.values())
        return {**masked, **refs}, sorted(withheld + ref_withheld), own

    def hydrate(self, address: str, role: str | None = None) -> Hydrated:
        etype, key = parse_address(address)
        et = self.entity_type(etype)
        role = self._role(role)
        version = self._ensure(et, key)
        return self.pool.get((etype, key, role), version, lambda: self._load(et, key, role))

    # queries -------------------------------------------------------------------------------
    def guard(self, etype: str) -> Any:
        g = self._guards.get(etype)
        if g is None:
            from masking.guard import SqlGuard

            g = self._guards[etype] = SqlGuard(self.entity_type(etype).table_names, max_rows=self.config.query.max_rows)
        return g

    def entity(self, address: str, role: str | None = None) -> "Entity":
        """One entity instance as ``role`` sees it, projecting it first if needed."""
        etype, key = parse_address(address)
        self.entity_type(etype)
        return Entity(self, etype, key, self._role(role))

    def query(
        self,
        etype: str,
        sql: str,
        *,
        keys: Iterable[str] | None = None,
        role: str | None = None,
    ) -> pa.Table:
        """Fan-out: run ``sql`` on many entities (all synced ones when ``keys`` is None) and union
        the results with an ``entity_key`` column first."""
        et = self.entity_type(etype)
        role = self._role(role)
        scope = f"{etype}/*"
        guarded = self.checked(etype, sql, scope, role)
        key_list = [str(k) for k in keys] if keys is not None else self.store.keys(etype)
        from masking.guard import run_guarded

        db = self.pool.database(role)
        timeout = self.config.query.timeout

        def one(key: str) -> pa.Table:
            version = self._ensure(et, key)
            entry = self.pool.get((etype, key, role), version, lambda: self._load(et, key, role)) if keys is not None else None
            if entry is not None:
                with entry.lock:
                    res = run_guarded(entry.cursor, guarded, timeout)
            else:
                tables, _, _ = self._load(et, key, role)
                cur = register_tables(db, tables)
                try:
                    res = run_guarded(cur, guarded, timeout)
                finally:
                    cur.close()
            return res.add_column(0, FANOUT_KEY, pa.array([key] * res.num_rows, pa.string()))

        workers = max(1, min(self.config.query.fanout_workers, len(key_list)))
        try:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(one, key_list))
        except MicrodbError as exc:
            self.record("query", "error", role=role, entity=scope, sql=guarded.sql, sql_hash=guarded.fingerprint,
                        error=exc.message, details={"entities": len(key_list)})
            raise
        if parts:
            out = pa.concat_tables(parts, promote_options="permissive")
        else:
            out = pa.table({FANOUT_KEY: pa.array([], pa.string())})
        self.record("query", role=role, entity=scope, sql=guarded.sql, sql_hash=guarded.fingerprint,
                    rows=out.num_rows, details={"entities": len(key_list)})
        return out

    def detokenize(self, role: str, column: str, values: list[str], entity: str | None = None) -> list[object]:
        """Original values of tokens a role sees in ``table.column`` (reversible functions only);
        allowed for roles granted it, and always audited."""
        table, _, col = column.rpartition(".")
        if not table:
            raise MicrodbError(f"give the column as TABLE.COLUMN, not {column!r}")
        spec = self.policies.role(role)
        try:
            if spec is None or spec.raw:
                raise MicrodbError(f"role {role!r} sees raw values: there is nothing to detokenize")
            out = spec.detokenize(table, col, pa.array(values, pa.string()), self.keyring.derive, entity_key=entity)
        except MicrodbError as exc:
            outcome = "refused" if isinstance(exc, (PolicyError, AccessDenied)) else "error"
            self.record("detokenize", outcome, role=role, entity=entity, error=exc.message,
                        details={"column": column, "values": len(values)})
            raise
        self.record("detokenize", role=role, entity=entity, rows=len(values), details={"column": column})
        return out.to_pylist()

    # export & forget -----------------------------------------------------------------------
    def export(self, address: str, path: Path, role: str | None = None, overwrite: bool = False) -> Path:
        """Write the entity, as ``role`` sees it, to a real ``.duckdb`` file."""
        tables = dict(self.hydrate(address, role).tables)
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise MicrodbError(f"{path} exists (pass --force to overwrite)")
            path.unlink()
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            tmp.unlink()
        write_database(str(tmp), tables)
        os.replace(tmp, path)
        role = self._role(role)
        self._export_manifest(address, path, role, tables)
        self.record("export", role=role, entity=address, rows=sum(t.num_rows for t in tables.values()),
                    details={"path": str(path)})
        return path

    def _export_manifest(self, address: str, path: Path, role: str, tables: dict[str, pa.Table]) -> Path:
        """``FILE.manifest.json`` beside an export: what it holds, as whom, from which store version."""
        import json

        from synth.bundle import sha256_file

        etype, key = parse_address(address)
        info = self.store.info(etype, key)
        state = self.store.sync_state(etype) or {}
        manifest = {
            "kind": "microdb.export", "entity": address, "role": role, "policy_hash": self.policies.fingerprint(role),
            "created_at": time.time(), "store_version": info.version if info else None,
            "synced_at": info.synced_at if info else None, "source_watermark": state.get("watermark"),
            "tables": {n: {"rows": t.num_rows, "columns": t.column_names} for n, t in tables.items()},
            "files": {path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}},
        }
        target = path.with_name(path.name + ".manifest.json")
        target.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return target

    def forget(self, address: str) -> bool:
        """Crypto-shred one entity: its data key and sealed record are destroyed."""
        etype, key = parse_address(address)
        self.entity_type(etype)
        gone = self.store.forget(etype, key)
        self.pool.invalidate(etype, key)
        if not gone:
            self.record("forget", "error", entity=address, error="not in the store")
            raise EntityNotFound(f"{address} is not in the store")
        self.record("forget", entity=address, details={"crypto_shredded": True})
        return gone

    # synthesis -----------------------------------------------------------------------------
    @property
    def bundles(self) -> Any:
        """The register of this workspace's synthetic bundles."""
        if self._bundles is None:
            from microdb.bundles import BundleRegister

            self._bundles = BundleRegister(self.root, self.keyring)
        return self._bundles

    def synth_fit(self, etype: str, generator: str = "copula", params: dict[str, Any] | None = None, *,
                  seed: int = 0, sample_from: list[str] | int | None = None, role: str | None = None,
                  constraints: Iterable[str] = (), out: str | os.PathLike[str] | None = None,
                  executor: Any = None, progress: Progress = _no_progress) -> Path:
        """Fit a generator on the (masked) training entities of ``etype``; returns the model folder."""
        from microdb import synthesis

        return synthesis.fit(self, etype, generator=generator, params=params, seed=seed, sample_from=sample_from,
                             role=role, constraints=list(constraints), out=Path(out) if out else None,
                             executor=executor, progress=progress)

    def synth_sample(self, model: str | os.PathLike[str], entities: int, *, seed: int = 0,
                     conditions: Iterable[str] = (), share: float = 1.0, out: str | os.PathLike[str] | None = None,
                     evaluate: bool | None = None, executor: Any = None, progress: Progress = _no_progress) -> Any:
        """Sample ``entities`` synthetic entities into a sealed, registered bundle (``executor``:
        an executor from :mod:`microdb.executors` runs one task per shard; same bundle)."""
        from microdb import synthesis

        return synthesis.sample(self, Path(model), entities=entities, seed=seed, conditions=list(conditions),
                                share=share, out=Path(out) if out else None, evaluate=evaluate, executor=executor,
                                progress=progress)

    def bundle(self, ref: str | os.PathLike[str]) -> Any:
        """A registered bundle (by id, id prefix or folder), ready to read or query."""
        from microdb import synthesis

        return synthesis.open_bundle(self, str(ref))

    def bundle_entity(self, ref: str | os.PathLike[str], key: str) -> "BundleEntity":
        """One synthetic entity of a bundle, queryable like a stored entity."""
        return BundleEntity(self, self.bundle(ref), str(key))

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
        if self._lineage is not None:
            self._lineage.close()
            self._lineage = None
        self.pool.close()
        self.sources.close()
        self.store.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Entity:
    """An entity instance as one role sees it."""

    def __init__(self, ws: Workspace, etype: str, key: str, role: str) -> None:
        self.workspace = ws
        self.type = etype
        self.key = key
        self.role = role

    @property
    def address(self) -> str:
        return f"{self.type}/{self.key}"

    def _entry(self) -> Hydrated:
        return self.workspace.hydrate(self.address, self.role)

    def tables(self) -> dict[str, pa.Table]:
        """Every table of the micro-database (reference tables included), masked for the role."""
        tables = dict(self._entry().tables)
        self.workspace.record("get", role=self.role, entity=self.address, rows=sum(t.num_rows for t in tables.values()))
        return tables

    @property
    def withheld(self) -> list[str]:
        """Columns withheld from this role because no policy classifies them yet."""
        return list(self._entry().withheld)

    def sql(self, sql: str) -> pa.Table:
        """Run a read-only query on this entity; returns an Arrow table."""
        from masking.guard import run_guarded

        ws = self.workspace
        guarded = ws.checked(self.type, sql, self.address, self.role)
        try:
            entry = self._entry()
            with entry.lock:
                out = run_guarded(entry.cursor, guarded, ws.config.query.timeout)
        except MicrodbError as exc:
            ws.record("query", "error", role=self.role, entity=self.address, sql=guarded.sql,
                      sql_hash=guarded.fingerprint, error=exc.message)
            raise
        ws.record("query", role=self.role, entity=self.address, sql=guarded.sql, sql_hash=guarded.fingerprint,
                  rows=out.num_rows)
        return out

    def pl(self, sql: str) -> "polars.DataFrame":
        """Like :meth:`sql`, as a polars DataFrame."""
        import polars as pl

        return pl.from_arrow(self.sql(sql))

    def export(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        return self.workspace.export(self.address, Path(path), self.role, overwrite)


class BundleEntity:
    """One synthetic entity of a bundle: its tables and read-only SQL through the guard."""

    def __init__(self, ws: Workspace, bundle: Any, key: str) -> None:
        self.workspace = ws
        self.bundle = bundle
        self.key = key
        self._tables = bundle.entity(key)

    @property
    def address(self) -> str:
        return f"bundle:{self.bundle.id}/{self.key}"

    def tables(self) -> dict[str, pa.Table]:
        self.workspace.record("get", entity=self.address, rows=sum(t.num_rows for t in self._tables.values()))
        return dict(self._tables)

    def sql(self, sql: str) -> pa.Table:
        from masking.guard import SqlGuard, run_guarded
        from microdb.hydrate import locked_database

        ws = self.workspace
        guard = SqlGuard(list(self._tables), max_rows=ws.config.query.max_rows)
        try:
            guarded = guard.check(sql)
        except (QueryRefused, QueryError) as exc:
            ws.record("query", "refused" if isinstance(exc, QueryRefused) else "error", entity=self.address,
                      sql=sql, error=exc.message)
            raise
        db = locked_database(ws.config.query.memory_limit)
        try:
            cur = register_tables(db, self._tables)
            out = run_guarded(cur, guarded, ws.config.query.timeout)
        finally:
            db.close()
        ws.record("query", entity=self.address, sql=guarded.sql, sql_hash=guarded.fingerprint, rows=out.num_rows)
        return out


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def open(path: str | os.PathLike[str] | None = None) -> Workspace:  # noqa: A001 - the public name
    """Open the workspace at ``path`` (default: ``MICRODB_WORKSPACE`` or the current directory)."""
    return Workspace(find_workspace(path))
