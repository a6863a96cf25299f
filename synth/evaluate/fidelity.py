"""Fidelity: how closely synthetic entity slices follow the real ones.

Every item is a similarity in [0, 1] (1 = indistinguishable):

* column shapes: 1 − KS (numbers, dates, timestamps; a null-share gap counts too) or
  1 − TVD (categories);
* column pairs, within a table: 1 − |ρ_real − ρ_synth| / 2 for two numeric columns
  (Spearman ρ), else 1 − TVD of their joint shares (numbers cut at real deciles);
* cardinality: 1 − KS of the children-per-parent counts of each child table;
* inter-table trends: the same pair similarity between each parent column and each
  aggregate of its children (count, numeric means, share of the commonest category);
* temporal: for sequence tables (``order_by``), 1 − KS of the gaps between consecutive
  siblings, and 1 − TVD of hour of day and day of week of the ordering column.

The overall score is the mean of the section means. Wasserstein-1 distances of numeric
columns (divided by the real standard deviation) are reported beside, not scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.conditions import comparable
from synth.evaluate.frames import US_PER_DAY, US_PER_HOUR, as_text
from synth.evaluate.frames import is_time as is_time_type
from synth.integrity import match_rows
from synth.metrics_basic import child_count_distances, column_distances, ks_distance
from synth.schema import SynthSchema

SECTIONS = ("column_shapes", "column_pairs", "cardinality", "intertable_trends", "temporal")
N_BINS = 10
N_CATEGORIES = 10


# ------------------------------------------------------------------ building blocks


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance between two samples (NaN ignored): the area between the CDFs."""
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    if len(a) == 0 or len(b) == 0:
        return 0.0
    grid = np.unique(np.concatenate([a, b]))
    if len(grid) < 2:
        return 0.0
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks within the sample (ties share their mean rank); NaN stays NaN."""
    out = np.full(len(x), np.nan)
    seen = ~np.isnan(x)
    _, inverse, counts = np.unique(x[seen], return_inverse=True, return_counts=True)
    out[seen] = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation over rows where both are present (0 when undefined)."""
    both = ~np.isnan(x) & ~np.isnan(y)
    if both.sum() < 3:
        return 0.0
    rx, ry = midranks(x[both]), midranks(y[both])
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(np.mean((rx - rx.mean()) * (ry - ry.mean())) / (sx * sy))


class Binning:
    """Codes for a column, cut on the real data: numeric deciles or the commonest categories
    (the last code is null / other)."""

    def __init__(self, real: np.ndarray | pa.Array) -> None:
        if isinstance(real, np.ndarray):
            seen = real[~np.isnan(real)]
            cuts = np.linspace(0, 1, N_BINS + 1)[1:-1]
            self.edges = np.unique(np.quantile(seen, cuts)) if len(seen) else np.array([])
            self.cats = None
            self.size = len(self.edges) + 2
        else:
            counts = pc.value_counts(real)
            order = np.argsort(-counts.field("counts").to_numpy(), kind="stable")[:N_CATEGORIES]
            self.cats = pa.array(counts.field("values").to_numpy(zero_copy_only=False)[order].tolist(), pa.string())
            self.size = len(self.cats) + 1

    def codes(self, values: np.ndarray | pa.Array) -> np.ndarray:
        if self.cats is None:
            out = np.searchsorted(self.edges, values, side="right")
            return np.where(np.isnan(values), self.size - 1, out)
        return pc.index_in(values, value_set=self.cats).fill_null(self.size - 1).to_numpy(zero_copy_only=False)


def joint_tvd(ca: np.ndarray, cb: np.ndarray, size_b: int, da: np.ndarray, db: np.ndarray, size_a: int) -> float:
    """TVD between the joint shares of code pairs (ca, cb) and (da, db)."""
    cells = size_a * size_b
    p = np.bincount(ca * size_b + cb, minlength=cells) / max(len(ca), 1)
    q = np.bincount(da * size_b + db, minlength=cells) / max(len(da), 1)
    return 0.5 * float(np.abs(p - q).sum())


def pair_similarity(real_a, synth_a, real_b, synth_b) -> float:
    """Similarity of the dependence between columns a and b (numpy: numeric, Arrow: categorical)."""
    if isinstance(real_a, np.ndarray) and isinstance(real_b, np.ndarray):
        return 1.0 - abs(spearman(real_a, real_b) - spearman(synth_a, synth_b)) / 2
    bin_a, bin_b = Binning(real_a), Binning(real_b)
    return 1.0 - joint_tvd(bin_a.codes(real_a), bin_b.codes(real_b), bin_b.size,
                           bin_a.codes(synth_a), bin_b.codes(synth_b), bin_a.size)


def _values(table: pa.Table, column: str, kind: str) -> np.ndarray | pa.Array:
    return comparable(table.column(column)) if kind == "numeric" else as_text(table.column(column))


def _mean(values: Mapping[str, float]) -> float | None:
    return float(np.mean(list(values.values()))) if values else None


# ------------------------------------------------------------------ sections


def column_pairs(schema: SynthSchema, real, synth, columns) -> dict[str, float]:
    """``"table.a|b"`` → pair similarity, for every pair of compared columns of a table."""
    out = {}
    for t in schema.tables:
        own = [(c, kind) for table, c, kind in columns if table == t.name]
        for i, (a, ka) in enumerate(own):
            for b, kb in own[i + 1:]:
                out[f"{t.name}.{a}|{b}"] = pair_similarity(
                    _values(real[t.name], a, ka), _values(synth[t.name], a, ka),
                    _values(real[t.name], b, kb), _values(synth[t.name], b, kb))
    return out


def child_aggregates(schema: SynthSchema, tables: Mapping[str, pa.Table], child: str, columns,
                     top: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Per parent row of ``child``: its number of children, numeric means, commonest-category shares."""
    t = schema.table(child)
    n = tables[t.parent].num_rows
    owner = match_rows(tables[child], t.columns, tables[t.parent], t.parent_columns)
    ok = owner >= 0
    owner = owner[ok]
    count = np.bincount(owner, minlength=n).astype(np.float64)
    out = {f"{child}#count": count}
    with np.errstate(invalid="ignore", divide="ignore"):
        for table, c, kind in columns:
            if table != child:
                continue
            if kind == "numeric":
                x = comparable(tables[child].column(c))[ok]
                seen = ~np.isnan(x)
                out[f"{child}.{c}#mean"] = (np.bincount(owner[seen], weights=x[seen], minlength=n)
                                            / np.bincount(owner[seen], minlength=n))
            elif f"{child}.{c}" in top:
                hit = pc.equal(as_text(tables[child].column(c)).filter(pa.array(ok)), top[f"{child}.{c}"])
                out[f"{child}.{c}={top[f'{child}.{c}']}#share"] = np.bincount(
                    owner, weights=hit.to_numpy(zero_copy_only=False).astype(np.float64), minlength=n) / count
    return out


def intertable_trends(schema: SynthSchema, real, synth, columns) -> dict[str, float]:
    """``"parent.column|child#aggregate"`` → pair similarity between a parent column and a child aggregate."""
    out = {}
    for t in schema.tables:
        if t.parent is None:
            continue
        top = {}
        for table, c, kind in columns:
            if table == t.name and kind == "categorical":
                counts = pc.value_counts(as_text(real[table].column(c)))
                if len(counts):
                    commonest = int(np.argmax(counts.field("counts").to_numpy()))
                    top[f"{table}.{c}"] = counts.field("values")[commonest].as_py()
        agg_real = child_aggregates(schema, real, t.name, columns, top)
        agg_synth = child_aggregates(schema, synth, t.name, columns, top)
        for table, c, kind in columns:
            if table != t.parent:
                continue
            pr, ps = _values(real[table], c, kind), _values(synth[table], c, kind)
            for name in agg_real:
                out[f"{table}.{c}|{name}"] = pair_similarity(pr, ps, agg_real[name], agg_synth[name])
    return out


def sibling_gaps(schema: SynthSchema, tables: Mapping[str, pa.Table], child: str) -> np.ndarray:
    """Time between consecutive siblings (ordered by ``order_by``) of a sequence table, in its unit."""
    t = schema.table(child)
    owner = match_rows(tables[child], t.columns, tables[t.parent], t.parent_columns)
    x = comparable(tables[child].column(t.order_by))
    keep = (owner >= 0) & ~np.isnan(x)
    owner, x = owner[keep], x[keep]
    order = np.lexsort((x, owner))
    owner, x = owner[order], x[order]
    same = owner[1:] == owner[:-1]
    return np.diff(x)[same]


def temporal(schema: SynthSchema, real, synth) -> dict[str, float]:
    """Sequence tables: gap, hour-of-day and day-of-week similarities."""
    out = {}
    for t in schema.tables:
        if t.order_by is None or t.parent is None:
            continue
        out[f"{t.name}.{t.order_by}#gaps"] = 1.0 - ks_distance(sibling_gaps(schema, real, t.name),
                                                               sibling_gaps(schema, synth, t.name))
        kind = real[t.name].schema.field(t.order_by).type
        xr, xs = comparable(real[t.name].column(t.order_by)), comparable(synth[t.name].column(t.order_by))
        parts = [("weekday", US_PER_DAY, 7, 3)]
        if pa.types.is_timestamp(kind):
            parts.insert(0, ("hour", US_PER_HOUR, 24, 0))
        for label, unit, period, shift in parts:
            a = (np.floor(xr[~np.isnan(xr)] / unit) + shift) % period
            b = (np.floor(xs[~np.isnan(xs)] / unit) + shift) % period
            p = np.bincount(a.astype(np.int64), minlength=period) / max(len(a), 1)
            q = np.bincount(b.astype(np.int64), minlength=period) / max(len(b), 1)
            out[f"{t.name}.{t.order_by}#{label}"] = 1.0 - 0.5 * float(np.abs(p - q).sum())
    return out


def wasserstein_distances(real, synth, columns) -> dict[str, float]:
    """``"table.column"`` → W1 / real standard deviation, for numeric columns."""
    out = {}
    for table, c, kind in columns:
        if kind != "numeric":
            continue
        a, b = comparable(real[table].column(c)), comparable(synth[table].column(c))
        scale = np.nanstd(a) if np.any(~np.isnan(a)) else 0.0
        out[f"{table}.{c}"] = wasserstein(a, b) / scale if scale > 0 else 0.0
    return out


def fidelity(schema: SynthSchema, real: Mapping[str, pa.Table], synth: Mapping[str, pa.Table],
             columns: list[tuple[str, str, str]], progress: Callable[[str], None] | None = None) -> dict:
    """All sections: per-item similarities, section means, overall score and Wasserstein distances."""
    step = progress or (lambda _: None)
    items: dict[str, dict[str, float]] = {}
    step("column shapes")
    scored = {f"{t}.{c}" for t, c, _ in columns}
    items["column_shapes"] = {k: 1.0 - v for k, v in column_distances(schema, real, synth).items() if k in scored}
    step("column pairs")
    items["column_pairs"] = column_pairs(schema, real, synth, columns)
    step("cardinality")
    items["cardinality"] = {k: 1.0 - v for k, v in child_count_distances(schema, real, synth).items()}
    step("inter-table trends")
    items["intertable_trends"] = intertable_trends(schema, real, synth, columns)
    step("temporal patterns")
    items["temporal"] = temporal(schema, real, synth)
    scores = {k: _mean(v) for k, v in items.items()}
    present = [v for v in scores.values() if v is not None]
    wd = wasserstein_distances(real, synth, columns)
    return {
        "overall": float(np.mean(present)) if present else None,
        "scores": scores,
        "items": items,
        "wasserstein": wd,
        "wasserstein_mean": _mean(wd),
        "absent": [k for k, v in scores.items() if v is None],
    }


def _label(value: float, time: bool) -> str:
    if time:
        return str(np.datetime64(int(value), "us").astype("datetime64[D]"))
    return f"{value:.4g}"


def distribution(real: pa.Table, synth: pa.Table, column: str, kind: str, bins: int = 20) -> dict:
    """Shares of real and synthetic values per bin (numbers: equal-width bins over the real
    1st..99th percentile, outliers in the end bins; categories: the 12 commonest real values)."""
    if kind == "numeric":
        a, b = comparable(real.column(column)), comparable(synth.column(column))
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        if len(a) == 0:
            return {"kind": kind, "labels": [], "real": [], "synthetic": []}
        low, high = np.quantile(a, [0.01, 0.99])
        high = high if high > low else low + 1
        edges = np.linspace(low, high, bins + 1)
        time = is_time_type(real.schema.field(column).type)

        def shares(x: np.ndarray) -> list[float]:
            counts = np.bincount(np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1), minlength=bins)
            return (counts / max(len(x), 1)).tolist()

        labels = [_label(e, time) for e in edges[:-1]]
        return {"kind": kind, "labels": labels, "real": shares(a), "synthetic": shares(b)}
    a, b = as_text(real.column(column)), as_text(synth.column(column))
    counts = pc.value_counts(a)
    order = np.argsort(-counts.field("counts").to_numpy(), kind="stable")[:12]
    cats = counts.field("values").to_numpy(zero_copy_only=False)[order].tolist()

    def shares_of(x: pa.Array) -> list[float]:
        codes = pc.index_in(x, value_set=pa.array(cats, pa.string())).fill_null(len(cats))
        return (np.bincount(codes.to_numpy(zero_copy_only=False), minlength=len(cats) + 1)[:len(cats)]
                / max(len(x), 1)).tolist()

    return {"kind": kind, "labels": cats, "real": shares_of(a), "synthetic": shares_of(b)}


def distributions(real, synth, columns, names: list[str]) -> dict[str, dict]:
    """``distribution`` of each ``"table.column"`` in ``names``."""
    kinds = {f"{t}.{c}": (t, c, k) for t, c, k in columns}
    return {name: distribution(real[kinds[name][0]], synth[kinds[name][0]], kinds[name][1], kinds[name][2])
            for name in names if name in kinds}
