"""Synthesis on a workspace: training sets from the masked store, fit, sample into sealed
bundles, evaluation against held-out entities, the charter gate, retirement.

Models learn from what one role sees (``[synth] role``): columns the role sees as they
are are learned; key and link columns are carried as the role sees them (tokens) only to
rebuild the tree; every other column (masked, redacted, tokenized PII) reaches the
generator as nulls and is marked excluded, so generators fill it with made-up values.
Columns withheld from the role do not exist for synthesis. Train and holdout entities are
split by a keyed hash of the entity key, fixed by the fit seed, so a report can find the
holdout again without storing real keys in the model.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import ConfigError, EntityNotFound, MicrodbError, PolicyError, SchemaError
from microdb.projection import Progress, _no_progress
from synth.bundle import Bundle, export_bundle, read_manifest, sha256_file, shred, verify_files, write_bundle, write_manifest
from synth.schema import ReferenceLink, SynthSchema, SynthTable

if TYPE_CHECKING:
    from microdb.entity import EntityType
    from microdb.workspace import Workspace

TRAINING_FILE = "training.json"


@dataclass
class TrainingSet:
    """Entity slices as one role sees them, ready for a generator."""

    schema: SynthSchema
    tables: dict[str, pa.Table]
    references: dict[str, pa.Table]
    keys: list[str]
    role: str
    excluded: list[str]
    withheld: list[str]


# ---------------------------------------------------------------------------------- splits

def holdout_flags(ws: Workspace, etype: str, keys: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """True for keys in the holdout: a keyed hash of the key below ``fraction``."""
    from masking.functions.prf import keyed_u64

    if not keys:
        return np.zeros(0, dtype=bool)
    u = keyed_u64(pa.array(list(keys), pa.string()), ws.keyring.derive(f"synth-split:{etype}:{seed}"))
    return (u.astype(np.float64) / 2.0**64) < fraction


def choose_keys(ws: Workspace, etype: str, part: str, fraction: float, seed: int,
                sample_from: Sequence[str] | int | None = None) -> list[str]:
    """Keys of the ``train`` or ``holdout`` part (of ``sample_from`` keys, or a seeded
    sample of that many, or every stored entity)."""
    if isinstance(sample_from, (list, tuple)):
        keys = [str(k) for k in sample_from]
        missing = [k for k in keys if ws.store.info(etype, k) is None]
        if missing:
            raise EntityNotFound(f"{etype}: {len(missing)} key(s) not in the store, e.g. {missing[:3]} "
                                 f"(run `microdb sync {etype} --keys ...`)")
    else:
        keys = ws.store.keys(etype)
        if isinstance(sample_from, int) and sample_from < len(keys):
            rng = np.random.default_rng(seed)
            keys = sorted(keys[i] for i in rng.choice(len(keys), size=sample_from, replace=False))
    flags = holdout_flags(ws, etype, keys, fraction, seed)
    want = part == "holdout"
    return [k for k, f in zip(keys, flags) if bool(f) == want]


# ---------------------------------------------------------------------------------- loading

def load_entities(ws: Workspace, et: EntityType, keys: Sequence[str], progress: Progress = _no_progress) -> dict[str, pa.Table]:
    """Raw tables of ``keys`` from the store, each tree table concatenated over entities."""
    parts: dict[str, list[pa.Table]] = {t.name: [] for t in et.tables}
    total = len(keys)
    for i, key in enumerate(keys):
        rec = ws.store.get(et.name, key)
        if rec is None:
            raise EntityNotFound(f"{et.name}/{key} is not in the store")
        for name, table in rec.tables.items():
            parts.setdefault(name, []).append(table)
        if i % 200 == 0 or i + 1 == total:
            progress("load", i + 1, total)
    out = {}
    for name, tables in parts.items():
        if not tables:
            raise SchemaError(f"{et.name}: table {name!r} has no stored rows or schema (sync the entity type)")
        out[name] = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    return out


def _load_job(job: tuple[str, str, list[str]]) -> dict[str, bytes]:
    """One executor task: a chunk of entities unsealed from the store, as Arrow IPC streams."""
    from microdb.executors import tables_to_ipc
    from microdb.workspace import Workspace, find_workspace

    root, etype, keys = job
    ws = Workspace(find_workspace(root))
    try:
        return tables_to_ipc(load_entities(ws, ws.entity_type(etype), keys))
    finally:
        ws.close()


def load_entities_on(executor: Any, ws: Workspace, et: EntityType, keys: Sequence[str],
                     progress: Progress = _no_progress) -> dict[str, pa.Table]:
    """:func:`load_entities` split into contiguous chunks run as executor tasks (same result)."""
    chunk = min(2000, max(50, -(-len(keys) // 16)))
    jobs = [(str(ws.root), et.name, list(keys[i:i + chunk])) for i in range(0, len(keys), chunk)]
    from microdb.executors import tables_from_ipc

    results = executor.map_partitions(_load_job, jobs, done=lambda k, total: progress("load", k, total))
    parts: dict[str, list[pa.Table]] = {}
    for result in results:
        for name, table in tables_from_ipc(result).items():
            parts.setdefault(name, []).append(table)
    return {name: pa.concat_tables(tables, promote_options="permissive").combine_chunks()
            for name, tables in parts.items()}


def _primary_key(table: pa.Table, preferred: Sequence[str]) -> tuple[str, ...]:
    """Columns that identify rows: ``preferred`` when unique, else the first unique non-null
    column whose name ends in 'id', else the first unique non-null column, else none."""
    def unique(cols: Sequence[str]) -> bool:
        if not cols or table.num_rows == 0:
            return False
        if any(table.column(c).null_count for c in cols):
            return False
        if len(cols) == 1:
            return pc.count_distinct(table.column(cols[0])).as_py() == table.num_rows
        return table.group_by(list(cols)).aggregate([]).num_rows == table.num_rows

    if preferred and unique(preferred):
        return tuple(preferred)
    candidates = [c for c in table.column_names if unique([c])]
    named = [c for c in candidates if c.lower().endswith("id")]
    pick = named or candidates
    return (pick[0],) if pick else ()


def build_schema(ws: Workspace, et: EntityType, tables: dict[str, pa.Table],
                 references: dict[str, pa.Table], exclude: set[str]) -> SynthSchema:
    """The entity tree as a generator sees it: parents and joins from the entity type, row
    keys from the data, links from ``[[relations]]`` and matching reference keys."""
    referenced: dict[str, list[str]] = {}
    for t in et.tables:
        if t.parent:
            referenced.setdefault(t.parent, [])
            referenced[t.parent] += [c for c in t.parent_columns if c not in referenced[t.parent]]
    synth_tables = []
    for t in et.tables:
        preferred = list(et.key or ()) if t.parent is None else []
        pk = _primary_key(tables[t.name], preferred or referenced.get(t.name, []))
        synth_tables.append(SynthTable(t.name, t.parent, t.columns, t.parent_columns, pk))
    root_key = tuple(et.key) if et.key else synth_tables[0].primary_key
    if not root_key:
        raise SchemaError(f"{et.name}: cannot tell the key of root table {et.root!r} (set entities.{et.name}.key)")
    by_source = {(t.source, t.table): t.name for t in et.tables}
    by_source.update({(r.source, r.table): r.name for r in et.references})
    links: list[ReferenceLink] = []
    for rel in ws.config.relations:
        child = by_source.get(tuple(rel.child.split(".", 1)))
        parent = by_source.get(tuple(rel.parent.split(".", 1)))
        if child is None or parent is None or not any(t.name == child for t in et.tables):
            continue
        own = et.table(child)
        if own.parent == parent and tuple(rel.columns) == own.columns:
            continue  # the tree join itself
        if parent == child:
            continue
        links.append(ReferenceLink(child, tuple(rel.columns), parent, tuple(rel.parent_columns)))
    schema = SynthSchema(root=et.root, key=root_key, tables=tuple(synth_tables), references=tuple(links),
                         exclude=frozenset(exclude))
    schema = schema.infer_references(tables, references)
    return schema.infer_order(tables)


def _null_like(column: pa.ChunkedArray) -> pa.Array:
    return pa.nulls(len(column), column.type)


def masked_view(ws: Workspace, et: EntityType, role: str, tables: dict[str, pa.Table],
                references: dict[str, pa.Table], extra_exclude: Sequence[str] = ()) -> TrainingSet:
    """What a generator may learn from ``tables`` as ``role`` sees them (see module doc)."""
    spec = ws.policies.role(role)
    raw_role = spec is None or spec.raw
    ws.policies.check(role, et.name, {n: t.column_names for n, t in tables.items()})
    if raw_role:
        from masking.pii import scan_tables

        pii = {f"{f.table}.{f.column}" for f in scan_tables(tables, sample=500) if f.pii}
        keep = lambda t, c: f"{t}.{c}" not in pii  # noqa: E731
        visible = tables
        withheld: list[str] = []
    else:
        def keep(t: str, c: str) -> bool:
            rule = spec.resolve(t, c)
            return rule is not None and rule.fn.name == "keep"
        visible, withheld = {}, []
        for name, table in tables.items():
            cols = [c for c in table.column_names if spec.resolve(name, c) is not None]
            withheld += [f"{name}.{c}" for c in table.column_names if c not in cols]
            visible[name] = table.select(cols)
    structure = build_schema(ws, et, visible, references, set())
    key_cols = {(t.name, c) for t in structure.tables for c in structure.key_columns(t.name)}
    key_cols |= {(link.table, c) for link in structure.references for c in link.columns}
    bad_extra = [x for x in extra_exclude if x.partition(".")[0] not in visible
                 or x.partition(".")[2] not in visible[x.partition(".")[0]].column_names]
    if bad_extra:
        raise ConfigError(f"synth.exclude: no such column(s) {bad_extra}")
    out, excluded = {}, set(extra_exclude)
    for name, table in visible.items():
        keys_here = [c for c in table.column_names if (name, c) in key_cols]
        masked_keys: dict[str, pa.Array] = {}
        if keys_here and not raw_role:
            try:
                masked = spec.apply({name: table.select(keys_here)}, ws.keyring.derive)
            except PolicyError as exc:
                raise PolicyError(f"synth: key columns of {name!r} cannot be masked for role {role!r} "
                                  f"outside one entity ({exc.message})") from None
            masked_keys = {c: masked.tables[name].column(c) for c in keys_here}
        arrays, names = [], []
        for c in table.column_names:
            if c in keys_here:
                arrays.append(masked_keys.get(c, table.column(c)))
            elif keep(name, c) and f"{name}.{c}" not in excluded:
                arrays.append(table.column(c))
            else:
                arrays.append(_null_like(table.column(c)))
                excluded.add(f"{name}.{c}")
            names.append(c)
        out[name] = pa.table(arrays, names=names)
    refs = references
    schema = replace(structure, exclude=frozenset(excluded))
    return TrainingSet(schema, out, refs, [], role, sorted(excluded), sorted(withheld))


def synth_role(ws: Workspace, role: str | None) -> str:
    return ws._role(role or ws.config.synth.role)


def training_set(ws: Workspace, etype: str, *, role: str | None = None, part: str = "train", seed: int = 0,
                 sample_from: Sequence[str] | int | None = None, fraction: float | None = None,
                 executor: Any = None, progress: Progress = _no_progress) -> TrainingSet:
    """The ``train`` or ``holdout`` entities of ``etype`` as the synth role sees them."""
    et = ws.entity_type(etype)
    role = synth_role(ws, role)
    fraction = ws.config.synth.holdout if fraction is None else fraction
    keys = choose_keys(ws, etype, part, fraction, seed, sample_from)
    if not keys:
        raise ConfigError(f"synth: the {part} set of {etype!r} is empty "
                          f"({ws.store.count(etype)} entities in the store; run `microdb sync {etype} --all`)")
    raw = load_entities(ws, et, keys, progress) if executor is None else load_entities_on(executor, ws, et, keys, progress)
    refs, _ = ws._references(et, role)
    ts = masked_view(ws, et, role, raw, refs, ws.config.synth.exclude)
    ts.keys = keys
    return ts


# ---------------------------------------------------------------------------------- fit

def fit(ws: Workspace, etype: str, *, generator: str = "copula", params: dict[str, Any] | None = None,
        seed: int = 0, sample_from: Sequence[str] | int | None = None, role: str | None = None,
        constraints: Sequence[str] = (), out: Path | None = None, executor: Any = None,
        progress: Progress = _no_progress) -> Path:
    """Fit ``generator`` on the training entities of ``etype``; save the model; return its folder
    (``executor``: unseal the training entities in parallel tasks; same model)."""
    from lineage.events import DatasetRef, MicrodbRunFacet
    from synth.generators import get_generator

    role_name = synth_role(ws, role)
    merged = {**ws.config.synth.params.get(generator, {}), **(params or {})}
    all_constraints = list(ws.config.synth.constraints.get(etype, [])) + list(constraints)
    gen = get_generator(generator, **merged)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    out = Path(out) if out else ws.root / ws.config.synth.models_dir / f"{etype}-{generator}-{stamp}"
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: model folder exists and is not empty (choose another -o)")
    policy_hash = ws.policies.fingerprint(role_name)
    sync_state = ws.store.sync_state(etype) or {}
    started = time.perf_counter()
    emitter = ws.lineage()
    facet = MicrodbRunFacet(policy_hash=policy_hash, generator=generator, parameters=merged, seed=seed,
                            source_watermark=sync_state.get("watermark"))
    run_ctx = emitter.run(f"synth.fit.{etype}", [], [DatasetRef(f"microdb://{ws.root}", f"models/{out.name}")], {"microdb": facet}) if emitter else None
    try:
        with run_ctx or nullcontext():
            ts = training_set(ws, etype, role=role_name, part="train", seed=seed, sample_from=sample_from,
                              executor=executor, progress=progress)
            if run_ctx:  # the tables as the generator saw them (masked view), with their schemas
                for name, table in ts.tables.items():
                    run_ctx.add_input(DatasetRef.from_arrow(f"microdb://{ws.root}", f"store/{etype}/{name}", table.schema))
            progress("fit", 0, 1)
            gen.fit(ts.schema, ts.tables, ts.references, seed=seed, constraints=all_constraints)
            progress("fit", 1, 1)
            gen.save(out)
            privacy = getattr(gen, "privacy", None)
            info = {
                "entity_type": etype, "generator": generator, "params": gen.params, "seed": seed, "role": role_name,
                "policy_hash": policy_hash, "holdout": ws.config.synth.holdout,
                "sample_from": sample_from if not isinstance(sample_from, tuple) else list(sample_from),
                "training_entities": len(ts.keys), "excluded_columns": ts.excluded, "withheld_columns": ts.withheld,
                "constraints": all_constraints, "source_watermark": sync_state.get("watermark"),
                "last_sync": sync_state.get("last_sync"), "privacy": privacy,
                "fit_seconds": round(time.perf_counter() - started, 3),
                "lineage_run": run_ctx.run_id if run_ctx else None, "fitted_at": time.time(),
            }
            (out / TRAINING_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    except BaseException as exc:
        ws.record("synth.fit", "error", role=role_name, entity=f"{etype}/*",
                  error=getattr(exc, "message", str(exc)), details={"generator": generator})
        raise
    ws.record("synth.fit", role=role_name, entity=f"{etype}/*", rows=sum(t.num_rows for t in ts.tables.values()),
              details={"generator": generator, "model": str(out), "entities": len(ts.keys), "seed": seed,
                       "policy_hash": policy_hash, "epsilon": (privacy or {}).get("epsilon")})
    return out


def read_training(model: Path) -> dict[str, Any]:
    path = Path(model) / TRAINING_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{model}: not a model fitted by `microdb synth fit` (no {TRAINING_FILE})") from None


def _model_hashes(model: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(Path(model).iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------- sample

def _sample_tables(ws: Workspace, gen: Any, model: Path, entities: int, seed: int, conds: list[Any],
                   executor: Any, progress: Progress) -> dict[str, pa.Table]:
    """Sample in shards by seed stream (see :mod:`synth.shards`): in this process, or one
    task per shard on ``executor``; the same bundle either way."""
    from synth import shards

    plan = shards.plan(int(entities), int(seed), ws.config.synth.shard_entities)
    if executor is None:
        parts = []
        for i, (n, s) in enumerate(plan):
            parts.append(gen.sample(n, seed=s, conditions=conds))
            progress("sample", i + 1, len(plan))
    else:
        jobs = [(str(model), n, s, tuple((c.table, c.column, c.value, c.share) for c in conds)) for n, s in plan]
        from microdb.executors import tables_from_ipc

        results = executor.map_partitions(shards.sample_job, jobs, done=lambda k, total: progress("sample", k, total))
        parts = [tables_from_ipc(r) for r in results]
    return shards.merge(gen, parts)


def sample(ws: Workspace, model: Path, *, entities: int, seed: int = 0, conditions: Sequence[str] = (),
           share: float = 1.0, out: Path | None = None, evaluate: bool | None = None,
           executor: Any = None, progress: Progress = _no_progress) -> Bundle:
    """Sample ``entities`` new entities into a sealed bundle, evaluate it against the
    charter when one is configured, and register it."""
    from lineage.events import DatasetRef, MicrodbRunFacet
    from synth.conditions import parse_condition
    from synth.generators import load_generator
    from synth.integrity import check_integrity

    charter_due = evaluate if evaluate is not None else bool(ws.config.charter.thresholds)
    model = Path(model)
    training = read_training(model)
    etype = training["entity_type"]
    et = ws.entity_type(etype)
    role = training["role"]
    if ws.policies.fingerprint(role) != training["policy_hash"]:
        raise PolicyError(f"model {model}: role {role!r}'s masking policy changed since the model was fitted "
                          f"(fit again: `microdb synth fit {etype} ...`)")
    gen = load_generator(str(model))
    conds = [parse_condition(c, share) for c in conditions]
    bundle_id = uuid.uuid4().hex[:16]
    out = Path(out) if out else ws.root / ws.config.synth.bundles_dir / bundle_id
    emitter = ws.lineage()
    facet = MicrodbRunFacet(policy_hash=training["policy_hash"], generator=training["generator"],
                            parameters={**training["params"], "entities": entities,
                                        "conditions": [c for c in conditions], "share": share,
                                        "shard_entities": ws.config.synth.shard_entities},
                            seed=seed, source_watermark=training.get("source_watermark"), bundle=bundle_id)
    run_ctx = emitter.run(f"synth.sample.{etype}", [DatasetRef(f"microdb://{ws.root}", f"models/{model.name}")],
                          [DatasetRef(f"microdb://{ws.root}", f"bundles/{bundle_id}")], {"microdb": facet}) if emitter else None
    started = time.perf_counter()
    try:
        with run_ctx or nullcontext():
            progress("sample", 0, 1)
            tree = _sample_tables(ws, gen, model, int(entities), int(seed), conds, executor, progress)
            refs, _ = ws._references(et, role)
            schema = gen.schema
            integrity = check_integrity(schema, tree, refs)
            if not integrity.ok:
                raise SchemaError(f"synth sample: integrity check failed ({integrity.ri_percent:.2f}% RI): "
                                  + "; ".join(integrity.violations[:5]))
            used_refs = {link.ref_table for link in schema.references if not schema.is_tree_table(link.ref_table)}
            tables = {**{t.name: tree[t.name] for t in schema.tables}, **{n: refs[n] for n in sorted(used_refs)}}
            manifest: dict[str, Any] = {
                "format": 1, "kind": "microdb.bundle", "entity_type": etype, "created_at": time.time(),
                "generator": training["generator"], "parameters": training["params"], "seed": seed,
                "entities": int(entities), "shard_entities": ws.config.synth.shard_entities,
                "conditions": [{"table": c.table, "column": c.column, "value": c.value,
                                                           "share": c.share} for c in conds],
                "constraints": training["constraints"], "schema": schema.to_dict(),
                "model": {"path": str(model.resolve()), "files": _model_hashes(model), "fit_seed": training["seed"]},
                "training": {k: training.get(k) for k in ("role", "policy_hash", "holdout", "training_entities",
                                                          "excluded_columns", "withheld_columns", "source_watermark",
                                                          "last_sync", "fitted_at")},
                "privacy": training.get("privacy"),
                "integrity": {"ri_percent": integrity.ri_percent},
                "lineage": {"fit_run": training.get("lineage_run"), "sample_run": run_ctx.run_id if run_ctx else None},
                "sample_seconds": None, "status": "unevaluated" if charter_due else "released",
                "charter": None, "overrides": [],
            }
            if run_ctx:
                for name, table in tables.items():
                    run_ctx.add_output(DatasetRef.from_arrow(f"microdb://{ws.root}", f"bundles/{bundle_id}/{name}",
                                                             table.schema))
            key, wrapped = ws.bundles.new_key()
            manifest["sample_seconds"] = round(time.perf_counter() - started, 3)
            manifest = write_bundle(out, bundle_id, key, tables, manifest)
            ws.bundles.add(manifest, out, wrapped)
            bundle = Bundle(out, manifest, key)
    except BaseException as exc:
        ws.record("synth.sample", "error", role=role, entity=f"{etype}/*", error=getattr(exc, "message", str(exc)),
                  details={"model": str(model), "entities": entities, "seed": seed})
        raise
    ws.record("synth.sample", role=role, entity=f"{etype}/*", bundle=bundle_id,
              rows=sum(t.num_rows for t in tables.values()),
              details={"model": str(model), "entities": entities, "seed": seed, "path": str(out),
                       "conditions": list(conditions), "manifest_sha256": sha256_file(out / "manifest.json")})
    if charter_due:  # until the report decides, the bundle stays 'unevaluated' (unusable)
        report(ws, bundle.id, progress=progress)
        bundle = open_bundle(ws, bundle.id, for_release=False)
    return bundle


def drift(ws: Workspace, ref: str, other: str | None = None, threshold: float = 0.1) -> dict[str, Any]:
    """Columns whose distribution moved: bundle ``ref`` against bundle ``other``, or against
    the store's current training entities (a newer snapshot) when ``other`` is None."""
    from synth.evaluate import drift as measure

    a = open_bundle(ws, ref, for_release=False)
    schema = a.schema
    tree = lambda b: {t.name: b.tables()[t.name] for t in schema.tables}  # noqa: E731
    if other is not None:
        b = open_bundle(ws, other, for_release=False)
        if b.entity_type != a.entity_type:
            raise ConfigError(f"bundles {a.id} and {b.id} are of different entity types")
        against, label = tree(b), f"bundle {b.id}"
    else:
        training = a.manifest["training"]
        current = training_set(ws, a.entity_type, role=training["role"], part="train",
                               seed=a.manifest["model"]["fit_seed"])
        against, label = current.tables, "the store (current snapshot)"
    result = measure(schema, tree(a), against, threshold)
    ws.record("synth.drift", bundle=a.id, details={"against": label, "threshold": threshold})
    return {**result, "against": label}


# ---------------------------------------------------------------------------------- bundles

def open_bundle(ws: Workspace, ref: str, *, for_release: bool = True) -> Bundle:
    """A registered bundle by id, id prefix or folder; ``for_release`` refuses a rejected
    bundle without a recorded override."""
    from microdb.errors import AccessDenied

    entry = ws.bundles.find(ref)
    manifest = read_manifest(entry.path) if entry.path.exists() else entry.manifest
    if manifest.get("id") != entry.id:
        raise ConfigError(f"{entry.path}: its manifest names bundle {manifest.get('id')!r}, not {entry.id!r}")
    if manifest.get("status") != entry.status:
        raise ConfigError(f"bundle {entry.id}: manifest says {manifest.get('status')!r} but the register says "
                          f"{entry.status!r} (run `microdb bundle verify {entry.id}`)")
    if entry.status == "retired":
        raise AccessDenied(f"bundle {entry.id} was retired ({entry.reason}); its data is destroyed")
    if for_release and entry.status == "unevaluated":
        raise AccessDenied(f"bundle {entry.id} awaits its charter evaluation: run `microdb synth report {entry.id}`")
    if for_release and entry.status == "rejected" and not manifest.get("overrides"):
        raise AccessDenied(f"bundle {entry.id} was rejected by the charter; record an override first: "
                           f"`microdb bundle override {entry.id} --reason ...`")
    return Bundle(entry.path, manifest, ws.bundles.key(entry.id))


def _save(ws: Workspace, bundle_dir: Path, manifest: dict[str, Any]) -> None:
    if bundle_dir.exists():
        write_manifest(bundle_dir, manifest)
    ws.bundles.update(manifest)


def report(ws: Workspace, ref: str, *, out: Path | None = None, progress: Progress = _no_progress) -> dict[str, Any]:
    """Evaluate a bundle against the holdout entities of its training split; apply the
    charter; write ``report.json`` and ``report.html`` into the bundle folder (or ``out``)."""
    from lineage.charter import decide
    from synth.evaluate import EvalSpec, evaluate, render_html

    bundle = open_bundle(ws, ref, for_release=False)
    manifest = dict(bundle.manifest)
    training = manifest["training"]
    etype = bundle.entity_type
    seed = manifest["model"]["fit_seed"]
    schema = bundle.schema
    train = training_set(ws, etype, role=training["role"], part="train", seed=seed, progress=progress)
    holdout = training_set(ws, etype, role=training["role"], part="holdout", seed=seed, progress=progress)
    c = ws.config.charter
    spec = EvalSpec(target=c.target, level=c.level, protected=tuple(c.protected),
                    quasi_identifiers=tuple(c.quasi_identifiers), sensitive=c.sensitive, seed=seed,
                    conditioned=tuple(f"{x['table']}.{x['column']}" for x in manifest.get("conditions", [])))
    tables = bundle.tables()
    synthetic = {t.name: tables[t.name] for t in schema.tables}
    result = evaluate(schema, train.tables, holdout.tables, synthetic, train.references, spec,
                      progress=lambda step, done, total: progress(f"evaluate|{step}", done, total))
    decision = decide(c, result)
    out_dir = Path(out) if out else bundle.directory
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    render_html(result, out_dir / "report.html", decision=decision)
    manifest["charter"] = decision
    manifest["status"] = decision["status"]
    manifest["report"] = {"json": str(out_dir / "report.json"), "html": str(out_dir / "report.html")}
    if out_dir == bundle.directory:  # the reports become part of the bundle's listed files
        for name in ("report.json", "report.html"):
            manifest["files"][name] = {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
    _save(ws, bundle.directory, manifest)
    ws.record("synth.report", role=training["role"], bundle=bundle.id,
              details={"status": decision["status"], "failed": [x["metric"] for x in decision["checks"] if not x["ok"]]})
    ws.record("charter.decision", "ok" if decision["status"] == "released" else "refused",
              bundle=bundle.id, details=decision)
    return result


def override(ws: Workspace, ref: str, reason: str) -> dict[str, Any]:
    """Record an override that lets a rejected bundle be exported, provisioned or served."""
    if not reason.strip():
        raise ConfigError("an override needs a reason")
    bundle = open_bundle(ws, ref, for_release=False)
    manifest = dict(bundle.manifest)
    if manifest["status"] != "rejected":
        raise ConfigError(f"bundle {bundle.id} is {manifest['status']}: only rejected bundles need an override")
    from microdb.workspace import ACTOR

    manifest["overrides"] = list(manifest.get("overrides", [])) + [
        {"by": ACTOR.get() or ws.actor, "at": time.time(), "reason": reason}]
    _save(ws, bundle.directory, manifest)
    ws.record("charter.override", bundle=bundle.id, details={"reason": reason})
    return manifest


def export(ws: Workspace, ref: str, out: Path, fmt: str = "both", overwrite: bool = False) -> list[Path]:
    """Plain DuckDB/Parquet copies of a released (or overridden) bundle, with a manifest."""
    bundle = open_bundle(ws, ref)
    try:
        written = export_bundle(bundle, Path(out), fmt, overwrite)
    except MicrodbError as exc:
        ws.record("bundle.export", "error", bundle=bundle.id, error=exc.message)
        raise
    export_manifest = {"kind": "microdb.export", "bundle": bundle.id, "created_at": time.time(),
                       "source_manifest": bundle.manifest, "files": {p.relative_to(out).as_posix(): {
                           "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in written}}
    write_manifest(Path(out), export_manifest)
    manifest = dict(bundle.manifest)
    manifest["exports"] = list(manifest.get("exports", [])) + [
        {"path": str(Path(out).resolve()), "at": time.time(), "format": fmt, "files": export_manifest["files"]}]
    _save(ws, bundle.directory, manifest)
    ws.record("bundle.export", bundle=bundle.id, details={"path": str(out), "format": fmt,
                                                                        "files": len(written)})
    return written


def verify(ws: Workspace, ref: str) -> list[str]:
    """Problems with a bundle's files, manifest and register entry (empty: intact)."""
    entry = ws.bundles.find(ref)
    problems = []
    try:
        manifest = read_manifest(entry.path)
    except ConfigError as exc:
        return [exc.message]
    registered = entry.manifest
    for field in ("id", "entity_type", "seed", "generator", "status", "files", "tables"):
        if manifest.get(field) != registered.get(field):
            problems.append(f"manifest.json: {field!r} differs from the register's copy")
    if entry.status != "retired":
        problems += verify_files(entry.path, manifest)
    return problems


def retire(ws: Workspace, ref: str, reason: str) -> dict[str, Any]:
    """Destroy a bundle's key and files; keep its manifest with a tombstone."""
    if not reason.strip():
        raise ConfigError("retiring a bundle needs a reason")
    entry = ws.bundles.find(ref)
    if entry.status == "retired":
        raise ConfigError(f"bundle {entry.id} is already retired")
    manifest = read_manifest(entry.path) if entry.path.exists() else dict(entry.manifest)
    from microdb.workspace import ACTOR

    removed = shred(entry.path, manifest) if entry.path.exists() else 0
    for exp in manifest.get("exports", []):  # plain copies this workspace made go too
        removed += shred(Path(exp["path"]), exp)
        leftover = Path(exp["path"]) / "manifest.json"
        if leftover.exists():
            leftover.unlink()
    for name in ("report.json", "report.html"):
        path = entry.path / name
        if path.exists():
            path.unlink()
    manifest["status"] = "retired"
    manifest["tombstone"] = {"retired_at": time.time(), "reason": reason, "by": ACTOR.get() or ws.actor,
                             "files_removed": removed, "key_destroyed": True}
    ws.bundles.retire(entry.id, reason, manifest)
    if entry.path.exists():
        write_manifest(entry.path, manifest)
    ws.record("bundle.retire", bundle=entry.id, details={"reason": reason, "files_removed": removed})
    return manifest


def gc(ws: Workspace, now: float | None = None) -> list[str]:
    """Retire bundles older than ``[synth] retention_days``; return their ids."""
    days = ws.config.synth.retention_days
    if days is None:
        return []
    now = time.time() if now is None else now
    done = []
    for entry in ws.bundles.entries():
        if entry.status != "retired" and now - entry.created_at > days * 86400:
            retire(ws, entry.id, f"retention: older than {days:g} days")
            done.append(entry.id)
    return done

