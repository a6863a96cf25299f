"""Synthetic entity slices: generators that learn from entity slices and sample new ones
whose keys agree across every table.

>>> from synth import SynthSchema, SynthTable, get_generator, Condition
>>> gen = get_generator("neural", epochs=15)
>>> gen.fit(schema, tables, references, seed=1, constraints=["transactions.ts >= accounts.opened_at"])
>>> slices = gen.sample(1000, seed=2, conditions=[Condition("transactions", "is_fraud", True, 0.3)])
>>> check_integrity(schema, slices, references).ri_percent
100.0
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# public name -> module; imported on first use, so that reading one submodule (the CLI
# reading a config, a worker opening a bundle) does not load every generator
_NAMES = {
    "Condition": "synth.conditions", "Constraint": "synth.conditions", "parse_constraint": "synth.conditions",
    "Generator": "synth.generators", "generator_names": "synth.generators", "get_generator": "synth.generators",
    "load_generator": "synth.generators",
    "check_integrity": "synth.integrity", "IntegrityReport": "synth.integrity", "select_entities": "synth.integrity",
    "ReferenceLink": "synth.schema", "SynthSchema": "synth.schema", "SynthTable": "synth.schema",
}

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


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'synth' has no attribute {name!r}")
    return getattr(import_module(module), name)
