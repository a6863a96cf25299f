"""Evaluation and governance of synthetic bundles: fidelity, utility, privacy, fairness,
drift, an HTML report and the charter gate.

>>> from synth.evaluate import EvalSpec, evaluate, render_html, judge
>>> spec = EvalSpec(target="transactions.is_fraud", protected=("customers.segment",))
>>> report = evaluate(schema, train, holdout, synthetic, references, spec)
>>> render_html(report, "bundle/report.html")
>>> judge(report, {"fidelity.overall": ">= 0.7", "privacy.dcr_share": "<= 0.6"})["status"]
'released'
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# ``drift`` is also a submodule's name: bound here, so the name always means the function
from synth.evaluate.drift import drift

# public name -> module, imported on first use (config validation needs only the charter's
# threshold grammar, not the metrics and scikit-learn)
_NAMES = {
    "DEFAULT_THRESHOLDS": "synth.evaluate.charter", "METRICS": "synth.evaluate.charter",
    "judge": "synth.evaluate.charter", "parse_threshold": "synth.evaluate.charter",
    "render_html": "synth.evaluate.html",
    "evaluate": "synth.evaluate.report", "EvalSpec": "synth.evaluate.spec",
}

__all__ = ["EvalSpec", "evaluate", "render_html", "judge", "drift", "parse_threshold", "METRICS",
           "DEFAULT_THRESHOLDS"]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'synth.evaluate' has no attribute {name!r}")
    return getattr(import_module(module), name)
