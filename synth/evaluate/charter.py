"""The charter gate: thresholds on report metrics decide whether a bundle is released.

Thresholds are written as in microdb.toml::

    [charter.thresholds]
    "fidelity.overall" = ">= 0.7"
    "privacy.dcr_share" = "<= 0.6"

A metric the report could not compute (skipped: no holdout, no target declared...)
fails its check: the gate fails closed.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping

from microdb.errors import ConfigError

METRICS: dict[str, str] = {
    "integrity.ri_percent": "share of foreign-key values of the bundle that find their target, in percent",
    "fidelity.overall": "mean of the fidelity section scores, 0..1 (1 = indistinguishable)",
    "fidelity.column_shapes": "mean 1 - KS / 1 - TVD of single columns",
    "fidelity.column_pairs": "mean similarity of column-pair dependence within tables",
    "fidelity.cardinality": "mean 1 - KS of children-per-parent counts",
    "fidelity.intertable_trends": "mean similarity of parent column vs child aggregate dependence",
    "fidelity.temporal": "mean similarity of sibling gaps, hour of day and weekday of sequence tables",
    "fidelity.wasserstein_mean": "mean Wasserstein-1 distance of numeric columns / real std (lower is closer)",
    "fidelity.baseline_overall": "fidelity.overall of the real holdout against training (the noise ceiling)",
    "utility.tstr_auc": "AUC on real holdout of a model trained on synthetic data",
    "utility.trtr_auc": "AUC on real holdout of a model trained on real training data",
    "utility.auc_ratio": "tstr_auc / trtr_auc",
    "utility.tstr_f1": "F1 on real holdout, trained on synthetic data",
    "utility.trtr_f1": "F1 on real holdout, trained on real training data",
    "utility.f1_ratio": "tstr_f1 / trtr_f1",
    "privacy.dcr_share": "share of synthetic records nearer to training than to holdout (ideal 0.5)",
    "privacy.dcr_train_median": "median distance from a synthetic record to the nearest training record",
    "privacy.dcr_baseline_median": "median distance from a holdout record to the nearest training record",
    "privacy.nndr_median": "median nearest / second-nearest training distance ratio of synthetic records",
    "privacy.mia_auc": "distance-based membership-inference AUC (ideal 0.5)",
    "privacy.exact_copy_rate": "share of synthetic root rows identical to a training root row",
    "privacy.entity_copy_rate": "share of synthetic entities whose feature vector equals a training entity's",
    "privacy.attribute_inference_risk": "attribute-inference success beyond the holdout baseline, 0..1",
    "privacy.singling_out_risk": "singling-out success beyond the holdout baseline, 0..1",
    "privacy.linkability_risk": "linkage success beyond the holdout baseline, 0..1",
    "privacy.k_anonymity": "smallest class over the declared quasi-identifiers in the synthetic tables",
    "fairness.representation_gap": "largest |synthetic share - training share| of a protected subgroup",
    "fairness.fidelity_gap": "best minus worst subgroup fidelity",
    "fairness.utility_gap": "spread across subgroups of the AUC lost by training on synthetic data",
}
"""Every metric name a charter threshold may use, with its meaning."""

DEFAULT_THRESHOLDS: dict[str, str] = {
    "integrity.ri_percent": ">= 100",
    "fidelity.overall": ">= 0.7",
    "privacy.dcr_share": "<= 0.6",
    "privacy.mia_auc": "<= 0.6",
    "privacy.exact_copy_rate": "<= 0.0",
}
"""The charter used when a workspace declares none (needs a holdout: fails closed without one)."""

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_RULE = re.compile(r"^\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_threshold(metric: str, rule: object) -> tuple[str, float]:
    """``">= 0.7"`` (or a bare number, read as ``>=``) → (op, value); errors name the metric."""
    if metric not in METRICS:
        raise ConfigError(f"charter: unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    if isinstance(rule, bool):
        raise ConfigError(f"charter: threshold of {metric!r} must look like '>= 0.7', got {rule!r}")
    if isinstance(rule, (int, float)):
        return ">=", float(rule)
    match = _RULE.match(str(rule))
    if not match:
        raise ConfigError(f"charter: threshold of {metric!r} must look like '>= 0.7' (operators {', '.join(_OPS)}), "
                          f"got {rule!r}")
    return match.group(1), float(match.group(2))


def judge(report: Mapping, thresholds: Mapping[str, object] | None = None) -> dict:
    """Check a report's metrics against thresholds (``DEFAULT_THRESHOLDS`` when None).

    Returns ``{"status": "released" | "rejected", "checks": [...], "failed": [...]}``; a
    check on a metric the report lacks fails, with the reason it was skipped.
    """
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    if not thresholds:
        raise ConfigError("charter: no thresholds given; an empty charter would release anything "
                          f"(known metrics: {', '.join(sorted(METRICS))})")
    rules = {metric: parse_threshold(metric, rule) for metric, rule in thresholds.items()}
    metrics = report.get("metrics", {})
    skipped = report.get("skipped", {})
    checks = []
    for metric, (op, limit) in rules.items():
        value = metrics.get(metric)
        check = {"metric": metric, "op": op, "threshold": limit, "value": value}
        if value is None or (isinstance(value, float) and math.isnan(value)):
            check["ok"] = False
            check["reason"] = skipped.get(metric, "not computed")
        else:
            check["ok"] = bool(_OPS[op](value, limit))
        checks.append(check)
    failed = [c["metric"] for c in checks if not c["ok"]]
    return {"status": "rejected" if failed else "released", "checks": checks, "failed": failed}
