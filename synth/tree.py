"""Entity trees as generators see them: features to learn per table, and the assembly of
sampled features into Arrow tables whose keys agree across every table.

``prepare`` turns training tables into a ``TreePlan`` (what to learn, how each column is
encoded) and per-table feature arrays. Besides the columns themselves a table's
features hold its number of children per child table (``#count:child``), for sequence
children the first order value (``#first:child``), for a sequence table the step from
the previous sibling relative to the room left (``#gap``) instead of the order column, for each reference link the
referenced row (``@ref:i``) and for each link to another tree table whether it is set
(``@link:i``). Generators learn and sample features only; ``finish`` fills free-text
and excluded columns, enforces constraints, sorts sequences, and assigns keys, foreign
keys and reference keys by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import ConfigError, SchemaError
from synth.conditions import Condition, Constraint, comparable, enforce, violations
from synth.fill import FakerPools, fill_column
from synth.integrity import match_rows
from synth.schema import SynthSchema
from synth.transform import (
    CategoricalCodec,
    Codec,
    NumericCodec,
    codec_from_meta,
    column_kind,
    from_numeric,
    is_integral_type,
    numeric_values,
    schema_from_text,
    schema_to_text,
    table_from_text,
    table_to_text,
)

SMALL_CATEGORICAL = 16
"""Categoricals with at most this many values come first in a row (they are what conditions target)."""


@dataclass
class Feature:
    """One learned quantity of a table row; ``role``: column, gap, ref, link, count or first."""

    name: str
    role: str
    codec: Codec
    source: str

    def to_meta(self) -> dict:
        return {"name": self.name, "role": self.role, "source": self.source, "codec": self.codec.to_meta()}

    @classmethod
    def from_meta(cls, meta: dict) -> Feature:
        return cls(meta["name"], meta["role"], codec_from_meta(meta["codec"]), meta["source"])


@dataclass
class TablePlan:
    """How one tree table is learned and rebuilt."""

    name: str
    schema: pa.Schema
    features: list[Feature]
    fill: list[str]
    keys: list[str]
    ref_keys: dict[int, pa.Table] = field(default_factory=dict)
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    order_high: float | None = None

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise SchemaError(f"synth: table {self.name!r} has no feature {name!r}")

    def has_feature(self, name: str) -> bool:
        return any(f.name == name for f in self.features)

    def to_meta(self) -> dict:
        return {"name": self.name, "schema": schema_to_text(self.schema),
                "features": [f.to_meta() for f in self.features], "fill": self.fill, "keys": self.keys,
                "ref_keys": {str(i): table_to_text(t) for i, t in self.ref_keys.items()},
                "limits": {k: list(v) for k, v in self.limits.items()}, "order_high": self.order_high}

    @classmethod
    def from_meta(cls, meta: dict) -> TablePlan:
        return cls(meta["name"], schema_from_text(meta["schema"]), [Feature.from_meta(f) for f in meta["features"]],
                   list(meta["fill"]), list(meta["keys"]),
                   {int(i): table_from_text(t) for i, t in meta["ref_keys"].items()},
                   {k: (float(v[0]), float(v[1])) for k, v in meta["limits"].items()}, meta.get("order_high"))


@dataclass
class TreePlan:
    """Plans of every tree table, in schema order."""

    tables: dict[str, TablePlan]
    orphans: dict[str, int] = field(default_factory=dict)

    def to_meta(self) -> dict:
        return {"tables": [p.to_meta() for p in self.tables.values()], "orphans": self.orphans}

    @classmethod
    def from_meta(cls, meta: dict) -> TreePlan:
        plans = [TablePlan.from_meta(p) for p in meta["tables"]]
        return cls({p.name: p for p in plans}, dict(meta.get("orphans", {})))


@dataclass
class TableData:
    """Training rows of one table (children grouped by parent, sequences in order)."""

    table: pa.Table
    parent: np.ndarray | None
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.table.num_rows


# ------------------------------------------------------------------ preparing training data


def _link_rows(schema: SynthSchema, data: Mapping[str, TableData], references: Mapping[str, pa.Table],
               table: pa.Table, link_index: int) -> np.ndarray:
    link = schema.references[link_index]
    target = data[link.ref_table].table if schema.is_tree_table(link.ref_table) else references[link.ref_table]
    return match_rows(table, link.columns, target, link.ref_columns)


def _group_starts(parent: np.ndarray, n_parents: int) -> np.ndarray:
    return np.searchsorted(parent, np.arange(n_parents), side="left")


def _ordered(schema: SynthSchema, tables: Mapping[str, pa.Table]) -> tuple[dict[str, TableData], dict[str, int]]:
    """Tables linked to their parents (orphans dropped), children grouped by parent."""
    data: dict[str, TableData] = {}
    orphans: dict[str, int] = {}
    for t in schema.tables:
        table = tables[t.name]
        if t.parent is None:
            data[t.name] = TableData(table, None)
            continue
        parent = match_rows(table, t.columns, data[t.parent].table, t.parent_columns)
        keep = parent >= 0
        if not keep.all():
            orphans[t.name] = int((~keep).sum())
            table, parent = table.filter(pa.array(keep)), parent[keep]
        if t.order_by:
            order = np.lexsort((comparable(table.column(t.order_by)), parent))
        else:
            order = np.argsort(parent, kind="stable")
        data[t.name] = TableData(table.take(pa.array(order)), parent[order])
    return data, orphans


def _after(parent: np.ndarray) -> np.ndarray:
    """How many later siblings each row has (rows grouped by parent)."""
    n = len(parent)
    ends = np.searchsorted(parent, parent, side="right")
    return ends - 1 - np.arange(n)


def _relative_gaps(values: np.ndarray, parent: np.ndarray, n_parents: int, high: float) -> np.ndarray:
    """Each sibling's step as a share of the room left below ``high``, times the number of
    siblings still to come plus one (NaN for the first sibling).

    ``g_i = (v_i - v_{i-1}) / (high - v_{i-1})`` never lets rebuilt values pass ``high``;
    scaling by the siblings left makes the target nearly stationary (for values spread
    evenly up to ``high`` it is about exponential with mean 1 at every position)."""
    previous = np.r_[np.nan, values[:-1]]
    room = high - previous
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(room > 0, (values - previous) / np.where(room > 0, room, 1.0), 0.0)
    gap = np.clip(gap, 0.0, 1.0) * (_after(parent) + 1)
    starts = _group_starts(parent, n_parents)
    gap[starts[starts < len(gap)]] = np.nan
    return gap


def _from_relative_gaps(gaps: np.ndarray, parent: np.ndarray, first: np.ndarray, high: float) -> np.ndarray:
    """Inverse of ``_relative_gaps``: the room left shrinks by ``(1 - g_i)`` at each sibling."""
    n = len(parent)
    if n == 0:
        return np.zeros(0)
    g = np.clip(np.nan_to_num(gaps, nan=0.0) / (_after(parent) + 1), 0.0, 1.0 - 1e-12)
    starts = np.r_[0, np.flatnonzero(np.diff(parent)) + 1]
    g[starts] = 0.0
    log_keep = np.cumsum(np.log1p(-g))
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    room = np.maximum(high - first[parent], 0.0) * np.exp(log_keep - log_keep[group_start])
    return np.minimum(high - room, np.maximum(high, first[parent]))


def _feature_order(f: Feature) -> tuple[int, int]:
    """Small categoricals first, fewest values first (flags are what conditions usually
    target, and an autoregressive model conditions later features on earlier ones)."""
    if f.role == "column" and isinstance(f.codec, CategoricalCodec) and f.codec.n_tokens <= SMALL_CATEGORICAL:
        return 0, f.codec.n_tokens
    return {"column": 1, "gap": 1, "ref": 2, "link": 3, "count": 4, "first": 5}[f.role], 0


def prepare(schema: SynthSchema, tables: Mapping[str, pa.Table], references: Mapping[str, pa.Table], *,
            learn: bool, n_bins: int = 32) -> tuple[TreePlan, dict[str, TableData]]:
    """Plan every tree table and compute its training features (``learn=False``: plan only)."""
    data, orphans = _ordered(schema, tables)
    plans: dict[str, TablePlan] = {}
    for t in schema.tables:
        td = data[t.name]
        table = td.table
        keys = [c for c in schema.key_columns(t.name) if c not in t.columns]
        for c in keys:
            ct = table.schema.field(c).type
            if not (pa.types.is_integer(ct) or pa.types.is_string(ct) or pa.types.is_large_string(ct)
                    or pa.types.is_decimal(ct)):
                raise SchemaError(f"synth: key column {t.name}.{c} has type {ct}; generators assign integer, "
                                  "decimal or string keys")
        links = schema.links_of(t.name)
        linked = {c for _, link in links for c in link.columns}
        taken = set(schema.key_columns(t.name)) | linked
        plan = TablePlan(t.name, table.schema, [], [], keys)
        for i, link in links:
            if not schema.is_tree_table(link.ref_table):
                ref = references[link.ref_table].select(list(link.ref_columns))
                if not learn:
                    plan.ref_keys[i] = ref.group_by(list(link.ref_columns), use_threads=False).aggregate([])
                    continue
                rows = _link_rows(schema, data, references, table, i)
                used = np.unique(rows[rows >= 0])
                plan.ref_keys[i] = ref.take(pa.array(used))
                index = np.searchsorted(used, np.clip(rows, 0, None))
                codes = pa.array(index, pa.int64(), mask=rows < 0)
                codec = CategoricalCodec.fit(codes)
                plan.features.append(Feature(f"@ref:{i}", "ref", codec, str(i)))
                td.features[f"@ref:{i}"] = codec.codes(codes)
            elif learn:
                present = pa.array(_link_rows(schema, data, references, table, i) >= 0)
                codec = CategoricalCodec.fit(present)
                plan.features.append(Feature(f"@link:{i}", "link", codec, str(i)))
                td.features[f"@link:{i}"] = codec.codes(present)
        for fld in table.schema:
            name = fld.name
            if name in taken:
                continue
            column = table.column(name)
            kind = column_kind(t.name, fld, column) if f"{t.name}.{name}" not in schema.exclude else "excluded"
            if kind in ("text", "excluded") or not learn:
                plan.fill.append(name)
                continue
            if kind == "numeric":
                values = numeric_values(column)
                finite = comparable(column)
                finite = finite[~np.isnan(finite)]
                if len(finite):
                    plan.limits[name] = (float(finite.min()), float(finite.max()))
                if name == t.order_by:
                    plan.order_high = float(np.nanmax(values)) if (~np.isnan(values)).any() else 0.0
                    gap = _relative_gaps(values, td.parent, data[t.parent].n, plan.order_high)
                    codec = NumericCodec.fit(gap, integral=False, n_bins=n_bins)
                    plan.features.append(Feature("#gap", "gap", codec, name))
                    td.features["#gap"] = gap
                    continue
                codec = NumericCodec.fit(values, integral=is_integral_type(fld.type), n_bins=n_bins)
                td.features[name] = values
            else:
                codec = CategoricalCodec.fit(column)
                td.features[name] = codec.codes(column)
            plan.features.append(Feature(name, "column", codec, name))
        if learn:
            for child in schema.children(t.name):
                counts = np.bincount(data[child.name].parent, minlength=td.n).astype(np.float64)
                codec = NumericCodec.fit(counts, integral=True, n_bins=n_bins)
                plan.features.append(Feature(f"#count:{child.name}", "count", codec, child.name))
                td.features[f"#count:{child.name}"] = counts
            for child in schema.children(t.name):
                if not child.order_by:
                    continue
                cd = data[child.name]
                starts = _group_starts(cd.parent, td.n)
                has = np.bincount(cd.parent, minlength=td.n) > 0
                ordvals = numeric_values(cd.table.column(child.order_by))
                first = np.where(has, ordvals[np.clip(starts, 0, max(cd.n - 1, 0))] if cd.n else np.nan, np.nan)
                integral = is_integral_type(cd.table.schema.field(child.order_by).type)
                codec = NumericCodec.fit(first, integral=integral, n_bins=n_bins)
                plan.features.append(Feature(f"#first:{child.name}", "first", codec, child.name))
                td.features[f"#first:{child.name}"] = first
        plan.features.sort(key=_feature_order)
        plans[t.name] = plan
    return TreePlan(plans, orphans), data


# ------------------------------------------------------------------ conditions


@dataclass(frozen=True)
class BoundCondition:
    """A condition resolved to a feature: ``target`` is a category code or a numeric value."""

    table: str
    feature: str
    target: float
    share: float
    index: int

    def mask(self, n: int, seed: int) -> np.ndarray:
        """Exactly ``round(share * n)`` rows chosen at random (the same for the same seed)."""
        rng = np.random.default_rng([seed, 104_729, self.index])
        chosen = np.zeros(n, dtype=bool)
        chosen[rng.permutation(n)[: int(round(self.share * n))]] = True
        return chosen


def bind_conditions(conditions: Sequence[Condition], schema: SynthSchema, plan: TreePlan) -> list[BoundCondition]:
    """Resolve conditions against a learned plan; unknown names and unseen values are errors."""
    bound: list[BoundCondition] = []
    seen: set[tuple[str, str]] = set()
    for i, c in enumerate(conditions):
        if c.table not in plan.tables:
            raise ConfigError(f"condition on {c.table}.{c.column}: no table {c.table!r} in the entity tree "
                              f"({list(plan.tables)})")
        tp = plan.tables[c.table]
        if c.column not in tp.schema.names:
            raise ConfigError(f"condition on {c.table}.{c.column}: no column {c.column!r} in {c.table!r}")
        if not 0 < float(c.share) <= 1:
            raise ConfigError(f"condition on {c.table}.{c.column}: share {c.share} must be in (0, 1]")
        if (c.table, c.column) in seen:
            raise ConfigError(f"condition on {c.table}.{c.column}: given twice")
        seen.add((c.table, c.column))
        if not tp.has_feature(c.column):
            raise ConfigError(f"condition on {c.table}.{c.column}: the column is a key, a link, excluded or free "
                              "text, so no model learns it")
        codec = tp.feature(c.column).codec
        field_type = tp.schema.field(c.column).type
        try:
            typed = pa.array([c.value]).cast(field_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(f"condition on {c.table}.{c.column}: value {c.value!r} does not fit "
                              f"{field_type}") from exc
        if isinstance(codec, CategoricalCodec):
            code = codec.code_of(typed[0].as_py()) if c.value is not None else codec.code_of(None)
            if code < 0:
                raise ConfigError(f"condition on {c.table}.{c.column}: value {c.value!r} never occurs in the "
                                  "training data, so the model cannot produce it")
            target = float(code)
        else:
            target = float(numeric_values(typed)[0])
            if np.isnan(target) or not codec.contains(target):
                raise ConfigError(f"condition on {c.table}.{c.column}: value {c.value!r} lies outside the values "
                                  "seen in training")
        bound.append(BoundCondition(c.table, c.column, target, float(c.share), i))
    return bound


def settle_condition(cond: BoundCondition, codec: Codec, values: np.ndarray, seed: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Make the share exact: chosen rows take the value, the others anything else."""
    mask = cond.mask(len(values), seed)
    out = values.copy()
    out[mask] = cond.target
    clash = ~mask & (out == cond.target)
    if clash.any() and isinstance(codec, CategoricalCodec) and codec.n_tokens > 1:
        p = codec.probs.copy()
        p[int(cond.target)] = 0.0
        p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / (len(p) - 1)) * (np.arange(len(p)) != cond.target)
        out[clash] = rng.choice(len(p), int(clash.sum()), p=p)
    elif clash.any() and isinstance(codec, NumericCodec) and codec.discrete and len(codec.values) > 1:
        others = codec.values[codec.values != cond.target]
        out[clash] = others[rng.integers(0, len(others), int(clash.sum()))]
    return out


# ------------------------------------------------------------------ from features to drafts


@dataclass
class Draft:
    """Sampled rows of one table before keys: values, parent rows, chosen reference rows."""

    n: int
    parent: np.ndarray | None
    columns: dict[str, pa.Array]
    ref_rows: dict[int, np.ndarray] = field(default_factory=dict)
    link_present: dict[int, np.ndarray] = field(default_factory=dict)


def expand(counts: np.ndarray) -> np.ndarray:
    """Parent index of each child for ``counts`` children per parent (grouped, in parent order)."""
    return np.repeat(np.arange(len(counts)), counts.astype(np.int64))


def decode(schema: SynthSchema, plan: TablePlan, features: Mapping[str, np.ndarray],
           parent: np.ndarray | None, parent_features: Mapping[str, np.ndarray] | None) -> Draft:
    """Sampled feature arrays of one table (rows grouped by parent) to a draft."""
    n = len(parent) if parent is not None else len(next(iter(features.values()))) if features else 0
    draft = Draft(n, parent, {})
    for f in plan.features:
        values = features[f.name]
        if f.role == "column":
            t = plan.schema.field(f.source).type
            if isinstance(f.codec, CategoricalCodec):
                draft.columns[f.source] = f.codec.decode(values).cast(t)
            else:
                draft.columns[f.source] = from_numeric(values, t)
        elif f.role == "gap":
            first = parent_features[f"#first:{plan.name}"]
            if np.isnan(first).any():
                fallback = np.nanmedian(first) if (~np.isnan(first)).any() else 0.0
                first = np.where(np.isnan(first), fallback, first)
            order = _from_relative_gaps(values.astype(np.float64), parent, first, plan.order_high)
            draft.columns[f.source] = from_numeric(order, plan.schema.field(f.source).type)
        elif f.role == "ref":
            cats = f.codec.decode(values)
            draft.ref_rows[int(f.source)] = cats.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        elif f.role == "link":
            present = f.codec.decode(values).fill_null(False)
            draft.link_present[int(f.source)] = present.to_numpy(zero_copy_only=False).astype(bool)
    return draft


# ------------------------------------------------------------------ finishing: keys, constraints, Arrow


def _key_values(n: int, t: pa.DataType) -> pa.Array:
    ids = pa.array(np.arange(1, n + 1, dtype=np.int64))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        width = max(len(str(n)), 6)
        return pc.utf8_lpad(pc.cast(ids, pa.string()), width, "0").cast(t)
    return ids.cast(t)


def _reorder(drafts: dict[str, Draft], schema: SynthSchema, values: dict[str, pa.Table]) -> None:
    """Sort every child table by parent (and order column), remapping its children's parents."""
    for t in schema.tables:
        d = drafts[t.name]
        if d.parent is None or d.n == 0:
            continue
        if t.order_by:
            order = np.lexsort((comparable(values[t.name].column(t.order_by)), d.parent))
        else:
            order = np.argsort(d.parent, kind="stable")
        if np.array_equal(order, np.arange(d.n)):
            continue
        inverse = np.empty_like(order)
        inverse[order] = np.arange(d.n)
        if values[t.name].num_columns:
            values[t.name] = values[t.name].take(pa.array(order))
        d.parent = d.parent[order]
        d.ref_rows = {i: r[order] for i, r in d.ref_rows.items()}
        d.link_present = {i: p[order] for i, p in d.link_present.items()}
        for child in schema.children(t.name):
            cd = drafts[child.name]
            if cd.parent is not None:
                cd.parent = inverse[cd.parent]


def _pick_links(schema: SynthSchema, drafts: dict[str, Draft], out: dict[str, pa.Table], index: int,
                rng: np.random.Generator) -> pa.Table:
    """Point each row at a row of the linked tree table sharing the closest common ancestor."""
    link = schema.references[index]
    source, target = drafts[link.table], drafts[link.ref_table]
    mine, theirs = schema.ancestors(link.table), schema.ancestors(link.ref_table)
    common = next(a for a in mine if a in theirs)

    def up(table: str, n: int) -> np.ndarray:
        idx = np.arange(n)
        for name in schema.ancestors(table)[: schema.ancestors(table).index(common)]:
            idx = drafts[name].parent[idx]
        return idx

    group_src, group_dst = up(link.table, source.n), up(link.ref_table, target.n)
    order = np.argsort(group_dst, kind="stable")
    sorted_dst = group_dst[order]
    lo = np.searchsorted(sorted_dst, group_src, side="left")
    hi = np.searchsorted(sorted_dst, group_src, side="right")
    count = hi - lo
    present = source.link_present.get(index, np.ones(source.n, dtype=bool)) & (count > 0)
    pick = np.where(present, order[np.clip(lo + (rng.random(source.n) * count).astype(np.int64), 0,
                                           max(target.n - 1, 0))], -1) if target.n else np.full(source.n, -1)
    keys = out[link.ref_table].select(list(link.ref_columns))
    return keys.take(pa.array(np.clip(pick, 0, None), mask=pick < 0)) if target.n else pa.table(
        {c: pa.nulls(source.n, keys.schema.field(c).type) for c in link.ref_columns})


def finish(schema: SynthSchema, plan: TreePlan, drafts: dict[str, Draft], *, seed: int,
           constraints: Sequence[Constraint] = ()) -> dict[str, pa.Table]:
    """Drafts to final tables: fill, enforce constraints, sort, assign keys and links."""
    rng = np.random.default_rng([seed, 15_485_863])
    pools = FakerPools(seed)
    values: dict[str, pa.Table] = {}
    weights: dict[str, tuple[pa.Array, np.ndarray]] = {}
    limits: dict[str, tuple[float, float]] = {}
    for t in schema.tables:
        tp, d = plan.tables[t.name], drafts[t.name]
        cols = dict(d.columns)
        for name in tp.fill:
            if name not in cols:
                    cols[name] = fill_column(name, tp.schema.field(name).type, d.n, rng, pools)
        names = [f.name for f in tp.schema if f.name in cols]
        values[t.name] = pa.table({c: cols[c] for c in names}, schema=pa.schema([tp.schema.field(c) for c in names]))
        for f in tp.features:
            if f.role == "column" and isinstance(f.codec, CategoricalCodec):
                weights[f"{t.name}.{f.source}"] = (f.codec.categories, f.codec.probs)
        limits.update({f"{t.name}.{k}": v for k, v in tp.limits.items()})
    parents = {t.name: drafts[t.name].parent for t in schema.tables}
    for _ in range(4):
        for c in constraints:
            enforce(c, schema, values, parents, rng, limits, weights)
        if not any(violations(c, schema, values, parents).any() for c in constraints):
            break
    _reorder(drafts, schema, values)
    parents = {t.name: drafts[t.name].parent for t in schema.tables}
    for c in constraints:
        bad = violations(c, schema, values, parents)
        if bad.any():
            raise ConfigError(f"synth sample: constraint {c.text!r} still broken on {int(bad.sum())} generated "
                              f"rows of {c.table} after enforcement; the constraints may contradict each other")

    out: dict[str, pa.Table] = {}
    for t in schema.tables:
        tp, d = plan.tables[t.name], drafts[t.name]
        cols = {c: values[t.name].column(c) for c in values[t.name].column_names}
        for c in tp.keys:
            cols[c] = _key_values(d.n, tp.schema.field(c).type)
        if t.parent is not None:
            parent_table = out[t.parent]
            for c, pc_name in zip(t.columns, t.parent_columns):
                cols[c] = parent_table.column(pc_name).take(pa.array(d.parent)).cast(tp.schema.field(c).type)
        out[t.name] = pa.table({c: cols[c] for c in cols}) if cols else pa.table({})
    for t in schema.tables:
        tp, d = plan.tables[t.name], drafts[t.name]
        cols = {c: out[t.name].column(c) for c in out[t.name].column_names}
        for i, link in schema.links_of(t.name):
            if schema.is_tree_table(link.ref_table):
                keys = _pick_links(schema, drafts, out, i, rng)
            else:
                rows = d.ref_rows.get(i)
                key_table = tp.ref_keys[i]
                if rows is None:
                    rows = rng.integers(0, key_table.num_rows, d.n) if key_table.num_rows else np.full(d.n, -1)
                keys = key_table.take(pa.array(np.clip(rows, 0, None), mask=rows < 0))
            for c, rc in zip(link.columns, link.ref_columns):
                cols[c] = keys.column(rc).cast(tp.schema.field(c).type)
        missing = [f.name for f in tp.schema if f.name not in cols]
        if missing:
            raise SchemaError(f"synth: table {t.name!r}: no values for columns {missing}")
        arrays = [cols[f.name].cast(f.type) if cols[f.name].type != f.type else cols[f.name] for f in tp.schema]
        out[t.name] = pa.Table.from_arrays([a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
                                            for a in arrays], schema=tp.schema)
    return out
