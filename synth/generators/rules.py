"""``rules``: no learning beyond the schema's types; realistic made-up values.

Columns get values from their name and type (``synth.fill``), child counts follow a
Poisson law (mean ``mean_children``, per table in ``children``), reference links pick
existing reference keys uniformly, and declared constraints (value sets, ranges) shape
the output. Deterministic for a seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import ConfigError
from synth.conditions import Condition
from synth.fill import FakerPools, fill_column
from synth.generators.base import Features, Generator
from synth.tree import BoundCondition, Draft, TableData, expand


class RulesGenerator(Generator):
    """Faker and schema heuristics; no model."""

    name = "rules"
    learns = False
    defaults: dict[str, Any] = {"mean_children": 2.0, "children": {}}

    def _fit(self, data: dict[str, TableData], seed: int) -> None:
        for table, mean in dict(self.params["children"]).items():
            if table not in data or float(mean) < 0:
                raise ConfigError(f"generator 'rules': children[{table!r}] = {mean!r} needs a tree table and a "
                                  "mean >= 0")

    def _sample_features(self, n_entities: int, seed: int, conditions: list[BoundCondition]) -> Features:
        raise NotImplementedError  # rules builds drafts directly

    def _declared(self, table: str, column: str) -> pa.Array | None:
        sets = [c.values for c in self.constraints if c.kind == "in" and c.table == table and c.column == column]
        return pa.array(list(sets[0])) if sets else None

    def _bind_conditions(self, conditions: list[Condition]) -> list[BoundCondition]:
        schema, plan = self._fitted()
        self._values: dict[int, object] = {}
        bound = []
        for i, c in enumerate(conditions):
            if c.table not in plan.tables:
                raise ConfigError(f"condition on {c.table}.{c.column}: no table {c.table!r} in the entity tree "
                                  f"({list(plan.tables)})")
            if c.column not in plan.tables[c.table].schema.names:
                raise ConfigError(f"condition on {c.table}.{c.column}: no column {c.column!r} in {c.table!r}")
            if c.column not in plan.tables[c.table].fill:
                raise ConfigError(f"condition on {c.table}.{c.column}: a key or link column is assigned by "
                                  "construction")
            if not 0 < float(c.share) <= 1:
                raise ConfigError(f"condition on {c.table}.{c.column}: share {c.share} must be in (0, 1]")
            t = plan.tables[c.table].schema.field(c.column).type
            try:
                typed = pa.array([c.value]).cast(t)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise ConfigError(f"condition on {c.table}.{c.column}: value {c.value!r} does not fit {t}") from exc
            declared = self._declared(c.table, c.column)
            if declared is not None and not pc.any(pc.equal(declared.cast(t), typed[0])).as_py():
                raise ConfigError(f"condition on {c.table}.{c.column}: value {c.value!r} is outside the declared "
                                  f"set {declared.to_pylist()}")
            self._values[i] = typed
            bound.append(BoundCondition(c.table, c.column, float("nan"), float(c.share), i))
        return bound

    def _sample_drafts(self, n_entities: int, seed: int, conditions: list[BoundCondition]) -> dict[str, Draft]:
        schema, plan = self._fitted()
        rng = np.random.default_rng([seed, 7_919])
        pools = FakerPools(seed)
        drafts: dict[str, Draft] = {}
        means = dict(self.params["children"])
        for t in schema.tables:
            tp = plan.tables[t.name]
            if t.parent is None:
                parent, n = None, n_entities
            else:
                counts = rng.poisson(float(means.get(t.name, self.params["mean_children"])), drafts[t.parent].n)
                parent = expand(counts)
                n = len(parent)
            columns = {}
            for name in tp.fill:
                t_type = tp.schema.field(name).type
                declared = self._declared(t.name, name)
                if declared is not None:
                    columns[name] = declared.cast(t_type).take(pa.array(rng.integers(0, len(declared), n)))
                else:
                    columns[name] = fill_column(name, t_type, n, rng, pools)
            for cond in conditions:
                if cond.table == t.name:
                    columns[cond.feature] = self._force(t.name, cond, columns[cond.feature], seed, rng)
            drafts[t.name] = Draft(n, parent, columns)
        return drafts

    def _force(self, table: str, cond: BoundCondition, column: pa.Array, seed: int,
               rng: np.random.Generator) -> pa.Array:
        """Exactly the share of rows gets the value; the others another value when one is known."""
        value = self._values[cond.index]
        mask = cond.mask(len(column), seed)
        forced = pc.if_else(pa.array(mask), pa.repeat(value[0], len(column)), column)
        clash = (~mask) & pc.fill_null(pc.equal(forced, value[0]), False).to_numpy(zero_copy_only=False)
        if not clash.any():
            return forced
        declared = self._declared(table, cond.feature)
        if pa.types.is_boolean(column.type):
            others = pa.array([not value[0].as_py()])
        elif declared is not None:
            others = pc.filter(declared.cast(column.type), pc.not_equal(declared.cast(column.type), value[0]))
        else:
            return forced
        if len(others) == 0:
            return forced
        draw = others.take(pa.array(rng.integers(0, len(others), int(clash.sum()))))
        return pc.replace_with_mask(forced, pa.array(clash), draw)
