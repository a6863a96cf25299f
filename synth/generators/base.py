"""The lifecycle every generator shares: validate → preprocess → fit → sample, save/load.

Subclasses fill in ``_fit`` (learn from prepared features), ``_sample_features`` (sample
features table by table, children after parents) and ``_model_state`` /
``_restore`` (their numbers as JSON plus arrays). Everything else — schema checks,
constraints, conditions, keys, reference links, persistence — lives here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from microdb.errors import ConfigError
from synth.conditions import Condition, Constraint, bind_constraint, check_training
from synth.modelio import load_model, save_model
from synth.schema import SynthSchema
from synth.tree import (
    BoundCondition,
    Draft,
    TableData,
    TreePlan,
    bind_conditions,
    decode,
    finish,
    prepare,
    settle_condition,
)

Features = dict[str, tuple[np.ndarray | None, dict[str, np.ndarray]]]
"""Sampled features per table: (parent row of each row, feature arrays)."""


class Generator(ABC):
    """Learns from entity slices, samples new ones (keys agree across every table)."""

    name: ClassVar[str] = ""
    learns: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(f"generator {self.name!r}: unknown parameters {unknown}; "
                              f"known: {sorted(self.defaults)}")
        self.params: dict[str, Any] = {**self.defaults, **params}
        self.schema: SynthSchema | None = None
        self.plan: TreePlan | None = None
        self.constraints: list[Constraint] = []
        self.fit_seed: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def fit(self, schema: SynthSchema, tables: Mapping[str, pa.Table],
            references: Mapping[str, pa.Table] | None = None, *, seed: int = 0,
            constraints: Sequence[Constraint | str] = ()) -> None:
        """Learn from training entity slices; ``constraints`` must hold on them and will hold
        on every sample."""
        references = dict(references or {})
        schema.validate(tables, references)
        if tables[schema.root].num_rows == 0:
            raise ConfigError(f"synth fit: the training set is empty (no rows in root table {schema.root!r})")
        types = {t.name: tables[t.name].schema for t in schema.tables}
        bound = [bind_constraint(c, schema, types) for c in constraints]
        self._check_constraint_columns(schema, bound)
        plan, data = prepare(schema, tables, references, learn=self.learns, n_bins=self.params.get("n_bins", 32))
        check_training(bound, schema, {k: d.table for k, d in data.items()}, {k: d.parent for k, d in data.items()})
        self.schema, self.plan, self.constraints, self.fit_seed = schema, plan, bound, seed
        self._fit(data, seed)

    def sample(self, n_entities: int, *, seed: int, conditions: Sequence[Condition] = (),
               constraints: Sequence[Constraint | str] = ()) -> dict[str, pa.Table]:
        """``n_entities`` new entity slices as one Arrow table per tree table (same seed, same bytes)."""
        schema, plan = self._fitted()
        if n_entities < 0:
            raise ConfigError(f"synth sample: n_entities={n_entities} must be >= 0")
        types = {name: p.schema for name, p in plan.tables.items()}
        extra = [bind_constraint(c, schema, types) for c in constraints]
        self._check_constraint_columns(schema, extra)
        bound = self._bind_conditions(list(conditions))
        drafts = self._sample_drafts(int(n_entities), int(seed), bound)
        return finish(schema, plan, drafts, seed=int(seed), constraints=self.constraints + extra)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write the model as JSON metadata plus arrays (never a pickle)."""
        schema, plan = self._fitted()
        meta, arrays = self._model_state()
        document = {"generator": self.name, "params": self.params, "schema": schema.to_dict(),
                    "plan": plan.to_meta(), "constraints": [c.text for c in self.constraints],
                    "fit_seed": self.fit_seed, "model": meta}
        return save_model(directory, document, arrays)

    @classmethod
    def load(cls, directory: str | Path) -> Generator:
        """Read a model written by ``save``; on the base class, the saved generator's class."""
        from synth.generators import generator_class

        meta, arrays = load_model(directory)
        klass = generator_class(meta.get("generator", ""))
        if cls is not Generator and klass is not cls:
            raise ConfigError(f"synth model in {directory} was made by generator {meta.get('generator')!r}, "
                              f"not {cls.name!r}")
        gen = klass(**meta["params"])
        gen.schema = SynthSchema.from_dict(meta["schema"])
        gen.plan = TreePlan.from_meta(meta["plan"])
        gen.fit_seed = meta.get("fit_seed")
        types = {name: p.schema for name, p in gen.plan.tables.items()}
        gen.constraints = [bind_constraint(c, gen.schema, types) for c in meta["constraints"]]
        gen._restore(meta["model"], arrays)
        return gen

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def _fit(self, data: dict[str, TableData], seed: int) -> None:
        """Learn from prepared training features."""

    @abstractmethod
    def _sample_features(self, n_entities: int, seed: int, conditions: list[BoundCondition]) -> Features:
        """Sample features of every tree table, parents first; rows grouped by parent."""

    def _model_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {}, {}

    def _restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Inverse of ``_model_state``."""

    def _bind_conditions(self, conditions: list[Condition]) -> list[BoundCondition]:
        schema, plan = self._fitted()
        return bind_conditions(conditions, schema, plan)

    def _sample_drafts(self, n_entities: int, seed: int, conditions: list[BoundCondition]) -> dict[str, Draft]:
        schema, plan = self._fitted()
        features = self._sample_features(n_entities, seed, conditions)
        drafts = {}
        for t in schema.tables:
            parent, values = features[t.name]
            parent_values = features[t.parent][1] if t.parent else None
            drafts[t.name] = decode(schema, plan.tables[t.name], values, parent, parent_values)
        return drafts

    def settle(self, table: str, values: dict[str, np.ndarray], conditions: list[BoundCondition],
               seed: int, rng: np.random.Generator) -> None:
        """Make every condition's share on ``table`` exact (after the model was conditioned)."""
        plan = self._fitted()[1].tables[table]
        for cond in conditions:
            if cond.table == table:
                codec = plan.feature(cond.feature).codec
                values[cond.feature] = settle_condition(cond, codec, values[cond.feature], seed, rng)

    def _fitted(self) -> tuple[SynthSchema, TreePlan]:
        if self.schema is None or self.plan is None:
            raise ConfigError(f"generator {self.name!r}: call fit() (or load a saved model) before sampling")
        return self.schema, self.plan

    @staticmethod
    def _check_constraint_columns(schema: SynthSchema, constraints: Sequence[Constraint]) -> None:
        for c in constraints:
            linked = {col for _, link in schema.links_of(c.table) for col in link.columns}
            if c.column in schema.key_columns(c.table) or c.column in linked:
                raise ConfigError(f"constraint {c.text!r}: {c.table}.{c.column} is a key or link column, "
                                  "assigned by construction")

