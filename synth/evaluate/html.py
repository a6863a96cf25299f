"""``render_html``: a self-contained report page (inline CSS and SVG, no scripts, no links
out) from an ``evaluate`` report, optionally with its charter decision and a drift report."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

import numpy as np

from synth.evaluate.charter import METRICS

SECTIONS = ("summary", "integrity", "fidelity", "utility", "privacy", "fairness", "drift", "skipped", "spec")
REAL, SYNTH, OTHER = "#4c72b0", "#dd8452", "#55a868"
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}.muted{color:#777}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plot{display:inline-block;border:1px solid #eee;padding:.4em}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}
"""


# ------------------------------------------------------------------ formatting


def fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, tuple):  # (html, css class): already escaped markup
                cells.append(f'<td class="{cell[1]}">{cell[0]}</td>')
            else:
                cls = ' class="num"' if isinstance(cell, (int, float)) and not isinstance(cell, bool) else ""
                cells.append(f"<td{cls}>{escape(fmt(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def legend(*series: tuple[str, str]) -> str:
    return '<div class="legend">' + "".join(f'<span style="background:{c}"></span>{escape(n)}'
                                            for n, c in series) + "</div>"


# ------------------------------------------------------------------ SVG charts


def hbars(items: Sequence[tuple[str, float | None]], vmax: float = 1.0, mark: float | None = None,
          title: str = "") -> str:
    """Horizontal bars, one per (label, value), scaled to ``vmax``; ``mark`` draws a threshold line."""
    items = list(items)
    label_w, bar_w, row_h = 260, 320, 18
    height = row_h * len(items) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 70}" height="{height}" '
             f'role="img"><title>{escape(title)}</title>']
    for i, (label, value) in enumerate(items):
        y = 20 + i * row_h
        w = 0 if value is None or vmax <= 0 else max(0.0, min(value / vmax, 1.0)) * bar_w
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" font-size="11">'
                     f'{escape(label[:42])}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 5}" fill="{REAL}"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="11">{escape(fmt(value))}</text>')
    if mark is not None and vmax > 0:
        x = label_w + min(mark / vmax, 1.0) * bar_w
        parts.append(f'<line x1="{x:.1f}" y1="14" x2="{x:.1f}" y2="{height - 6}" stroke="#c62828" '
                     f'stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{label_w}" y="12" font-size="12" font-weight="600">{escape(title)}</text></svg>')
    return "".join(parts)


def columns_chart(labels: Sequence[str], series: Mapping[str, Sequence[float]], colors: Sequence[str],
                  title: str) -> str:
    """Vertical grouped bars: one group per label, one bar per series."""
    n, k = len(labels), max(len(series), 1)
    group_w = max(12, min(40, 440 // max(n, 1)))
    width, height, base = max(60 + 7 * len(title), 60 + n * group_w), 220, 170
    vmax = max([max(v, default=0) for v in series.values()] + [1e-12])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
             f'<title>{escape(title)}</title>'
             f'<text x="40" y="12" font-size="12" font-weight="600">{escape(title)}</text>'
             f'<line x1="40" y1="{base}" x2="{width}" y2="{base}" stroke="#999"/>'
             f'<text x="36" y="24" font-size="10" text-anchor="end">{vmax:.2g}</text>']
    for i, label in enumerate(labels):
        x0 = 42 + i * group_w
        for j, (values, color) in enumerate(zip(series.values(), colors)):
            h = (values[i] / vmax) * (base - 22) if values[i] else 0
            bw = (group_w - 3) / k
            parts.append(f'<rect x="{x0 + j * bw:.1f}" y="{base - h:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                         f'fill="{color}"/>')
        parts.append(f'<text transform="translate({x0 + group_w / 2:.1f},{base + 6}) rotate(60)" '
                     f'font-size="9">{escape(str(label)[:16])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(samples: Mapping[str, Sequence[float]], colors: Sequence[str], title: str, bins: int = 30) -> str:
    """Overlaid histograms (as shares) of several samples on common bins."""
    arrays = {k: np.asarray(v, dtype=float) for k, v in samples.items() if len(v)}
    if not arrays:
        return ""
    high = max(float(np.quantile(a, 0.99)) for a in arrays.values())
    edges = np.linspace(0, high if high > 0 else 1.0, bins + 1)
    shares = {k: (np.histogram(np.clip(a, 0, edges[-1]), edges)[0] / len(a)).tolist() for k, a in arrays.items()}
    labels = [f"{e:.2g}" for e in edges[:-1]]
    return columns_chart(labels, shares, colors, title)


def plot(svg: str) -> str:
    return f'<div class="plot">{svg}</div>' if svg else ""


# ------------------------------------------------------------------ sections


def summary(report: Mapping, decision: Mapping | None) -> str:
    out = []
    if decision:
        cls = "ok" if decision["status"] == "released" else "bad"
        out.append(f'<p>Charter decision: <span class="{cls}">{escape(decision["status"])}</span></p>')
        out.append(table(["metric", "rule", "value", "ok", "reason"], [
            (c["metric"], f'{c["op"]} {fmt(c["threshold"])}', c["value"],
             ("pass", "ok") if c["ok"] else ("fail", "bad"), c.get("reason", "")) for c in decision["checks"]]))
    rows = [(name, value, METRICS.get(name, "")) for name, value in report["metrics"].items()]
    out.append(table(["metric", "value", "meaning"], rows))
    sizes = report.get("sizes", {})
    names = sorted({n for s in sizes.values() for n in s})
    sizes = {k: sizes[k] for k in ("train", "holdout", "synthetic") if k in sizes}
    out.append("<h3>Rows per table</h3>" + table(["table", *sizes], [(n, *(sizes[s].get(n) for s in sizes))
                                                                       for n in names]))
    return "".join(out)


def integrity(section: Mapping) -> str:
    status = '<span class="ok">complete</span>' if section["ok"] else '<span class="bad">broken</span>'
    out = [f"<p>Referential integrity {status}: {fmt(section['ri_percent'])} % of foreign-key values find "
           "their target.</p>"]
    if section["violations"]:
        out.append("<ul>" + "".join(f"<li>{escape(v)}</li>" for v in section["violations"]) + "</ul>")
    return "".join(out)


def fidelity(section: Mapping) -> str:
    scores = section["scores"]
    base = section.get("baseline", {}).get("scores", {})
    ceiling = f"; real holdout vs training: <b>{fmt(section['baseline']['overall'])}</b>" if base else ""
    out = [f"<p>Overall fidelity <b>{fmt(section['overall'])}</b> (1 = synthetic indistinguishable from "
           f"training){ceiling}.</p>",
           (f"<p>Left out of the scores (conditioned on purpose): {escape(', '.join(section['conditioned']))}.</p>"
            if section.get("conditioned") else ""),
           table(["section", "synthetic vs training", "holdout vs training"],
                 [(k, v, base.get(k)) for k, v in scores.items()])]
    plots = [hbars(list(scores.items()), title="section scores")]
    shapes = sorted(section["items"]["column_shapes"].items(), key=lambda kv: kv[1])
    plots.append(hbars(shapes[:25], title="column shapes (worst first)"))
    out.append('<div class="plots">' + "".join(plot(p) for p in plots) + "</div>")
    out.append("<h3>Distributions of the least faithful columns</h3>" + legend(("training", REAL),
                                                                                 ("synthetic", SYNTH)))
    out.append('<div class="plots">' + "".join(
        plot(columns_chart(d["labels"], {"training": d["real"], "synthetic": d["synthetic"]}, (REAL, SYNTH), name))
        for name, d in section.get("distributions", {}).items()) + "</div>")
    for key, title in (("column_pairs", "Column pairs (worst 15)"),
                       ("intertable_trends", "Inter-table trends (worst 15)"),
                       ("cardinality", "Children per parent"), ("temporal", "Temporal patterns")):
        items = sorted(section["items"].get(key, {}).items(), key=lambda kv: kv[1])[:15]
        if items:
            out.append(f"<h3>{escape(title)}</h3>" + table(["item", "similarity"], items))
    if section.get("wasserstein"):
        out.append("<h3>Wasserstein-1 distance / real std</h3>"
                   + table(["column", "W1 / std"], sorted(section["wasserstein"].items(), key=lambda kv: -kv[1])))
    return "".join(out)


def skipped_note(section: Mapping) -> str:
    return f'<p class="muted">Skipped: {escape(section.get("reason", ""))}</p>'


def utility(section: Mapping) -> str:
    if section.get("status") != "ok":
        return skipped_note(section)
    out = [f"<p>Target <code>{escape(section['target'])}</code> = {escape(str(section['positive']))} at "
           f"{escape(section['level'])} level; models: gradient-boosted trees, tested on real holdout.</p>",
           table(["", "TSTR (trained on synthetic)", "TRTR (trained on real)", "ratio"],
                 [("AUC", section["tstr_auc"], section["trtr_auc"], section["auc_ratio"]),
                  ("F1", section["tstr_f1"], section["trtr_f1"], section["f1_ratio"])]),
           table(["data", "records", "positive rate"],
                 [(k, section["records"][k], section["positive_rate"][k]) for k in section["records"]])]
    chart = columns_chart(["AUC", "F1"], {"TSTR": [section["tstr_auc"] or 0, section["tstr_f1"] or 0],
                                          "TRTR": [section["trtr_auc"] or 0, section["trtr_f1"] or 0]},
                          (SYNTH, REAL), "TSTR vs TRTR")
    out.append(legend(("TSTR", SYNTH), ("TRTR", REAL)) + plot(chart))
    return "".join(out)


PRIVACY_EXTRA = {
    "dcr_holdout_median": "median distance from a synthetic record to the nearest holdout record",
    "nndr_baseline_median": "median NNDR of holdout records against training (what new real records show)",
    "k": "smallest k-anonymity class over the declared quasi-identifiers (synthetic tables)",
}


def privacy(section: Mapping) -> str:
    rows = [(k, section.get(k), METRICS.get(f"privacy.{k}", PRIVACY_EXTRA.get(k, ""))) for k in (
        "dcr_share", "mia_auc", "dcr_train_median", "dcr_holdout_median", "dcr_baseline_median", "nndr_median",
        "nndr_baseline_median", "exact_copy_rate", "entity_copy_rate", "k")]
    out = [table(["measure", "value", "meaning"], rows)]
    attacks = [(name, section[name].get("success_members"), section[name].get("success_holdout"), section[name]["risk"])
               for name in ("attribute_inference", "singling_out", "linkability") if name in section]
    if attacks:
        out.append("<h3>Attacks</h3>" + table(["attack", "success on members", "success on holdout", "risk"], attacks))
    if section.get("exact_copies"):
        out.append("<h3>Exact copies per table</h3>" + table(["table", "copied share"],
                                                              list(section["exact_copies"].items())))
    for table_name, k in section.get("k_anonymity", {}).items():
        out.append(f"<h3>k-anonymity of {escape(table_name)}</h3>" + table(
            ["quasi-identifiers", "k (synthetic)", "share in classes < 5", "k (training)"],
            [(", ".join(k["columns"]), k["k"], k["share_below_5"], k["training_k"])]))
    hist = section.get("histograms")
    if hist:
        out.append(legend(("synthetic → nearest training", REAL), ("synthetic → nearest holdout", OTHER)))
        out.append(plot(histogram({"train": hist["dcr_train"], "holdout": hist["dcr_holdout"]}, (REAL, OTHER),
                                  "distance to closest record (DCR)")))
    for name, reason in section.get("skipped", {}).items():
        out.append(f'<p class="muted">{escape(name)} skipped: {escape(reason)}</p>')
    return "".join(out)


def fairness(section: Mapping) -> str:
    if section.get("status") != "ok":
        return skipped_note(section)
    gaps = ("representation_gap", "fidelity_gap", "utility_gap")
    out = [table(["gap", "value", "meaning"], [(k, section.get(k), METRICS[f"fairness.{k}"]) for k in gaps])]
    for ref, attr in section["attributes"].items():
        out.append(f"<h3>{escape(ref)}</h3>")
        if attr["status"] != "ok":
            out.append(skipped_note(attr))
            continue
        groups = attr["groups"]
        out.append(table(["group", "training share", "synthetic share", "fidelity", "holdout baseline",
                          "TSTR AUC", "TRTR AUC", "status"],
                         [(g, e["train_share"], e["synthetic_share"], e.get("fidelity"), e.get("fidelity_baseline"),
                           e.get("tstr_auc"), e.get("trtr_auc"), e["status"]) for g, e in groups.items()]))
        labels = list(groups)
        out.append(legend(("training share", REAL), ("synthetic share", SYNTH), ("fidelity", OTHER)))
        out.append(plot(columns_chart(labels, {"train": [groups[g]["train_share"] for g in labels],
                                               "synthetic": [groups[g]["synthetic_share"] for g in labels],
                                               "fidelity": [groups[g].get("fidelity") or 0 for g in labels]},
                                      (REAL, SYNTH, OTHER), f"subgroups of {ref}")))
    return "".join(out)


def drift(section: Mapping | None) -> str:
    if not section:
        return '<p class="muted">No drift comparison in this report (see <code>synth.evaluate.drift</code>).</p>'
    items = list(section["columns"].items()) + [(f"{k}#count", v) for k, v in section["child_counts"].items()]
    out = [f"<p>Status: <b>{escape(section['status'])}</b>; threshold {fmt(section['threshold'])}; drifted: "
           f"{escape(', '.join(section['drifted']) or 'none')}.</p>",
           table(["column", "statistic", "distance", "noise level", "drifted"],
                 [(k, v["statistic"], v["distance"], v["noise"], ("yes", "bad") if v["drifted"] else "no")
                  for k, v in items]),
           plot(hbars(sorted(((k, v["distance"]) for k, v in items), key=lambda kv: -kv[1])[:30],
                      mark=section["threshold"], title="distance (dashed: threshold)"))]
    return "".join(out)


def render_html(report: Mapping, path: str | Path, *, decision: Mapping | None = None,
                title: str = "Synthetic bundle evaluation") -> Path:
    """Write ``report`` (plus a ``judge`` decision, when given, and ``report["drift"]``, when
    present) as one self-contained HTML file; returns its path."""
    decision = decision or report.get("decision")
    bodies = {
        "summary": summary(report, decision),
        "integrity": integrity(report["integrity"]),
        "fidelity": fidelity(report["fidelity"]),
        "utility": utility(report["utility"]),
        "privacy": privacy(report["privacy"]),
        "fairness": fairness(report["fairness"]),
        "drift": drift(report.get("drift")),
        "skipped": table(["metric", "reason"], sorted(report.get("skipped", {}).items())),
        "spec": f"<pre>{escape(json.dumps(report.get('spec', {}), indent=2, default=str))}</pre>",
    }
    nav = " · ".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    html = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{escape(title)}</h1><p>{nav}</p>"]
    for name in SECTIONS:
        html.append(f'<section id="{name}"><h2>{name.capitalize()}</h2>{bodies[name]}</section>')
    html.append("</body></html>")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(html), encoding="utf-8")
    return target
