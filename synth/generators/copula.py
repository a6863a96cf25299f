"""``copula``: one Gaussian copula per table, fit on [parent features || row features].

Every feature becomes a normal score: numeric ones through their empirical quantile
transform (with a second score for "is null" when the column has nulls), categorical
ones with up to ``one_hot_max`` categories through one score per category (decoded by
an argmax whose offsets are calibrated to the training shares), larger ones through
their frequency interval. A table's correlation matrix spans selected
parent scores (its child count first, then the parent's own columns) and its own
scores, so sampling a child row is a Gaussian conditional on the parent already
sampled: ``z_row | z_parent ~ N(S_rp S_pp^-1 z_parent, S_rr - S_rp S_pp^-1 S_pr)``.
Conditions join the known side of the same formula. All numpy, vectorized.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synth.generators.base import Features, Generator
from synth.transform import CategoricalCodec, NumericCodec, normal_cdf, normal_ppf
from synth.tree import BoundCondition, TableData, expand


def _interval_mean(lo, hi):
    """Mean of a standard normal restricted to the scores of the uniform interval (lo, hi):
    a category's score. Using the mean rather than a random point keeps rare categories'
    dependence visible to the correlation matrix."""
    a, b = normal_ppf(np.asarray(lo, dtype=np.float64)), normal_ppf(np.asarray(hi, dtype=np.float64))
    width = np.maximum(np.asarray(hi, dtype=np.float64) - np.asarray(lo, dtype=np.float64), 1e-12)
    density = lambda z: np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)  # noqa: E731
    return (density(a) - density(b)) / width


def _conditional(corr: np.ndarray, known: list[int], z_known: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw all dimensions given ``z_known`` on the ``known`` ones (rows of ``z_known``)."""
    d = corr.shape[0]
    m = len(z_known)
    unknown = [i for i in range(d) if i not in set(known)]
    out = np.empty((m, d))
    if known:
        s_kk = corr[np.ix_(known, known)]
        s_uk = corr[np.ix_(unknown, known)]
        a = np.linalg.solve(s_kk, s_uk.T).T
        cov = corr[np.ix_(unknown, unknown)] - a @ s_uk.T
        mean = z_known @ a.T
        out[:, known] = z_known
    else:
        cov = corr
        mean = np.zeros((m, d))
    cov = (cov + cov.T) / 2
    vals, vecs = np.linalg.eigh(cov)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))
    noise = rng.standard_normal((m, len(unknown))) @ root.T
    out[:, unknown] = mean + noise
    return out


class CopulaGenerator(Generator):
    """Per-table Gaussian copula conditioned on the parent row."""

    name = "copula"
    defaults: dict[str, Any] = {"n_bins": 32, "max_parent_features": 12, "shrinkage": 1e-3, "one_hot_max": 16}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._dims: dict[str, list[list[str]]] = {}
        self._parent_dims: dict[str, list[int]] = {}
        self._corr: dict[str, np.ndarray] = {}
        self._shifts: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ encoding

    def _encode(self, table: str, values: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        plan = self.plan.tables[table]
        dims = []
        columns = []
        for f in plan.features:
            x = values[f.name]
            if isinstance(f.codec, NumericCodec):
                u = f.codec.to_uniform(x, rng)
                null = np.isnan(u)
                columns.append(np.where(null, 0.0, normal_ppf(np.where(null, 0.5, u))))
                dims.append([f.name, "value"])
                if f.codec.null_share > 0:
                    p = f.codec.null_share
                    v = rng.random(len(x))
                    columns.append(normal_ppf(np.where(null, v * p, p + v * (1 - p))))
                    dims.append([f.name, "null"])
            elif self._one_hot(f.codec):
                for code, p in enumerate(f.codec.probs):
                    hit = x == code
                    columns.append(np.where(hit, _interval_mean(1 - p, 1.0), _interval_mean(0.0, 1 - p)))
                    dims.append([f.name, f"is:{code}"])
            else:
                columns.append(_interval_mean(f.codec.cum[:-1], f.codec.cum[1:])[x])
                dims.append([f.name, "value"])
        self._dims[table] = dims
        n = len(next(iter(values.values()))) if values else 0
        return np.column_stack(columns) if columns else np.zeros((n, 0))

    def _one_hot(self, codec) -> bool:
        """Small categoricals get one score per category (their dependence on other columns
        need not follow an order); others one score over frequency intervals."""
        return isinstance(codec, CategoricalCodec) and 3 <= codec.n_tokens <= int(self.params["one_hot_max"])

    def _calibrate(self, table: str, rng: np.random.Generator, draws: int = 20_000) -> None:
        """Offsets so that the argmax over a one-hot feature's scores reproduces its shares."""
        corr = self._corr[table]
        offset = corr.shape[0] - len(self._dims[table])
        z = _conditional(corr, [], np.zeros((draws, 0)), rng)[:, offset:]
        for f in self.plan.tables[table].features:
            cols = [i for i, d in enumerate(self._dims[table]) if d[0] == f.name and d[1].startswith("is:")]
            if not cols:
                continue
            target = np.maximum(f.codec.probs, 1e-9)
            shift = normal_ppf(1 - target)
            for _ in range(60):
                share = np.bincount(np.argmax(z[:, cols] - shift, axis=1), minlength=len(cols)) / draws
                shift = shift - 0.3 * (np.log(target) - np.log(np.maximum(share, 0.5 / draws)))
            self._shifts[f"{table}/{f.name}"] = shift

    def _select_parent_dims(self, table: str, parent: str) -> list[int]:
        dims = self._dims[parent]
        limit = int(self.params["max_parent_features"])
        first = [i for i, (name, _) in enumerate(dims) if name in (f"#count:{table}", f"#first:{table}")]
        rest = [i for i, (name, _) in enumerate(dims) if not name.startswith(("#count:", "#first:"))]
        return (first + rest)[: max(limit, len(first))]

    # ------------------------------------------------------------------ fit

    def _fit(self, data: dict[str, TableData], seed: int) -> None:
        rng = np.random.default_rng([seed, 31])
        scores: dict[str, np.ndarray] = {}
        shrink = float(self.params["shrinkage"])
        for t in self.schema.tables:
            td = data[t.name]
            z = self._encode(t.name, td.features, rng)
            scores[t.name] = z
            if t.parent is not None:
                sel = self._select_parent_dims(t.name, t.parent)
                self._parent_dims[t.name] = sel
                z = np.column_stack([scores[t.parent][td.parent][:, sel], z]) if len(sel) else z
            if z.shape[0] > 1 and z.shape[1] > 0:
                std = z.std(axis=0)
                centered = (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)
                corr = centered.T @ centered / z.shape[0]
                corr[:, std == 0] = 0.0
                corr[std == 0, :] = 0.0
            else:
                corr = np.zeros((z.shape[1], z.shape[1]))
            np.fill_diagonal(corr, 1.0)
            self._corr[t.name] = (1 - shrink) * corr + shrink * np.eye(len(corr))
            self._calibrate(t.name, rng)

    # ------------------------------------------------------------------ sample

    def _decode(self, table: str, z: np.ndarray) -> dict[str, np.ndarray]:
        plan = self.plan.tables[table]
        index = {tuple(d): i for i, d in enumerate(self._dims[table])}
        out = {}
        for f in plan.features:
            if (f.name, "is:0") in index:
                cols = [index[(f.name, f"is:{c}")] for c in range(f.codec.n_tokens)]
                out[f.name] = np.argmax(z[:, cols] - self._shifts[f"{table}/{f.name}"], axis=1)
                continue
            u = normal_cdf(z[:, index[(f.name, "value")]])
            if isinstance(f.codec, NumericCodec):
                x = f.codec.from_uniform(u)
                if (f.name, "null") in index and f.role != "gap":
                    x = np.where(normal_cdf(z[:, index[(f.name, "null")]]) < f.codec.null_share, np.nan, x)
                out[f.name] = x
            else:
                out[f.name] = f.codec.from_uniform(u)
        return out

    def _condition_scores(self, table: str, cond: BoundCondition, m: int,
                          rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
        plan = self.plan.tables[table]
        codec = plan.feature(cond.feature).codec
        index = {tuple(d): i for i, d in enumerate(self._dims[table])}
        if (cond.feature, "is:0") in index:
            code = int(cond.target)
            p = codec.probs[code]
            return [index[(cond.feature, f"is:{code}")]], normal_ppf((1 - p) + rng.random(m) * p)[:, None]
        if isinstance(codec, CategoricalCodec):
            code = int(cond.target)
            lo, hi = codec.cum[code], codec.cum[code + 1]
        else:
            lo, hi = codec.uniform_of(cond.target)
        dims = [index[(cond.feature, "value")]]
        z = [normal_ppf(lo + rng.random(m) * (hi - lo))]
        if (cond.feature, "null") in index:
            p = codec.null_share
            dims.append(index[(cond.feature, "null")])
            z.append(normal_ppf(p + rng.random(m) * (1 - p)))
        return dims, np.column_stack(z)

    def _sample_features(self, n_entities: int, seed: int, conditions: list[BoundCondition]) -> Features:
        rng = np.random.default_rng([seed, 37])
        out: Features = {}
        scores: dict[str, np.ndarray] = {}
        for t in self.schema.tables:
            if t.parent is None:
                parent, n = None, n_entities
                known_dims, known = [], np.zeros((n, 0))
            else:
                counts = np.clip(np.nan_to_num(out[t.parent][1][f"#count:{t.name}"]), 0, None).astype(np.int64)
                parent = expand(counts)
                n = len(parent)
                sel = self._parent_dims[t.name]
                known_dims, known = list(range(len(sel))), scores[t.parent][parent][:, sel]
            offset = len(known_dims)
            corr = self._corr[t.name]
            mine = [c for c in conditions if c.table == t.name]
            masks = [c.mask(n, seed) for c in mine]
            pattern = np.zeros(n, dtype=np.int64)
            for bit, mask in enumerate(masks):
                pattern |= mask.astype(np.int64) << bit
            z_full = np.empty((n, corr.shape[0]))
            for value in np.unique(pattern):
                rows = np.flatnonzero(pattern == value)
                dims, z_known = list(known_dims), known[rows]
                for bit, cond in enumerate(mine):
                    if value >> bit & 1:
                        c_dims, c_z = self._condition_scores(t.name, cond, len(rows), rng)
                        dims += [offset + d for d in c_dims]
                        z_known = np.column_stack([z_known, c_z])
                z_full[rows] = _conditional(corr, dims, z_known, rng)
            z = z_full[:, offset:]
            values = self._decode(t.name, z)
            self.settle(t.name, values, conditions, seed, rng)
            scores[t.name] = z
            out[t.name] = (parent, values)
        return out

    # ------------------------------------------------------------------ persistence

    def _model_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"dims": self._dims, "parent_dims": self._parent_dims}
        arrays = {f"corr/{name}": m for name, m in self._corr.items()}
        arrays.update({f"shift/{name}": v for name, v in self._shifts.items()})
        return meta, arrays

    def _restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self._dims = {k: [list(d) for d in v] for k, v in meta["dims"].items()}
        self._parent_dims = {k: list(v) for k, v in meta["parent_dims"].items()}
        self._corr = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("corr/")}
        self._shifts = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("shift/")}
