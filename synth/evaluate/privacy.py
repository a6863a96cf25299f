"""Privacy: how much the synthetic bundle gives away about the training entities.

Most tests compare two sets of real records of equal size — training records (members)
and holdout records (never seen by the generator): a generator that learned the
distribution and not the individuals treats both alike. Records are entity feature
vectors (root row plus child aggregates, see ``frames``) unless stated otherwise.

* DCR share: share of synthetic records nearer to a training record than to any
  holdout record (ties count half). Ideal ≈ 0.5; 1.0 means copies of training records.
* NNDR: distance to the nearest / second-nearest training record (median); near 0
  means synthetic records sit on top of single training records. Holdout's NNDR is the
  baseline.
* Membership inference: an attacker scores each real record by its distance to the
  nearest synthetic record (closer = member); the AUC of telling members from holdout
  records. Ideal 0.5.
* Exact-copy rate: share of synthetic rows whose learned values equal a training row
  (per tree table; the headline is the root table).
* Attribute inference: from the quasi-identifiers, guess the sensitive root column as
  that of the nearest synthetic record; risk = (success on members − success on holdout)
  / (1 − success on holdout), clipped at 0.
* Singling out: predicates built from synthetic records (value combinations of three
  root columns, numbers in training ventiles) that match exactly one synthetic record;
  success when they match exactly one training record, risk normalised against holdout.
* Linkability: the quasi-identifiers split in two halves; a real record is linked when
  its nearest synthetic record on one half is also (one of) its nearest on the other;
  risk as above.
* k-anonymity: smallest class of the synthetic tables over the declared quasi-identifiers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from masking.kanon import k_anonymity
from synth.evaluate.frames import Encoder, EntityLayout, Frame, row_frame, sample_index
from synth.evaluate.learn import ZERO, auc, nearest
from synth.evaluate.spec import EvalSpec, split_ref
from synth.schema import SynthSchema

SINGLING_OUT_COLUMNS = 3
SINGLING_OUT_SUBSETS = 12
NUMERIC_TOLERANCE = 0.05
"""A numeric sensitive value counts as guessed within 5 percentiles of the training CDF."""


def _risk(members: float, control: float) -> float:
    """Attack success beyond what holdout (control) records give, normalised to [0, 1]."""
    if control >= 1.0:
        return 0.0
    return max(0.0, (members - control) / (1.0 - control))


def _balanced(n_train: int, n_holdout: int, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = min(n_train, n_holdout, limit)
    return np.sort(rng.choice(n_train, n, replace=False)), np.sort(rng.choice(n_holdout, n, replace=False))


# ------------------------------------------------------------------ distance-based tests


def distance_tests(x_train: np.ndarray, x_holdout: np.ndarray, x_synth: np.ndarray) -> dict:
    """DCR share, NNDR and membership-inference AUC over encoded records (train and holdout balanced)."""
    d_train, _ = nearest(x_train, x_synth, k=min(2, len(x_train)))
    d_holdout, _ = nearest(x_holdout, x_synth, k=1)
    closer = d_train[:, 0] < d_holdout[:, 0]
    tie = d_train[:, 0] == d_holdout[:, 0]
    base, _ = nearest(x_train, x_holdout, k=min(2, len(x_train)))
    out = {
        "dcr_share": float(closer.mean() + 0.5 * tie.mean()),
        "dcr_train_median": float(np.median(d_train[:, 0])),
        "dcr_holdout_median": float(np.median(d_holdout[:, 0])),
        "dcr_baseline_median": float(np.median(base[:, 0])),
        "dcr_train": d_train[:, 0],
        "dcr_holdout": d_holdout[:, 0],
    }
    if d_train.shape[1] == 2:
        with np.errstate(invalid="ignore", divide="ignore"):
            nndr = np.where(d_train[:, 1] > 0, d_train[:, 0] / d_train[:, 1], 1.0)
            nndr_base = np.where(base[:, 1] > 0, base[:, 0] / base[:, 1], 1.0)
        out["nndr_median"] = float(np.median(nndr))
        out["nndr_baseline_median"] = float(np.median(nndr_base))
    member, _ = nearest(x_synth, x_train, k=1)
    control, _ = nearest(x_synth, x_holdout, k=1)
    labels = np.concatenate([np.ones(len(member), bool), np.zeros(len(control), bool)])
    out["mia_auc"] = auc(labels, -np.concatenate([member[:, 0], control[:, 0]]))
    return out


# ------------------------------------------------------------------ exact copies


def _row_codes(frames: list[Frame]) -> list[np.ndarray]:
    """Each frame as an int64 matrix with equal codes for equal values across frames."""
    names_num = list(frames[0].numeric)
    names_cat = list(frames[0].categorical)
    out = [[] for _ in frames]
    for name in names_num:
        for i, f in enumerate(frames):
            x = np.where(np.isnan(f.numeric[name]), np.nan, f.numeric[name]) + 0.0
            out[i].append(x.view(np.int64))
    for name in names_cat:
        vocab = pc.unique(pa.concat_arrays([f.categorical[name] for f in frames]))
        for i, f in enumerate(frames):
            out[i].append(pc.index_in(f.categorical[name], value_set=vocab).to_numpy(zero_copy_only=False)
                          .astype(np.int64))
    return [np.column_stack(cols) if cols else np.zeros((f.n, 0), np.int64) for cols, f in zip(out, frames)]


def copy_rate(train: Frame, synth: Frame) -> float | None:
    """Share of synthetic records equal, in every column, to some training record."""
    if synth.n == 0 or not train.names():
        return None
    a, b = _row_codes([train, synth])
    names = [f"c{i}" for i in range(a.shape[1])]
    known = pa.table(list(a.T), names=names).group_by(names, use_threads=False).aggregate([])
    probe = pa.table(list(b.T) + [np.arange(len(b))], names=names + ["__row"])
    hits = probe.join(known, keys=names, join_type="inner", use_threads=False)
    return hits.num_rows / synth.n


def exact_copies(schema: SynthSchema, train, synth, columns) -> dict[str, float | None]:
    """Per tree table: share of synthetic rows (learned columns) duplicating a training row."""
    return {t.name: copy_rate(row_frame(schema, train, columns, t.name, ancestors=False),
                              row_frame(schema, synth, columns, t.name, ancestors=False))
            for t in schema.tables}


# ------------------------------------------------------------------ attacker tests


def _encode(train: Frame, *others: Frame) -> list[np.ndarray]:
    enc = Encoder.fit(train)
    return [enc.transform(f) for f in (train, *others)]


def attribute_inference(known: tuple[Frame, Frame, Frame], secret: tuple, numeric: bool, encoder_ranks) -> dict:
    """Guess the secret of members and holdout records from their nearest synthetic record."""
    x_train, x_holdout, x_synth = _encode(*known)
    s_train, s_holdout, s_synth = secret
    rates = {}
    for name, x, truth in (("members", x_train, s_train), ("holdout", x_holdout, s_holdout)):
        _, rows = nearest(x_synth, x, k=1)
        guess = s_synth[rows[:, 0]]
        if numeric:
            hit = np.abs(encoder_ranks(guess) - encoder_ranks(truth)) <= NUMERIC_TOLERANCE
        else:
            hit = guess == truth
        rates[name] = float(np.mean(hit))
    return {"success_members": rates["members"], "success_holdout": rates["holdout"],
            "risk": _risk(rates["members"], rates["holdout"])}


def _codes(frame: Frame, train: Frame, name: str) -> np.ndarray:
    """Training-ventile codes of a numeric column, or category codes of a categorical one."""
    if name in frame.numeric:
        ref = train.numeric[name]
        edges = np.unique(np.nanquantile(ref, np.linspace(0, 1, 21)[1:-1])) if np.any(~np.isnan(ref)) else []
        x = frame.numeric[name]
        return np.where(np.isnan(x), -1, np.searchsorted(edges, x, side="right"))
    vocab = pc.unique(train.categorical[name])
    return pc.index_in(frame.categorical[name], value_set=vocab).fill_null(-1).to_numpy(zero_copy_only=False)


def singling_out(train: Frame, holdout: Frame, synth: Frame, rng: np.random.Generator) -> dict:
    """Predicates unique in the synthetic records that single out a member vs a holdout record."""
    names = train.names()
    width = min(SINGLING_OUT_COLUMNS, len(names))
    hits = {"members": 0, "holdout": 0}
    predicates = 0
    for _ in range(SINGLING_OUT_SUBSETS):
        chosen = list(rng.choice(names, width, replace=False))
        combos = []
        for frame in (synth, train, holdout):
            codes = np.column_stack([_codes(frame, train, c) for c in chosen]).astype(np.int64)
            combos.append(codes)
        allrows = np.concatenate(combos)
        _, ids = np.unique(allrows, axis=0, return_inverse=True)
        ids = ids.ravel()
        s_ids, t_ids, h_ids = np.split(ids, [synth.n, synth.n + train.n])
        size = int(ids.max()) + 1 if len(ids) else 0
        s_count, t_count, h_count = (np.bincount(x, minlength=size) for x in (s_ids, t_ids, h_ids))
        unique = s_count == 1
        predicates += int(unique.sum())
        hits["members"] += int((unique & (t_count == 1)).sum())
        hits["holdout"] += int((unique & (h_count == 1)).sum())
    if predicates == 0:
        return {"predicates": 0, "success_members": 0.0, "success_holdout": 0.0, "risk": 0.0}
    m, h = hits["members"] / predicates, hits["holdout"] / predicates
    return {"predicates": predicates, "success_members": m, "success_holdout": h, "risk": _risk(m, h)}


def linkability(train: Frame, holdout: Frame, synth: Frame, split: tuple[list[str], list[str]]) -> dict:
    """A record is linked when its nearest synthetic record on the first column half is also
    (one of) its nearest on the second half: the attacker joins the halves through it."""
    encoded = []
    for names in split:
        drop = [set(f.names()) - set(names) for f in (train, holdout, synth)]
        encoded.append(_encode(*(f.without(d) for f, d in zip((train, holdout, synth), drop))))
    (a_train, a_holdout, a_synth), (b_train, b_holdout, b_synth) = encoded
    found = {}
    for name, a, b in (("members", a_train, b_train), ("holdout", a_holdout, b_holdout)):
        via = nearest(a_synth, a, k=1)[1][:, 0]
        best = nearest(b_synth, b, k=1)[0][:, 0]
        found[name] = float(np.mean(np.linalg.norm(b - b_synth[via], axis=1) <= best + ZERO))
    return {"columns": [list(split[0]), list(split[1])], "success_members": found["members"],
            "success_holdout": found["holdout"], "risk": _risk(found["members"], found["holdout"])}


def kanon(schema: SynthSchema, train, synth, quasi_identifiers: tuple[str, ...]) -> dict:
    """k-anonymity of each table holding declared quasi-identifiers, synthetic and training."""
    by_table: dict[str, list[str]] = {}
    for ref in quasi_identifiers:
        table, column = split_ref(ref)
        by_table.setdefault(table, []).append(column)
    out = {}
    for table, cols in by_table.items():
        s, t = k_anonymity(synth[table], cols), k_anonymity(train[table], cols)
        out[table] = {"columns": cols, "k": s.k, "classes": s.classes, "share_below_5": s.share_below[5],
                      "training_k": t.k, "training_share_below_5": t.share_below[5]}
    return out


# ------------------------------------------------------------------ the section


def privacy(schema: SynthSchema, train: Mapping[str, pa.Table], holdout: Mapping[str, pa.Table] | None,
            synth: Mapping[str, pa.Table], spec: EvalSpec, columns, layout: EntityLayout, progress) -> dict:
    """Every privacy test that the data and declarations allow; the others listed with the reason."""
    rng = np.random.default_rng(spec.seed)
    out: dict = {"skipped": {}}
    progress("exact copies")
    copies = exact_copies(schema, train, synth, columns)
    out["exact_copies"] = copies
    out["exact_copy_rate"] = copies[schema.root]
    if spec.quasi_identifiers:
        out["k_anonymity"] = kanon(schema, train, synth, spec.quasi_identifiers)
        out["k"] = min(v["k"] for v in out["k_anonymity"].values())
    else:
        out["skipped"]["k_anonymity"] = "no quasi-identifiers declared (EvalSpec.quasi_identifiers)"
    if not holdout or holdout[schema.root].num_rows < 2:
        reason = "no holdout entities given: DCR, NNDR, membership, attribute, singling-out and linkability " \
                 "tests compare training with holdout records"
        for name in ("distance", "attribute_inference", "singling_out", "linkability"):
            out["skipped"][name] = reason
        return out

    progress("entity vectors")
    frames = {k: layout.frame(schema, v) for k, v in (("train", train), ("holdout", holdout), ("synthetic", synth))}
    i_train, i_holdout = _balanced(frames["train"].n, frames["holdout"].n, spec.max_rows, rng)
    f_train, f_holdout = frames["train"].take(i_train), frames["holdout"].take(i_holdout)
    f_synth = frames["synthetic"].take(sample_index(frames["synthetic"].n, spec.max_rows, rng))
    out["records"] = {"train": f_train.n, "holdout": f_holdout.n, "synthetic": f_synth.n}
    encoder = Encoder.fit(f_train)
    x = [encoder.transform(f) for f in (f_train, f_holdout, f_synth)]
    progress("distances and membership inference")
    distance = distance_tests(*x)
    out["histograms"] = {"dcr_train": distance.pop("dcr_train").tolist(),
                         "dcr_holdout": distance.pop("dcr_holdout").tolist()}
    out.update(distance)
    out["entity_copy_rate"] = float(np.mean(nearest(x[0], x[2], k=1)[0][:, 0] == 0.0))

    root_frames = [row_frame(schema, t, columns, schema.root, ancestors=False)
                   for t in (train, holdout, synth)]
    root_frames = [root_frames[0].take(i_train), root_frames[1].take(i_holdout),
                   root_frames[2].take(sample_index(root_frames[2].n, spec.max_rows, rng))]
    qis = [q for q in spec.quasi_identifiers if split_ref(q)[0] == schema.root]
    progress("attribute inference")
    if spec.sensitive is None:
        out["skipped"]["attribute_inference"] = "no sensitive column declared (EvalSpec.sensitive)"
    elif split_ref(spec.sensitive)[0] != schema.root:
        out["skipped"]["attribute_inference"] = (f"sensitive column {spec.sensitive!r} is not a column of the "
                                                 f"root table {schema.root!r}")
    elif spec.sensitive not in root_frames[0].names():
        out["skipped"]["attribute_inference"] = f"sensitive column {spec.sensitive!r} is not a learned column"
    else:
        known_names = set(qis) - {spec.sensitive} or set(root_frames[0].names()) - {spec.sensitive}
        known = tuple(f.without(set(f.names()) - known_names) for f in root_frames)
        numeric = spec.sensitive in root_frames[0].numeric
        if numeric:
            secret = tuple(f.numeric[spec.sensitive] for f in root_frames)
            ranks = Encoder.fit(root_frames[0]).ranks
            out["attribute_inference"] = attribute_inference(known, secret, True,
                                                             lambda v: ranks(spec.sensitive, v))
        else:
            secret = tuple(f.categorical[spec.sensitive].to_numpy(zero_copy_only=False) for f in root_frames)
            out["attribute_inference"] = attribute_inference(known, secret, False, None)
        out["attribute_inference"]["known_columns"] = sorted(known_names)
    progress("singling out")
    out["singling_out"] = singling_out(root_frames[0], root_frames[1], root_frames[2], rng)
    progress("linkability")
    names = qis if len(qis) >= 2 else root_frames[0].names()
    if len(names) < 2:
        out["skipped"]["linkability"] = "fewer than two root columns to split between two linked data sets"
    else:
        out["linkability"] = linkability(*root_frames, (names[0::2], names[1::2]))
    return out
