"""Synthetic entity slices: generators that learn from entity slices and sample new ones
whose keys agree across every table.

>>> from synth import SynthSchema, SynthTable, get_generator, Condition
>>> gen = get_generator("neural", epochs=15)
>>> gen.fit(schema, tables, references, seed=1, constraints=["transactions.ts >= accounts.opened_at"])
>>> slices = gen.sample(1000, seed=2, conditions=[Condition("transactions", "is_fraud", True, 0.3)])
>>> check_integrity(schema, slices, references).ri_percent
100.0
"""

from synth.conditions import Condition, Constraint, parse_constraint
from synth.generators import Generator, generator_names, get_generator, load_generator
from synth.integrity import IntegrityReport, check_integrity, select_entities
from synth.schema import ReferenceLink, SynthSchema, SynthTable

__all__ = [
    "SynthSchema",
    "SynthTable",
    "ReferenceLink",
    "Condition",
    "Constraint",
    "parse_constraint",
    "Generator",
    "get_generator",
    "generator_names",
    "load_generator",
    "check_integrity",
    "IntegrityReport",
    "select_entities",
]
