"""The systems of the peer benchmark, each run in its own spawned process (``run_task``):
SDV's HMASynthesizer, MOSTLY AI's open engine (TabularARGN) and our generators.

A task reads the training slices a case wrote as Parquet, fits, samples as many root rows
as it trained on, converts the result back to the training tables' Arrow types and writes
it beside ``result.json`` (fit and sample wall time, peak RSS of the process). Imports of
the system's library are not timed. Also here: the pandas and SDMetrics-metadata views
of entity slices that SDV, MOSTLY AI and SDMetrics take.
"""

from __future__ import annotations

import json
import os
import resource
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth.schema import SynthSchema

# ------------------------------------------------------------------ pandas and metadata views


def to_pandas(table: pa.Table):
    """A DataFrame the peers accept: decimals as float64, dates and timestamps as
    datetime64[ns] (SDV 2.0 reads datetime64[us] values as nanoseconds)."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        t = field.type
        if pa.types.is_decimal(t):
            column = column.cast(pa.float64())
        elif pa.types.is_date(t) or pa.types.is_timestamp(t):
            column = column.cast(pa.timestamp("ns"))
        columns.append(column)
    return pa.table(columns, names=table.column_names).to_pandas()


def _column_to_arrow(series, t: pa.DataType) -> pa.Array:
    import pandas as pd

    if pa.types.is_decimal(t):
        values = pa.array(pd.to_numeric(series, errors="coerce").astype("float64"), from_pandas=True)
        return pc.round(values, t.scale).cast(t, safe=False)
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        stamps = pa.array(pd.to_datetime(series, errors="coerce").astype("datetime64[us]"), from_pandas=True)
        return stamps.cast(t, safe=False)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        values = pa.array(pd.to_numeric(series, errors="coerce").astype("float64"), from_pandas=True)
        return (pc.round(values) if pa.types.is_integer(t) else values).cast(t, safe=False)
    if pa.types.is_boolean(t):
        mapped = series.map(lambda v: None if pd.isna(v) else str(v).lower() in ("true", "1", "1.0"))
        return pa.array(mapped.astype(object), type=pa.bool_(), from_pandas=True)
    text = series.astype(object).where(series.notna(), None).map(lambda v: v if v is None else str(v))
    return pa.array(text, type=t, from_pandas=True)


def to_arrow(frames: dict, like: dict[str, pa.Schema], schema: SynthSchema) -> dict[str, pa.Table]:
    """Peer output back to the training tables' Arrow types. Keys a peer emits as text
    (MOSTLY AI) are renumbered 1..n, and each child's foreign key follows its parent's."""
    import pandas as pd

    frames = {name: df.reset_index(drop=True).copy() for name, df in frames.items()}
    for t in schema.tables:
        df = frames[t.name]
        if t.parent is not None:
            parent = frames[t.parent]
            (pk,), (fk,) = t.parent_columns, t.columns
            if f"__old_{pk}" in parent:
                mapping = pd.Series(parent[pk].to_numpy(), index=parent[f"__old_{pk}"].astype(str).to_numpy())
                df[fk] = df[fk].astype(str).map(mapping)
        for key in t.primary_key:
            if not pd.api.types.is_integer_dtype(df[key]):
                df[f"__old_{key}"] = df[key]
                df[key] = np.arange(1, len(df) + 1)
    out = {}
    for name, arrow_schema in like.items():
        df = frames[name]
        out[name] = pa.table([_column_to_arrow(df[f.name], f.type) for f in arrow_schema], schema=arrow_schema)
    return out


def sdtypes(schema: SynthSchema, table: str, arrow_schema: pa.Schema) -> dict[str, dict]:
    """SDMetrics/SDV column types: keys and in-tree links are ids, links to shared lookup
    tables categorical (a peer must pick existing keys), the rest by Arrow type."""
    t = schema.table(table)
    ids = set(t.primary_key) | set(t.columns)
    lookups = set()
    for _, link in schema.links_of(table):
        (ids if schema.is_tree_table(link.ref_table) else lookups).update(link.columns)
    out = {}
    for f in arrow_schema:
        if f.name in ids:
            out[f.name] = {"sdtype": "id"}
        elif f.name in lookups or pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            out[f.name] = {"sdtype": "categorical"}
        elif pa.types.is_boolean(f.type):
            out[f.name] = {"sdtype": "boolean"}
        elif pa.types.is_date(f.type) or pa.types.is_timestamp(f.type):
            out[f.name] = {"sdtype": "datetime"}
        else:
            out[f.name] = {"sdtype": "numerical"}
    return out


def metadata(schema: SynthSchema, like: dict[str, pa.Schema]) -> dict:
    """The multi-table metadata dict SDV and SDMetrics read (single-column keys)."""
    tables = {}
    for t in schema.tables:
        entry: dict = {"columns": sdtypes(schema, t.name, like[t.name])}
        if t.primary_key:
            entry["primary_key"] = t.primary_key[0]
        tables[t.name] = entry
    relationships = [{"parent_table_name": t.parent, "child_table_name": t.name,
                      "parent_primary_key": t.parent_columns[0], "child_foreign_key": t.columns[0]}
                     for t in schema.tables if t.parent is not None]
    return {"tables": tables, "relationships": relationships, "METADATA_SPEC_VERSION": "V1"}


def depth(schema: SynthSchema) -> int:
    """Levels of the entity tree (root alone: 1)."""
    return max(len(schema.ancestors(t.name)) for t in schema.tables)


# ------------------------------------------------------------------ systems


def run_ours(schema: SynthSchema, train: dict[str, pa.Table], refs: dict[str, pa.Table], task: dict) -> dict:
    from synth.generators import get_generator

    gen = get_generator(task["generator"], **task.get("params", {}))
    t0 = time.perf_counter()
    gen.fit(schema, train, refs, seed=task["seed"])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = gen.sample(task["n"], seed=task["seed"] + 1)
    sample_s = time.perf_counter() - t0
    extra = {}
    privacy = getattr(gen, "privacy", None)
    if privacy:
        extra["privacy"] = {k: v for k, v in privacy.items() if isinstance(v, (int, float, str))}
    return {"fit_s": fit_s, "sample_s": sample_s, "tables": out, **extra}


def run_hma(schema: SynthSchema, train: dict[str, pa.Table], refs: dict[str, pa.Table], task: dict) -> dict:
    from sdv.errors import SynthesizerInputError
    from sdv.metadata import Metadata
    from sdv.multi_table import HMASynthesizer

    like = {name: table.schema for name, table in train.items()}
    md = Metadata.load_from_dict(metadata(schema, like))
    try:
        synth = HMASynthesizer(md, verbose=False)
    except SynthesizerInputError as exc:
        return {"status": "unsupported", "reason": f"{str(exc).splitlines()[0]} ({len(schema.tables)} tables, "
                                                  f"depth {depth(schema)}; refused when constructed)"}
    frames = {name: to_pandas(table) for name, table in train.items()}
    t0 = time.perf_counter()
    synth.fit(frames)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = synth.sample(num_rows=task["n"], main_table_name=schema.root)
    sample_s = time.perf_counter() - t0
    return {"fit_s": fit_s, "sample_s": sample_s, "tables": to_arrow(out, like, schema)}


def _engine_types(schema: SynthSchema, table: str, arrow_schema: pa.Schema) -> dict[str, str]:
    """Lookup-table links as categories (so generated keys exist); the rest left to the engine."""
    types = sdtypes(schema, table, arrow_schema)
    return {c: "TABULAR_CATEGORICAL" for c, v in types.items()
            if v["sdtype"] == "categorical" and pa.types.is_integer(arrow_schema.field(c).type)}


def run_mostly(schema: SynthSchema, train: dict[str, pa.Table], refs: dict[str, pa.Table], task: dict) -> dict:
    """Flat model for the root table, one sequential model per child table with the root
    as context; sampled children take the synthetic root rows as context."""
    if depth(schema) > 2:
        return {"status": "unsupported",
                "reason": "the open engine models one table or one table with its context table; "
                          f"a {depth(schema)}-level tree needs a driver around it"}
    from mostlyai.engine import TabularARGN

    like = {name: table.schema for name, table in train.items()}
    root = schema.table(schema.root)
    (root_key,) = root.primary_key
    frames = {name: to_pandas(table) for name, table in train.items()}
    settings = {"max_training_time": task["minutes"], "max_epochs": task.get("max_epochs", 100.0),
                "random_state": task["seed"], "device": "cpu", "verbose": 0}
    t0 = time.perf_counter()
    models = {schema.root: TabularARGN(tgt_primary_key=root_key,
                                      tgt_encoding_types=_engine_types(schema, root.name, like[root.name]),
                                      **settings).fit(frames[schema.root])}
    for t in schema.tables:
        if t.parent is None:
            continue
        child = frames[t.name]
        if t.order_by:
            child = child.sort_values([t.columns[0], t.order_by], kind="stable")
        models[t.name] = TabularARGN(tgt_context_key=t.columns[0], tgt_primary_key=t.primary_key[0],
                                     ctx_data=frames[schema.root], ctx_primary_key=root_key,
                                     tgt_encoding_types=_engine_types(schema, t.name, like[t.name]),
                                     ctx_encoding_types=_engine_types(schema, root.name, like[root.name]),
                                     **settings).fit(child)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sample = {"rare_category_replacement_method": "SAMPLE"}
    out = {schema.root: models[schema.root].sample(n_samples=task["n"], **sample)}
    for t in schema.tables:
        if t.parent is not None:
            out[t.name] = models[t.name].sample(ctx_data=out[schema.root], **sample)
    sample_s = time.perf_counter() - t0
    for model in models.values():
        model.close()
    return {"fit_s": fit_s, "sample_s": sample_s, "tables": to_arrow(out, like, schema)}


SYSTEMS = {"ours": run_ours, "hma": run_hma, "mostly": run_mostly}


# ------------------------------------------------------------------ the spawned process


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its waited-for children, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def read_input(directory: Path) -> tuple[SynthSchema, dict[str, pa.Table], dict[str, pa.Table]]:
    schema = SynthSchema.from_dict(json.loads((directory / "schema.json").read_text()))
    train = {t.name: pq.read_table(directory / "train" / f"{t.name}.parquet") for t in schema.tables}
    refs = {p.stem: pq.read_table(p) for p in sorted((directory / "references").glob("*.parquet"))}
    return schema, train, refs


def run_task(task: dict) -> None:
    """Entry point of a spawned process: run one system on one case, write its result."""
    out = Path(task["out"])
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    try:
        if task.get("threads"):
            import torch

            torch.set_num_threads(int(task["threads"]))
        schema, train, refs = read_input(Path(task["input"]))
        base_mb = peak_rss_mb()
        result = SYSTEMS[task["system"]](schema, train, refs, task)
        tables = result.pop("tables", None)
        if tables is not None:
            (out / "tables").mkdir(exist_ok=True)
            for name, table in tables.items():
                pq.write_table(table, out / "tables" / f"{name}.parquet")
        result.setdefault("status", "ok")
        result.update(peak_rss_mb=peak_rss_mb(), rss_before_fit_mb=base_mb, pid=os.getpid())
        (out / "result.json").write_text(json.dumps(result, indent=1))
    except BaseException:
        (out / "error.txt").write_text(traceback.format_exc())
        raise
