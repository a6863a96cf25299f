"""Utility: does a model trained on synthetic data work on real data?

TSTR (train on synthetic, test on real holdout) against TRTR (train on real training
data, test on the same holdout), for the declared target, with the same features and
the same gradient-boosted trees. ``row`` level predicts the target per row of its table
from the row's columns, its ancestors' columns, hours, weekdays and gaps between its
timestamps; ``entity`` level predicts whether any row of the entity has the target from
the entity's feature vector (root row plus child aggregates, the target's own aggregates
left out). Reported: AUC and F1 both ways and TSTR / TRTR ratios.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import ConfigError
from synth.evaluate.frames import (
    Encoder,
    EntityLayout,
    Frame,
    ancestor_index,
    as_text,
    parent_index,
    row_frame,
    sample_index,
)
from synth.evaluate.learn import auc, f1, fit_classifier, positive_scores
from synth.evaluate.spec import EvalSpec, split_ref
from synth.schema import SynthSchema


@dataclass
class UtilityRun:
    """What fairness needs after the utility test: the holdout records, labels and both models' scores."""

    holdout: Frame
    labels: np.ndarray
    tstr: np.ndarray
    trtr: np.ndarray


def positive_text(spec: EvalSpec, train: Mapping[str, pa.Table]) -> str:
    """The positive class of the target, as text."""
    table, column = split_ref(spec.target)
    values = train[table].column(column)
    t = values.type
    if pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_timestamp(t) or pa.types.is_date(t):
        raise ConfigError(f"evaluation spec: target {spec.target!r} has type {t}; the utility test predicts "
                          "boolean or categorical targets")
    if spec.positive is not None:
        wanted = str(spec.positive).lower() if isinstance(spec.positive, bool) else str(spec.positive)
    elif pa.types.is_boolean(t):
        wanted = "true"
    else:
        counts = pc.value_counts(pc.drop_null(as_text(values)))
        wanted = counts.field("values")[int(np.argmin(counts.field("counts").to_numpy()))].as_py()
    known = set(pc.unique(as_text(values)).to_pylist())
    if wanted not in known:
        raise ConfigError(f"evaluation spec: positive class {wanted!r} of {spec.target!r} never occurs in "
                          f"training (values: {sorted(known)[:20]})")
    return wanted


def target_frame(schema: SynthSchema, tables: Mapping[str, pa.Table], spec: EvalSpec, columns,
                 layout: EntityLayout, positive: str) -> tuple[Frame, np.ndarray]:
    """Feature records and labels for the target at the spec's level."""
    table, column = split_ref(spec.target)
    hit = pc.equal(as_text(tables[table].column(column)), positive).to_numpy(zero_copy_only=False)
    own = f"{table}.{column}"
    if spec.level == "row":
        frame = row_frame(schema, tables, columns, table, time_parts=True)
        return frame.without({own}), hit
    frame = layout.frame(schema, tables)
    owner = ancestor_index(schema, parent_index(schema, tables), table, schema.root)
    keep = owner >= 0
    labels = np.bincount(owner[keep], weights=hit[keep].astype(np.float64), minlength=frame.n) > 0
    derived = {name for name in frame.names() if name == own or name.startswith(own + "#")
               or name.startswith(own + "=")}
    return frame.without(derived), labels


def utility(schema: SynthSchema, train, holdout, synth, spec: EvalSpec, columns,
            layout: EntityLayout) -> tuple[dict, UtilityRun | None]:
    """TSTR vs TRTR report (and the run, for fairness); ``status`` says why a part was skipped."""
    rng = np.random.default_rng(spec.seed)
    positive = positive_text(spec, train)
    data = {name: target_frame(schema, tables, spec, columns, layout, positive)
            for name, tables in (("train", train), ("holdout", holdout), ("synthetic", synth))}
    for name, (frame, labels) in data.items():
        keep = sample_index(frame.n, spec.max_rows, rng)
        data[name] = (frame.take(keep), labels[keep])
    report = {"target": spec.target, "level": spec.level, "positive": positive,
              "records": {k: int(v[0].n) for k, v in data.items()},
              "positive_rate": {k: float(v[1].mean()) if len(v[1]) else None for k, v in data.items()}}
    for name, (_, labels) in data.items():
        if labels.all() or not labels.any():
            return {**report, "status": "skipped",
                    "reason": f"the {name} data has only one class of {spec.target} = {positive!r}"}, None
    encoder = Encoder.fit(data["train"][0])
    encoded = {k: encoder.ordinal(v[0]) for k, v in data.items()}
    x = {k: v[0] for k, v in encoded.items()}
    mask = encoded["train"][1]
    test_labels = data["holdout"][1]
    scores = {}
    for name, source in (("tstr", "synthetic"), ("trtr", "train")):
        model = fit_classifier(x[source], data[source][1], spec.seed, mask)
        scores[name] = positive_scores(model, x["holdout"])
    out = {**report, "status": "ok", "features": int(x["train"].shape[1])}
    for name, s in scores.items():
        out[f"{name}_auc"] = auc(test_labels, s)
        out[f"{name}_f1"] = f1(test_labels, s >= 0.5)
    out["auc_ratio"] = out["tstr_auc"] / out["trtr_auc"] if out["trtr_auc"] else None
    out["f1_ratio"] = out["tstr_f1"] / out["trtr_f1"] if out["trtr_f1"] else None
    return out, UtilityRun(data["holdout"][0], test_labels, scores["tstr"], scores["trtr"])
