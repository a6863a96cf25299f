"""Generators registered by name: ``rules`` (faker + schema), ``copula`` (Gaussian copula
per table, conditioned on the parent) and ``neural`` (torch, autoregressive over the
entity tree, optionally with entity-level DP-SGD).

>>> gen = get_generator("copula")
>>> gen.fit(schema, tables, references, seed=1)
>>> slices = gen.sample(100, seed=2)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from microdb.errors import ConfigError
from synth.generators.base import Generator

_REGISTRY = {
    "rules": ("synth.generators.rules", "RulesGenerator"),
    "copula": ("synth.generators.copula", "CopulaGenerator"),
    "neural": ("synth.generators.neural", "NeuralGenerator"),
}


def generator_names() -> list[str]:
    """Names accepted by ``get_generator``."""
    return list(_REGISTRY)


def generator_class(name: str) -> type[Generator]:
    """The class registered as ``name`` (its module is imported on first use)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown generator {name!r}; known: {', '.join(_REGISTRY)}")
    module, attr = _REGISTRY[name]
    return getattr(import_module(module), attr)


def get_generator(name: str, **params: Any) -> Generator:
    """A new, unfitted generator ``name`` with ``params``."""
    return generator_class(name)(**params)


def load_generator(directory: str) -> Generator:
    """A fitted generator saved with ``Generator.save``."""
    return Generator.load(directory)


__all__ = ["Generator", "generator_names", "generator_class", "get_generator", "load_generator"]
