"""Fairness: does the synthetic bundle serve every subgroup of a protected attribute alike?

Subgroups are the values of a protected root column (numbers: training quartiles). Per
subgroup: its share of entities (training vs synthetic), the fidelity of the subgroup's
synthetic entities against its training entities (divided by the same score for its
holdout entities, the ceiling sampling noise allows, when a holdout is given), and the
TSTR and TRTR AUC on its holdout records. Gaps are best minus worst subgroup:

* representation gap: largest |synthetic share − training share|;
* fidelity gap: spread of the (relative) subgroup fidelity;
* utility gap: spread of the AUC lost by training on synthetic data (TRTR − TSTR),
  over subgroups with at least ``MIN_CLASS`` holdout records of each class.

Subgroups with fewer than ``min_group_size`` entities on either side are listed but
left out of the gaps.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.conditions import comparable
from synth.evaluate.fidelity import fidelity
from synth.evaluate.frames import as_text
from synth.evaluate.learn import auc
from synth.evaluate.spec import EvalSpec, split_ref
from synth.evaluate.utility import UtilityRun
from synth.integrity import select_entities
from synth.schema import SynthSchema

MAX_GROUPS = 12
MIN_CLASS = 10
"""A subgroup AUC needs at least this many holdout records of each class."""


class Grouping:
    """Subgroup labels of a protected column, cut on training data."""

    def __init__(self, train: pa.Table, column: str) -> None:
        values = train.column(column)
        t = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
        few = pa.types.is_integer(t) and pc.count_distinct(values).as_py() <= MAX_GROUPS
        self.numeric = not (few or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t))
        if self.numeric:
            x = comparable(values)
            self.edges = np.unique(np.nanquantile(x, [0.25, 0.5, 0.75])) if np.any(~np.isnan(x)) else np.array([])

    def labels(self, column: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
        if not self.numeric:
            return as_text(column).to_numpy(zero_copy_only=False).astype(str)
        x = column if isinstance(column, np.ndarray) else comparable(column)
        bins = np.searchsorted(self.edges, x, side="right")
        names = np.array([f"q{i + 1}" for i in range(len(self.edges) + 1)] + ["<null>"])
        return names[np.where(np.isnan(x), len(self.edges) + 1, bins)]


def _spread(values: Mapping[str, float | None]) -> float | None:
    present = [v for v in values.values() if v is not None]
    return float(max(present) - min(present)) if len(present) >= 2 else None


def fairness(schema: SynthSchema, train, holdout, synth, spec: EvalSpec, columns,
             run: UtilityRun | None, progress) -> dict:
    """Per protected attribute: subgroup shares, fidelity and utility, and the gaps."""
    out = {"attributes": {}}
    for ref in spec.protected:
        table, column = split_ref(ref)
        progress(f"fairness: {ref}")
        if table != schema.root:
            out["attributes"][ref] = {"status": "skipped",
                                      "reason": f"protected attribute {ref!r} is not a root-table column"}
            continue
        grouping = Grouping(train[table], column)
        labels = {k: grouping.labels(v[table].column(column))
                  for k, v in (("train", train), ("holdout", holdout), ("synthetic", synth)) if v}
        counts = {k: dict(zip(*np.unique(v, return_counts=True))) for k, v in labels.items()}
        names = sorted(set(counts["train"]) | set(counts["synthetic"]),
                       key=lambda g: -counts["train"].get(g, 0))[:MAX_GROUPS]
        groups = {}
        for g in names:
            n_train, n_synth = int(counts["train"].get(g, 0)), int(counts["synthetic"].get(g, 0))
            entry = {"train_entities": n_train, "synthetic_entities": n_synth,
                     "train_share": n_train / max(len(labels["train"]), 1),
                     "synthetic_share": n_synth / max(len(labels["synthetic"]), 1)}
            if min(n_train, n_synth) < spec.min_group_size:
                entry["status"] = f"too small (fewer than {spec.min_group_size} entities)"
                groups[g] = entry
                continue
            real_g = select_entities(schema, train, labels["train"] == g)
            synth_g = select_entities(schema, synth, labels["synthetic"] == g)
            entry["fidelity"] = fidelity(schema, real_g, synth_g, columns)["overall"]
            if "holdout" in labels and counts["holdout"].get(g, 0) >= spec.min_group_size:
                base = fidelity(schema, real_g, select_entities(schema, holdout, labels["holdout"] == g), columns)
                entry["fidelity_baseline"] = base["overall"]
                entry["fidelity_relative"] = entry["fidelity"] / base["overall"] if base["overall"] else None
            entry["status"] = "ok"
            groups[g] = entry
        if run is not None and ref in run.holdout.names():
            member = grouping.labels(run.holdout.categorical[ref] if ref in run.holdout.categorical
                                     else run.holdout.numeric[ref])
            for g, entry in groups.items():
                if entry["status"] != "ok":
                    continue
                rows = member == g
                positives = int(run.labels[rows].sum())
                if min(positives, int(rows.sum()) - positives) < MIN_CLASS:
                    entry["utility_note"] = f"fewer than {MIN_CLASS} holdout records of one class: no AUC"
                    continue
                entry["tstr_auc"] = auc(run.labels[rows], run.tstr[rows])
                entry["trtr_auc"] = auc(run.labels[rows], run.trtr[rows])
                if entry["tstr_auc"] is not None and entry["trtr_auc"] is not None:
                    entry["auc_loss"] = entry["trtr_auc"] - entry["tstr_auc"]
        ok = {g: e for g, e in groups.items() if e["status"] == "ok"}
        relative = all("fidelity_relative" in e for e in ok.values())
        result = {
            "status": "ok",
            "groups": groups,
            "representation_gap": max((abs(e["synthetic_share"] - e["train_share"]) for e in groups.values()),
                                      default=None),
            "fidelity_gap": _spread({g: e.get("fidelity_relative" if relative else "fidelity") for g, e in ok.items()}),
            "fidelity_gap_basis": "relative to holdout" if relative else "absolute",
            "utility_gap": _spread({g: e.get("auc_loss") for g, e in ok.items()}),
        }
        if run is None:
            result["utility_note"] = "no utility run (no target declared or utility skipped)"
        out["attributes"][ref] = result
    done = [v for v in out["attributes"].values() if v["status"] == "ok"]
    for key in ("representation_gap", "fidelity_gap", "utility_gap"):
        values = [v[key] for v in done if v.get(key) is not None]
        out[key] = max(values) if values else None
    return out
