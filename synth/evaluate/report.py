"""``evaluate``: one JSON-ready report on a synthetic bundle — integrity, fidelity,
utility, privacy and fairness — with a flat ``metrics`` mapping the charter reads and a
``skipped`` mapping saying why any metric is missing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import numpy as np
import pyarrow as pa

from microdb.errors import ConfigError, SchemaError
from synth.evaluate.charter import METRICS
from synth.evaluate.fairness import fairness
from synth.evaluate.fidelity import distributions, fidelity
from synth.evaluate.frames import EntityLayout, compared_columns
from synth.evaluate.privacy import privacy
from synth.evaluate.spec import EvalSpec
from synth.evaluate.utility import utility
from synth.integrity import check_integrity
from synth.schema import SynthSchema

REPORT_VERSION = 1
STAGES = ("integrity", "fidelity", "fidelity baseline", "utility", "privacy", "fairness")
PLOTTED_COLUMNS = 8

Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``: ``done`` of ``total`` stages finished, ``step`` what runs now."""


def _check_tables(schema: SynthSchema, columns, data: Mapping[str, Mapping[str, pa.Table]]) -> None:
    problems = []
    for side, tables in data.items():
        for name in schema.names():
            if name not in tables:
                problems.append(f"{side}: table {name!r} missing")
                continue
            have = set(tables[name].column_names)
            problems += [f"{side}: column {t}.{c} missing" for t, c, _ in columns if t == name and c not in have]
    if problems:
        raise SchemaError("synth evaluate: " + "; ".join(problems))


def _plain(value):
    """Numpy scalars and arrays to JSON-ready Python values (NaN → None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    return value


def evaluate(schema: SynthSchema, train: Mapping[str, pa.Table], holdout: Mapping[str, pa.Table] | None,
             synthetic: Mapping[str, pa.Table], references: Mapping[str, pa.Table] | None = None,
             spec: EvalSpec | None = None, progress: Progress | None = None) -> dict:
    """Evaluate ``synthetic`` entity slices against the ``train`` slices the generator learned
    from and ``holdout`` slices it never saw (may be empty: holdout-based tests are skipped).

    Returns a JSON-ready dict: ``metrics`` (flat, see ``METRICS``), ``skipped`` (metric →
    reason), one section per concern, ``spec``, ``sizes`` and ``timings``.
    """
    spec = spec or EvalSpec()
    references = dict(references or {})
    holdout = dict(holdout or {})
    tell = progress or (lambda step, done, total: None)
    columns = compared_columns(schema, train)
    sides = {"train": train, "synthetic": synthetic, **({"holdout": holdout} if holdout else {})}
    _check_tables(schema, columns, sides)
    for side in ("train", "synthetic"):
        if sides[side][schema.root].num_rows == 0:
            raise ConfigError(f"synth evaluate: the {side} data has no entities (root table {schema.root!r} is empty)")
    spec.check(schema, train)
    has_holdout = bool(holdout) and holdout[schema.root].num_rows > 0
    layout = EntityLayout.fit(schema, train, columns)
    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}
    sections: dict[str, dict] = {}
    total = len(STAGES)

    def stage(i: int, name: str):
        tell(name, i, total)
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = round(time.perf_counter() - timings[name], 3)

    stage(0, "integrity")
    check = check_integrity(schema, synthetic, references)
    sections["integrity"] = {"ok": check.ok, "ri_percent": check.ri_percent, "violations": check.violations[:50]}
    done("integrity")

    stage(1, "fidelity")
    scored = [c for c in columns if f"{c[0]}.{c[1]}" not in spec.conditioned]
    fid = fidelity(schema, train, synthetic, scored, lambda step: tell(f"fidelity: {step}", 1, total))
    worst = sorted(fid["items"]["column_shapes"], key=fid["items"]["column_shapes"].get)[:PLOTTED_COLUMNS]
    fid["distributions"] = distributions(train, synthetic, columns, list(spec.conditioned) + worst)
    fid["conditioned"] = list(spec.conditioned)
    for name in fid["absent"]:
        skipped[f"fidelity.{name}"] = {"cardinality": "the entity tree has no child tables",
                                       "temporal": "no sequence table (a child table with order_by)",
                                       "intertable_trends": "no child table with compared columns",
                                       }.get(name, "nothing to compare")
    sections["fidelity"] = fid
    done("fidelity")

    stage(2, "fidelity baseline")
    if has_holdout:
        base = fidelity(schema, train, holdout, scored)
        fid["baseline"] = {"overall": base["overall"], "scores": base["scores"]}
    else:
        skipped["fidelity.baseline_overall"] = "no holdout entities given"
    done("fidelity baseline")

    stage(3, "utility")
    run = None
    if spec.target is None:
        sections["utility"] = {"status": "skipped", "reason": "no target declared (EvalSpec.target = 'table.column')"}
    elif not has_holdout:
        sections["utility"] = {"status": "skipped", "reason": "no holdout entities given: TSTR and TRTR test on them"}
    else:
        sections["utility"], run = utility(schema, train, holdout, synthetic, spec, columns, layout)
    if sections["utility"]["status"] != "ok":
        for name in METRICS:
            if name.startswith("utility."):
                skipped[name] = sections["utility"]["reason"]
    done("utility")

    stage(4, "privacy")
    priv = privacy(schema, train, holdout if has_holdout else None, synthetic, spec, columns, layout,
                   lambda step: tell(f"privacy: {step}", 4, total))
    sections["privacy"] = priv
    reasons = priv["skipped"]
    for name in ("dcr_share", "dcr_train_median", "dcr_baseline_median", "nndr_median", "mia_auc", "entity_copy_rate"):
        if "distance" in reasons:
            skipped[f"privacy.{name}"] = reasons["distance"]
    for name, key in (("attribute_inference_risk", "attribute_inference"), ("singling_out_risk", "singling_out"),
                      ("linkability_risk", "linkability"), ("k_anonymity", "k_anonymity")):
        if key in reasons:
            skipped[f"privacy.{name}"] = reasons[key]
    done("privacy")

    stage(5, "fairness")
    if not spec.protected:
        sections["fairness"] = {"status": "skipped", "reason": "no protected attributes declared (EvalSpec.protected)"}
    else:
        sections["fairness"] = {"status": "ok", **fairness(schema, train, holdout if has_holdout else {}, synthetic,
                                                           spec, scored, run,
                                                           lambda step: tell(step, 5, total))}
    for key in ("representation_gap", "fidelity_gap", "utility_gap"):
        if sections["fairness"].get(key) is None:
            skipped[f"fairness.{key}"] = sections["fairness"].get(
                "reason", "no protected attribute had two subgroups large enough (and, for utility, a target)")
    done("fairness")
    tell("done", total, total)

    util = sections["utility"]
    metrics = {
        "integrity.ri_percent": check.ri_percent,
        "fidelity.overall": fid["overall"],
        **{f"fidelity.{k}": v for k, v in fid["scores"].items()},
        "fidelity.wasserstein_mean": fid["wasserstein_mean"],
        "fidelity.baseline_overall": fid.get("baseline", {}).get("overall"),
        **{f"utility.{k}": util.get(k)
           for k in ("tstr_auc", "trtr_auc", "auc_ratio", "tstr_f1", "trtr_f1", "f1_ratio")},
        **{f"privacy.{k}": priv.get(k) for k in ("dcr_share", "dcr_train_median", "dcr_baseline_median",
                                                 "nndr_median", "mia_auc", "exact_copy_rate", "entity_copy_rate")},
        "privacy.attribute_inference_risk": priv.get("attribute_inference", {}).get("risk"),
        "privacy.singling_out_risk": priv.get("singling_out", {}).get("risk"),
        "privacy.linkability_risk": priv.get("linkability", {}).get("risk"),
        "privacy.k_anonymity": priv.get("k"),
        **{f"fairness.{k}": sections["fairness"].get(k) for k in ("representation_gap", "fidelity_gap", "utility_gap")},
    }
    for name, value in metrics.items():
        if value is None and name not in skipped:
            skipped[name] = "not computable on this data"
    report = {
        "version": REPORT_VERSION,
        "spec": spec.to_dict(),
        "sizes": {side: {name: tables[name].num_rows for name in schema.names()} for side, tables in sides.items()},
        "metrics": metrics,
        "skipped": skipped,
        **sections,
        "timings": timings,
    }
    return _plain(report)

