"""Feature frames: rows and whole entities as named numeric and categorical columns, and
the encoder that turns them into vectors for distances and models.

A row frame holds a table's learned columns plus those of its ancestors (a transaction
sees its account and its customer). An entity frame holds the root row plus, for every
other tree table, the entity's row count, the mean of each numeric column and the share
of each frequent category. The encoder is fitted on training data only: numbers go
through training's empirical CDF (interpolated, so [0, 1] and robust to heavy tails),
categories become one-hot columns scaled so that a mismatch weighs as much as the full
numeric range; nulls get an indicator column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.conditions import comparable
from synth.integrity import match_rows
from synth.metrics_basic import _compared_columns
from synth.schema import SynthSchema

NULL = "<null>"
OTHER = "<other>"
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class Frame:
    """Named feature columns of ``n`` records: float64 with NaN for null, or Arrow strings."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, pa.Array]
    n: int

    def take(self, index: np.ndarray) -> Frame:
        """The records at ``index``."""
        index = np.asarray(index, dtype=np.int64)
        return Frame({k: v[index] for k, v in self.numeric.items()},
                     {k: v.take(pa.array(index)) for k, v in self.categorical.items()}, len(index))

    def without(self, names: set[str]) -> Frame:
        """A copy without the columns in ``names``."""
        return Frame({k: v for k, v in self.numeric.items() if k not in names},
                     {k: v for k, v in self.categorical.items() if k not in names}, self.n)

    def names(self) -> list[str]:
        return list(self.numeric) + list(self.categorical)


def compared_columns(schema: SynthSchema, real: Mapping[str, pa.Table]) -> list[tuple[str, str, str]]:
    """(table, column, kind) of the columns that evaluation compares: learned, not keys,
    not links inside the entity, not free text; ``kind`` numeric or categorical."""
    return _compared_columns(schema, real)


def as_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A categorical column as strings, null as ``<null>``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return pc.cast(column, pa.string()).fill_null(NULL)


def is_time(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date(t)


# ------------------------------------------------------------------ tree navigation


def parent_index(schema: SynthSchema, tables: Mapping[str, pa.Table]) -> dict[str, np.ndarray]:
    """For each tree table, the parent row of each row (-1: none); the root maps to itself."""
    out = {schema.root: np.arange(tables[schema.root].num_rows)}
    for t in schema.tables:
        if t.parent is not None:
            out[t.name] = match_rows(tables[t.name], t.columns, tables[t.parent], t.parent_columns)
    return out


def ancestor_index(schema: SynthSchema, parents: Mapping[str, np.ndarray], table: str, ancestor: str) -> np.ndarray:
    """For each row of ``table``, its row in ``ancestor`` (-1 where the chain breaks)."""
    chain = schema.ancestors(table)
    index = np.arange(len(parents[table])) if table != schema.root else parents[table].copy()
    for name in chain[: chain.index(ancestor)]:
        step = parents[name]
        index = np.where(index >= 0, step[np.maximum(index, 0)] if len(step) else -1, -1)
    return index


def _take_numeric(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.full(len(index), np.nan)
    return np.where(index >= 0, x[np.maximum(index, 0)], np.nan)


def _take_text(x: pa.Array, index: np.ndarray) -> pa.Array:
    return x.take(pa.array(index, mask=index < 0)).fill_null(NULL)


# ------------------------------------------------------------------ frames


def row_frame(schema: SynthSchema, tables: Mapping[str, pa.Table], columns: list[tuple[str, str, str]],
              table: str, *, ancestors: bool = True, time_parts: bool = False) -> Frame:
    """One record per row of ``table``: its compared columns (named ``table.column``) and,
    with ``ancestors``, those of its ancestors. ``time_parts`` adds hour of day and day of
    week of timestamps and the gaps between timestamps of the same row (for models)."""
    n = tables[table].num_rows
    chain = schema.ancestors(table) if ancestors else [table]
    parents = parent_index(schema, tables) if len(chain) > 1 else {}
    numeric: dict[str, np.ndarray] = {}
    categorical: dict[str, pa.Array] = {}
    for holder in chain:
        index = ancestor_index(schema, parents, table, holder) if holder != table else np.arange(n)
        stamps = []
        for t, c, kind in columns:
            if t != holder:
                continue
            column = tables[t].column(c)
            name = f"{t}.{c}"
            if kind == "numeric":
                values = _take_numeric(comparable(column), index)
                numeric[name] = values
                if time_parts and is_time(column.type):
                    stamps.append(name)
                    if pa.types.is_timestamp(column.type):
                        numeric[f"{name}#hour"] = np.floor(values / US_PER_HOUR) % 24
                    numeric[f"{name}#weekday"] = (np.floor(values / US_PER_DAY) + 3) % 7
            else:
                categorical[name] = _take_text(as_text(column), index)
        for i, a in enumerate(stamps):
            for b in stamps[i + 1:]:
                numeric[f"{b}-{a}#days"] = (numeric[b] - numeric[a]) / US_PER_DAY
    return Frame(numeric, categorical, n)


@dataclass(frozen=True)
class EntityLayout:
    """Which child aggregates an entity frame holds; the frequent categories come from training."""

    columns: tuple[tuple[str, str, str], ...]
    categories: dict[str, tuple[str, ...]]

    @classmethod
    def fit(cls, schema: SynthSchema, train: Mapping[str, pa.Table], columns: list[tuple[str, str, str]],
            top: int = 5) -> EntityLayout:
        cats = {}
        for t, c, kind in columns:
            if kind == "categorical" and t != schema.root:
                counts = pc.value_counts(as_text(train[t].column(c)))
                order = np.argsort(-counts.field("counts").to_numpy(), kind="stable")[:top]
                cats[f"{t}.{c}"] = tuple(counts.field("values").to_numpy(zero_copy_only=False)[order].tolist())
        return cls(tuple(columns), cats)

    def frame(self, schema: SynthSchema, tables: Mapping[str, pa.Table]) -> Frame:
        """One record per root row: root columns plus child counts, means and category shares."""
        root = row_frame(schema, tables, list(self.columns), schema.root, ancestors=False)
        numeric, categorical = dict(root.numeric), dict(root.categorical)
        parents = parent_index(schema, tables)
        n = root.n
        for t in schema.tables:
            if t.parent is None:
                continue
            owner = ancestor_index(schema, parents, t.name, schema.root)
            ok = owner >= 0
            owner = owner[ok]
            count = np.bincount(owner, minlength=n).astype(np.float64)
            numeric[f"{t.name}#count"] = count
            with np.errstate(invalid="ignore", divide="ignore"):
                for table, c, kind in self.columns:
                    if table != t.name:
                        continue
                    name = f"{table}.{c}"
                    if kind == "numeric":
                        x = comparable(tables[table].column(c))[ok]
                        seen = ~np.isnan(x)
                        total = np.bincount(owner[seen], weights=x[seen], minlength=n)
                        numeric[f"{name}#mean"] = total / np.bincount(owner[seen], minlength=n)
                    else:
                        text = as_text(tables[table].column(c)).filter(pa.array(ok))
                        for value in self.categories.get(name, ()):
                            hit = pc.equal(text, value).to_numpy(zero_copy_only=False).astype(np.float64)
                            numeric[f"{name}={value}#share"] = np.bincount(owner, weights=hit, minlength=n) / count
        return Frame(numeric, categorical, n)


# ------------------------------------------------------------------ encoding


@dataclass(frozen=True)
class Encoder:
    """Frame → float matrix, fitted on training records (see the module docstring)."""

    numeric: tuple[tuple[str, np.ndarray, np.ndarray, bool], ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def fit(cls, frame: Frame, max_categories: int = 30) -> Encoder:
        numeric = []
        for name, x in frame.numeric.items():
            seen = x[~np.isnan(x)]
            values, counts = np.unique(seen, return_counts=True)
            positions = (np.cumsum(counts) - counts / 2) / max(len(seen), 1)
            numeric.append((name, values, positions, bool(len(seen) < len(x))))
        categorical = []
        for name, column in frame.categorical.items():
            counts = pc.value_counts(column)
            order = np.argsort(-counts.field("counts").to_numpy(), kind="stable")[:max_categories]
            categorical.append((name, tuple(counts.field("values").to_numpy(zero_copy_only=False)[order].tolist())))
        return cls(tuple(numeric), tuple(categorical))

    def names(self) -> list[str]:
        out = []
        for name, values, _, nullable in self.numeric:
            if len(values) > 1:
                out.append(name)
            if nullable:
                out.append(f"{name}#null")
        for name, cats in self.categorical:
            out += [f"{name}={c}" for c in cats] + [f"{name}={OTHER}"]
        return out

    def transform(self, frame: Frame) -> np.ndarray:
        parts = []
        for name, values, positions, nullable in self.numeric:
            x = frame.numeric[name]
            missing = np.isnan(x)
            if len(values) > 1:
                parts.append(np.where(missing, 0.5, np.interp(np.where(missing, values[0], x), values, positions)))
            if nullable:
                parts.append(missing.astype(np.float64))
        for name, cats in self.categorical:
            codes = pc.index_in(frame.categorical[name], value_set=pa.array(cats, pa.string()))
            codes = codes.fill_null(len(cats)).to_numpy(zero_copy_only=False)
            onehot = np.zeros((frame.n, len(cats) + 1))
            onehot[np.arange(frame.n), codes] = np.sqrt(0.5)
            parts.append(onehot)
        if not parts:
            return np.zeros((frame.n, 0))
        return np.column_stack([p if p.ndim == 2 else p[:, None] for p in parts])

    def ordinal(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """For tree models: numbers as training-CDF positions (NaN kept), categories as codes
        (the last one: other); returns the matrix and the mask of categorical columns."""
        parts, mask = [], []
        for name, values, positions, _ in self.numeric:
            x = frame.numeric[name]
            if len(values) > 1:
                parts.append(np.where(np.isnan(x), np.nan, np.interp(np.nan_to_num(x), values, positions)))
                mask.append(False)
        for name, cats in self.categorical:
            codes = pc.index_in(frame.categorical[name], value_set=pa.array(cats, pa.string()))
            parts.append(codes.fill_null(len(cats)).to_numpy(zero_copy_only=False).astype(np.float64))
            mask.append(True)
        matrix = np.column_stack(parts) if parts else np.zeros((frame.n, 0))
        return matrix, np.array(mask, dtype=bool)

    def ranks(self, name: str, x: np.ndarray) -> np.ndarray:
        """Training-CDF position of the values of numeric feature ``name`` (NaN stays NaN)."""
        for n, values, positions, _ in self.numeric:
            if n == name:
                out = np.full(len(x), np.nan)
                seen = ~np.isnan(x)
                if len(values):
                    out[seen] = np.interp(x[seen], values, positions)
                return out
        raise KeyError(name)


def sample_index(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """All of ``range(n)`` when ``n <= limit``, else ``limit`` of them at random (sorted)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, limit, replace=False))
