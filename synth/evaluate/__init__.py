"""Evaluation and governance of synthetic bundles: fidelity, utility, privacy, fairness,
drift, an HTML report and the charter gate.

>>> from synth.evaluate import EvalSpec, evaluate, render_html, judge
>>> spec = EvalSpec(target="transactions.is_fraud", protected=("customers.segment",))
>>> report = evaluate(schema, train, holdout, synthetic, references, spec)
>>> render_html(report, "bundle/report.html")
>>> judge(report, {"fidelity.overall": ">= 0.7", "privacy.dcr_share": "<= 0.6"})["status"]
'released'
"""

from synth.evaluate.charter import DEFAULT_THRESHOLDS, METRICS, judge, parse_threshold
from synth.evaluate.drift import drift
from synth.evaluate.html import render_html
from synth.evaluate.report import evaluate
from synth.evaluate.spec import EvalSpec

__all__ = ["EvalSpec", "evaluate", "render_html", "judge", "drift", "parse_threshold", "METRICS",
           "DEFAULT_THRESHOLDS"]
