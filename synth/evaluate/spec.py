"""What an evaluation is asked to look at: target, protected attributes, quasi-identifiers.

Every field is optional. A metric whose declaration is missing is reported as skipped
with the reason (never silently left out); a declaration that names a column the data
does not have is a ``ConfigError`` naming the column and the columns that exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import pyarrow as pa

from microdb.errors import ConfigError
from synth.schema import SynthSchema

LEVELS = ("row", "entity")


@dataclass(frozen=True)
class EvalSpec:
    """Declarations for one evaluation.

    * ``target``: ``"table.column"`` the utility test predicts (boolean or categorical);
      ``level`` ``"row"`` predicts it per row of its table, ``"entity"`` whether any row of
      the entity has it (``positive`` names the positive class of a non-boolean target;
      default: the rarest value in training).
    * ``protected``: ``"table.column"`` attributes of the root table whose subgroups must be
      served equally well (fairness).
    * ``quasi_identifiers``: columns an attacker may know (k-anonymity, attribute
      inference, linkability); ``sensitive``: the root column attribute inference guesses.
    * ``conditioned``: columns the bundle was steered on (``Condition``): their marginal
      differs from training on purpose, so fidelity leaves them out (and says so).
    * ``drift_threshold``: distance above which a column counts as drifted.
    * ``max_rows``: rows (or entities) sampled, per data set, for distances and models.
    """

    target: str | None = None
    level: str = "row"
    positive: object = None
    protected: tuple[str, ...] = ()
    quasi_identifiers: tuple[str, ...] = ()
    sensitive: str | None = None
    conditioned: tuple[str, ...] = ()
    drift_threshold: float = 0.1
    max_rows: int = 20_000
    min_group_size: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "protected", tuple(self.protected))
        object.__setattr__(self, "quasi_identifiers", tuple(self.quasi_identifiers))
        object.__setattr__(self, "conditioned", tuple(self.conditioned))
        problems = []
        if self.level not in LEVELS:
            problems.append(f"level {self.level!r} is not one of {LEVELS}")
        if not 0 < self.drift_threshold <= 1:
            problems.append(f"drift_threshold {self.drift_threshold} must be in (0, 1]")
        if self.max_rows < 50:
            problems.append(f"max_rows {self.max_rows} must be at least 50")
        if self.min_group_size < 2:
            problems.append(f"min_group_size {self.min_group_size} must be at least 2")
        if problems:
            raise ConfigError("evaluation spec: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """JSON-ready (saved in the report)."""
        out = asdict(self)
        for key in ("protected", "quasi_identifiers", "conditioned"):
            out[key] = list(getattr(self, key))
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> EvalSpec:
        """From a config mapping (e.g. ``[synth.evaluate]`` of microdb.toml); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"evaluation spec: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def check(self, schema: SynthSchema, tables: Mapping[str, pa.Table]) -> None:
        """Every declared column exists (in ``tables``, the training data); report all problems at once."""
        problems = []
        named = [("target", self.target)] if self.target else []
        named += [("protected", p) for p in self.protected]
        named += [("quasi_identifiers", q) for q in self.quasi_identifiers]
        named += [("sensitive", self.sensitive)] if self.sensitive else []
        named += [("conditioned", c) for c in self.conditioned]
        for key, ref in named:
            table, _, column = ref.partition(".")
            if not column:
                problems.append(f"{key}: {ref!r} must be written 'table.column'")
            elif not schema.is_tree_table(table):
                problems.append(f"{key}: {ref!r}: no table {table!r} in the entity tree (tables: {schema.names()})")
            elif column not in tables[table].column_names:
                problems.append(f"{key}: {ref!r}: no column {column!r} in {table} "
                                f"(columns: {', '.join(tables[table].column_names)})")
            elif ref in schema.exclude:
                problems.append(f"{key}: {ref!r} is an excluded (never learned) column")
        if problems:
            raise ConfigError("evaluation spec: " + "; ".join(problems))


def split_ref(ref: str) -> tuple[str, str]:
    """``"table.column"`` → (table, column)."""
    table, _, column = ref.partition(".")
    return table, column
