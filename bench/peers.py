"""Peer benchmark (issue #7): SDV's HMASynthesizer, MOSTLY AI's open engine and our
generators fit and sample the same bank fixture subsets in one run.

``python -m bench --only peers --customers 2000,10000 --timeout 1800``

Cases, cut from one fixture of N customers (80 % of customers, by entity, for training;
20 % held out for the privacy tests):

* ``two-level`` — customers → accounts, customers → transactions (each transaction
  re-keyed to its account's customer): the shape SDV's open HMA accepts;
* ``sequential`` — customers → transactions: MOSTLY AI's flat model for customers and
  its sequential model for transactions with customers as context;
* ``tree`` — the whole entity tree (six tables, three levels, a card reference inside
  the tree). HMA's refusal is measured by constructing it, never by fitting it.

Each (case, system) runs in its own spawned process with a timeout (``peers_systems``).
Quality is SDMetrics' multi-table QualityReport against the training slices, twice:
its default thresholds and every column pair scored. Privacy (DCR share, MIA AUC) comes
from ``synth.evaluate`` against the holdout entities; RI from ``check_integrity``.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata as dist
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from bench.peers_systems import metadata, run_task, to_pandas
from synth.integrity import check_integrity, match_rows, select_entities
from synth.schema import SynthSchema, SynthTable
from synth.transform import column_kind

REFERENCE_TABLES = ("countries", "merchants", "devices")
PII = frozenset({"customers.first_name", "customers.last_name", "customers.email", "customers.phone",
                 "customers.national_id", "addresses.street", "cards.pan", "accounts.iban"})
"""Columns no generator learns (ours fill them with made-up values): left out for every system."""
HOLDOUT_SHARE = 0.2
FIXTURE_SEED = 11
SEED = 1
DP_EPSILON = 5.0
CASES = ("two-level", "sequential", "tree")


@dataclass(frozen=True)
class System:
    """One row kind of the table: which runner, with what settings, on which cases."""

    label: str
    runner: str
    task: dict
    cases: tuple[str, ...]


@dataclass
class Case:
    name: str
    schema: SynthSchema
    train: dict[str, pa.Table]
    holdout: dict[str, pa.Table]
    references: dict[str, pa.Table]
    sizes: dict[str, int] = field(default_factory=dict)


def systems(neural_epochs: int, mostly_minutes: float) -> dict[str, System]:
    """Every system of the benchmark by key (``--systems`` picks among them)."""
    neural = {"epochs": neural_epochs}
    return {
        "hma": System("SDV HMASynthesizer", "hma", {}, ("two-level", "tree")),
        "mostly": System("mostlyai-engine", "mostly", {"minutes": mostly_minutes}, ("sequential", "tree")),
        "rules": System("microdb rules", "ours", {"generator": "rules"}, CASES),
        "copula": System("microdb copula", "ours", {"generator": "copula"}, CASES),
        "neural": System("microdb neural", "ours", {"generator": "neural", "params": neural}, CASES),
        "neural-dp": System(f"microdb neural DP ε={DP_EPSILON:g}", "ours",
                            {"generator": "neural", "params": {**neural, "dp_epsilon": DP_EPSILON}}, CASES),
    }


# ------------------------------------------------------------------ the fixture subsets


def tree_schema() -> SynthSchema:
    """The bank fixture's whole customer tree."""
    return SynthSchema(root="customers", key=("customer_id",), tables=(
        SynthTable("customers", None, (), (), ("customer_id",)),
        SynthTable("addresses", "customers", ("customer_id",), ("customer_id",), ("address_id",)),
        SynthTable("consents", "customers", ("customer_id",), ("customer_id",), ("consent_id",)),
        SynthTable("accounts", "customers", ("customer_id",), ("customer_id",), ("account_id",)),
        SynthTable("cards", "accounts", ("account_id",), ("account_id",), ("card_id",)),
        SynthTable("transactions", "accounts", ("account_id",), ("account_id",), ("transaction_id",), order_by="ts"),
    ))


def star_schema(children: tuple[str, ...]) -> SynthSchema:
    """Customers with ``children`` hanging directly off them (transactions via customer_id)."""
    tables = [SynthTable("customers", None, (), (), ("customer_id",))]
    for name in children:
        pk = {"accounts": "account_id", "transactions": "transaction_id"}[name]
        tables.append(SynthTable(name, "customers", ("customer_id",), ("customer_id",), (pk,),
                                 order_by="ts" if name == "transactions" else None))
    return SynthSchema(root="customers", key=("customer_id",), tables=tuple(tables))


def _learnable(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Drop PII and free-text columns (``column_kind`` 'text', e.g. ip_address): no generator
    of ours learns them, so no peer is asked to."""
    out = {}
    for name, table in tables.items():
        drop = [f.name for f in table.schema if f"{name}.{f.name}" in PII
                or column_kind(name, f, table.column(f.name)) == "text"]
        out[name] = table.drop(drop)
    return out


def _star_tables(tree: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Transactions re-keyed to their account's customer (account and card links dropped)."""
    accounts, tx = tree["accounts"], tree["transactions"]
    rows = match_rows(tx, ("account_id",), accounts, ("account_id",))
    owner = accounts.column("customer_id").take(pa.array(rows))
    tx = tx.drop(["account_id", "card_id"]).append_column("customer_id", owner)
    return {"customers": tree["customers"], "accounts": accounts, "transactions": tx}


def load_cases(customers: int, only: tuple[str, ...] = CASES) -> dict[str, Case]:
    """The three cases cut from one fixture of ``customers`` customers, split 80/20 by entity.
    The fixture's one 4,000-transaction outlier customer is left out of both halves."""
    from fixtures.bank import BIG_CUSTOMER_ID, generate

    flat = {name: table for group in generate(customers, FIXTURE_SEED).values() for name, table in group.items()}
    references = {name: flat.pop(name) for name in REFERENCE_TABLES}
    tree = _learnable(flat)
    ids = tree["customers"].column("customer_id").to_numpy()
    kept = np.flatnonzero(ids != BIG_CUSTOMER_ID)
    order = np.random.default_rng(FIXTURE_SEED).permutation(kept)
    n_hold = round(HOLDOUT_SHARE * len(order))
    hold, train = np.zeros(len(ids), bool), np.zeros(len(ids), bool)
    hold[order[:n_hold]] = True
    train[order[n_hold:]] = True
    star = _star_tables(tree)
    shapes = {"two-level": (star_schema(("accounts", "transactions")), star),
              "sequential": (star_schema(("transactions",)), star),
              "tree": (tree_schema(), tree)}
    cases = {}
    for name in only:
        schema, tables = shapes[name]
        tables = {t.name: tables[t.name] for t in schema.tables}
        schema = schema.infer_references(tables, references)
        used = {link.ref_table for link in schema.references if not schema.is_tree_table(link.ref_table)}
        refs = {k: v for k, v in references.items() if k in used}
        case = Case(name, schema, select_entities(schema, tables, train), select_entities(schema, tables, hold), refs)
        case.sizes = {k: v.num_rows for k, v in case.train.items()}
        cases[name] = case
    return cases


def write_case(case: Case, directory: Path) -> Path:
    """Training slices and references as Parquet, schema as JSON: a spawned system's input."""
    for sub in ("train", "references"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "schema.json").write_text(json.dumps(case.schema.to_dict()))
    for name, table in case.train.items():
        pq.write_table(table, directory / "train" / f"{name}.parquet")
    for name, table in case.references.items():
        pq.write_table(table, directory / "references" / f"{name}.parquet")
    return directory


# ------------------------------------------------------------------ running one system


def run_system(system: System, case: Case, case_dir: Path, out: Path, timeout_s: float) -> dict:
    """Spawn the system's process, wait at most ``timeout_s``; the row's status is ok,
    unsupported, timeout or error."""
    task = {**system.task, "system": system.runner, "input": str(case_dir), "out": str(out), "seed": SEED,
            "n": case.train[case.schema.root].num_rows}
    proc = multiprocessing.get_context("spawn").Process(target=run_task, args=(task,), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    proc.join(timeout_s)
    wall = time.perf_counter() - t0
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"status": "timeout", "reason": f"no result after {timeout_s:.0f} s (process killed)", "wall_s": wall}
    if (out / "result.json").is_file():
        result = json.loads((out / "result.json").read_text())
        result["wall_s"] = wall
        return result
    error = (out / "error.txt").read_text().strip().splitlines() if (out / "error.txt").is_file() else []
    return {"status": "error", "reason": error[-1] if error else f"process exited with code {proc.exitcode}",
            "wall_s": wall}


def read_tables(case: Case, out: Path) -> dict[str, pa.Table]:
    return {t.name: pq.read_table(out / "tables" / f"{t.name}.parquet") for t in case.schema.tables}


# ------------------------------------------------------------------ scoring


def quality(case: Case, synthetic: dict[str, pa.Table]) -> dict:
    """SDMetrics' QualityReport (score and properties) with its default thresholds and
    with both thresholds at 0 (every column pair scored)."""
    from sdmetrics.reports import QualityReport

    md = metadata(case.schema, {name: table.schema for name, table in case.train.items()})
    real = {name: to_pandas(table) for name, table in case.train.items()}
    fake = {name: to_pandas(synthetic[name]) for name in case.train}
    out = {}
    for label, zero in (("default", False), ("all_pairs", True)):
        report = QualityReport()
        if zero:
            report.real_correlation_threshold = 0
            report.real_association_threshold = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report.generate(real, fake, md, verbose=False)
        props = report.get_properties()
        out[label] = {"score": _num(report.get_score()),
                      **{str(p): _num(s) for p, s in zip(props["Property"], props["Score"])}}
    return out


def privacy(case: Case, synthetic: dict[str, pa.Table]) -> dict:
    """DCR share and MIA AUC (and our own fidelity score) from ``synth.evaluate``."""
    from synth.evaluate import EvalSpec, evaluate

    report = evaluate(case.schema, case.train, case.holdout, synthetic, case.references, EvalSpec(seed=SEED))
    m = report["metrics"]
    return {"dcr_share": m.get("privacy.dcr_share"), "mia_auc": m.get("privacy.mia_auc"),
            "fidelity_overall": m.get("fidelity.overall")}


def _num(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def score(case: Case, synthetic: dict[str, pa.Table]) -> dict:
    integrity = check_integrity(case.schema, synthetic, case.references)
    out = {"ri_percent": integrity.ri_percent, "violations": integrity.violations[:5],
           "rows": {k: v.num_rows for k, v in synthetic.items()}}
    out["quality"] = quality(case, synthetic)
    out.update(privacy(case, synthetic))
    return out


# ------------------------------------------------------------------ table and targets


def _f(value, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


COLUMNS = ("N", "case", "system", "fit s", "sample s", "peak MB", "quality", "quality all pairs", "shapes",
           "pairs", "pairs all", "cardinality", "intertable", "intertable all", "DCR share", "MIA AUC", "RI %")


def table_cells(row: dict) -> list[str]:
    head = [f"{row['customers']:,}", row["case"], row["label"]]
    if row["status"] != "ok":
        return head + [f"{row['status']} (note)"] + [""] * (len(COLUMNS) - 4)
    q, a = row["quality"]["default"], row["quality"]["all_pairs"]
    return head + [
        _f(row["fit_s"], "{:.1f}"), _f(row["sample_s"], "{:.1f}"), _f(row["peak_rss_mb"], "{:,.0f}"),
        _f(q["score"], "{:.3f}"), _f(a["score"], "{:.3f}"), _f(q.get("Column Shapes"), "{:.3f}"),
        _f(q.get("Column Pair Trends"), "{:.3f}"), _f(a.get("Column Pair Trends"), "{:.3f}"),
        _f(q.get("Cardinality"), "{:.3f}"), _f(q.get("Intertable Trends"), "{:.3f}"),
        _f(a.get("Intertable Trends"), "{:.3f}"), _f(row["dcr_share"], "{:.3f}"), _f(row["mia_auc"], "{:.3f}"),
        _f(row["ri_percent"], "{:.1f}"),
    ]


def notes(rows: list[dict]) -> list[str]:
    """Why a row has no numbers (unsupported, timeout, error)."""
    return [f"{r['label']} on {r['case']} ({r['customers']:,}): {r['status']} — {r.get('reason', '')}"
            for r in rows if r["status"] != "ok"]


def footer(settings: dict) -> list[str]:
    limits = (f"Training limits: mostlyai-engine max_training_time={settings['mostly_minutes']:g} min per model "
              "(max_epochs 100, value protection on, rare categories sampled); microdb neural epochs="
              f"{settings['neural_epochs']} (early stopping on 10 % of entities; the DP variant trains on all "
              f"entities for the accounted epochs, ε={DP_EPSILON:g}, δ=1e-5, entity-level).")
    timing = ("fit s / sample s: wall time of the fit and sample calls alone (library imports and data loading "
              "not counted); peak MB: peak RSS of the system's own spawned process (Python, its libraries, the data).")
    scores = (f"quality: SDMetrics {settings['versions'].get('sdmetrics')} multi-table QualityReport against the "
              "training slices; 'all pairs': correlation and association thresholds at 0. shapes / pairs / "
              "cardinality / intertable: its properties.")
    privacy_line = ("DCR share (ideal 0.5) and MIA AUC (ideal 0.5): synth.evaluate on entity vectors, training vs "
                    "the 20 % holdout entities. RI %: share of foreign-key and reference values that find their "
                    "target.")
    fixture = ("Fixture: fixtures.bank (seed 11) without PII and free-text columns and without its one "
               "4,000-transaction outlier customer; samples have as many customers as the training set.")
    timeout = f"timeout: {settings['timeout_s']:.0f} s per system and case; a system past it is killed and reported."
    return [limits, timing, scores, privacy_line, timeout, fixture]


def render(rows: list[dict], settings: dict, console: Console) -> None:
    t = Table(title="microdb vs peers: fit + sample on the bank fixture", header_style="bold cyan")
    for c in COLUMNS:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*table_cells(row))
    console.print(t)
    for line in notes(rows) + footer(settings):
        console.print(f"[dim]{line}[/dim]")


def markdown(rows: list[dict], settings: dict) -> str:
    """The same table as GitHub markdown (for the README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in table_cells(r)) + " |" for r in rows]
    return "\n".join(lines + [""] + [f"- {line}" for line in notes(rows) + footer(settings)]) + "\n"


def _find(rows: list[dict], n: int, case: str, key: str) -> dict | None:
    return next((r for r in rows if r["customers"] == n and r["case"] == case and r["key"] == key), None)


def _ok(row: dict | None) -> bool:
    return row is not None and row["status"] == "ok"


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, per fixture size, each met, missed or not measured, with why."""
    out = []
    for n in sorted({r["customers"] for r in rows}):
        def add(name: str, met: bool | None, detail: str, n: int = n) -> None:
            out.append({"customers": n, "target": name, "met": met, "detail": detail})

        copula, hma = _find(rows, n, "two-level", "copula"), _find(rows, n, "two-level", "hma")
        if _ok(copula) and _ok(hma):
            speed = (hma["fit_s"] + hma["sample_s"]) / (copula["fit_s"] + copula["sample_s"])
            q, qh = copula["quality"]["default"]["score"], hma["quality"]["default"]["score"]
            qa, qha = copula["quality"]["all_pairs"]["score"], hma["quality"]["all_pairs"]["score"]
            add("copula ≥ 5× faster fit + sample than HMA, quality ≥ HMA (two-level)", speed >= 5 and q >= qh,
                f"{speed:.1f}× faster; quality {q:.3f} vs {qh:.3f} (all pairs {qa:.3f} vs {qha:.3f})")
        elif hma is not None and hma["status"] == "timeout" and _ok(copula):
            add("copula ≥ 5× faster fit + sample than HMA, quality ≥ HMA (two-level)", None,
                f"HMA timed out ({hma['reason']}); copula took {copula['fit_s'] + copula['sample_s']:.1f} s")
        neural, mostly = _find(rows, n, "sequential", "neural"), _find(rows, n, "sequential", "mostly")
        if _ok(neural) and _ok(mostly):
            tn, tm = neural["fit_s"] + neural["sample_s"], mostly["fit_s"] + mostly["sample_s"]
            q, qm = neural["quality"]["default"]["score"], mostly["quality"]["default"]["score"]
            qa, qma = neural["quality"]["all_pairs"]["score"], mostly["quality"]["all_pairs"]["score"]
            add("neural quality > mostlyai-engine in no more time (sequential)", q > qm and tn <= tm,
                f"quality {q:.3f} vs {qm:.3f} (all pairs {qa:.3f} vs {qma:.3f}); {tn:.1f} s vs {tm:.1f} s")
        ok = [r for r in rows if r["customers"] == n and _ok(r)]
        if ok:
            worst = min(ok, key=lambda r: r["ri_percent"])
            add("100 % RI everywhere", all(r["ri_percent"] == 100.0 for r in ok),
                f"lowest {worst['ri_percent']:.2f} % ({worst['label']}, {worst['case']}) over {len(ok)} runs")
        tree = [r for r in ok if r["case"] == "tree" and r["runner"] == "ours"]
        if any(r["case"] == "tree" for r in rows if r["customers"] == n):
            add("the 3-level tree handled", bool(tree) and all(r["ri_percent"] == 100.0 for r in tree),
                ", ".join(f"{r['label']} quality {r['quality']['default']['score']:.3f}" for r in tree)
                or "no run of ours on the tree finished")
        dp = [r for r in ok if r["key"] == "neural-dp"]
        if dp:
            eps = [r.get("privacy", {}).get("epsilon") for r in dp]
            add(f"DP variant at ε ≤ {DP_EPSILON:g} reported", all(e is not None and e <= DP_EPSILON for e in eps),
                "; ".join(f"{r['case']}: ε spent {_f(e, '{:.2f}')}, quality {r['quality']['default']['score']:.3f}"
                          for r, e in zip(dp, eps)))
    return out


# ------------------------------------------------------------------ the run


def versions() -> dict[str, str]:
    out = {}
    for name in ("sdv", "sdmetrics", "mostlyai-engine", "torch", "opacus", "microdb"):
        try:
            out[name] = dist.version(name)
        except dist.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run(sizes: list[int], *, timeout_s: float = 1800.0, only_systems: list[str] | None = None,
        only_cases: list[str] | None = None, neural_epochs: int = 15, mostly_minutes: float = 2.0,
        out: Path = Path("bench/results/peers-latest.json")) -> dict:
    """Run every (size, case, system), print the table and the targets, save JSON to ``out``."""
    console = Console(width=240)
    catalog = systems(neural_epochs, mostly_minutes)
    keys = only_systems or list(catalog)
    unknown = sorted(set(keys) - set(catalog)) + sorted(set(only_cases or ()) - set(CASES))
    if unknown:
        raise SystemExit(f"peers: unknown systems/cases {unknown}; systems: {list(catalog)}, cases: {list(CASES)}")
    cases_wanted = tuple(c for c in CASES if not only_cases or c in only_cases)
    settings = {"timeout_s": timeout_s, "neural_epochs": neural_epochs, "mostly_minutes": mostly_minutes,
                "seed": SEED, "fixture_seed": FIXTURE_SEED, "holdout_share": HOLDOUT_SHARE, "versions": versions()}
    doc = {"machine": platform.platform(), "python": platform.python_version(), "time": time.time(),
           "settings": settings, "rows": [], "targets": []}
    rows: list[dict] = doc["rows"]
    with tempfile.TemporaryDirectory(prefix="mdb-peers-") as tmp:
        for n in sizes:
            console.print(f"[bold]peers: bank fixture with {n:,} customers[/bold]")
            cases = load_cases(n, cases_wanted)
            for case in cases.values():
                case_dir = write_case(case, Path(tmp) / str(n) / case.name / "input")
                console.print(f"[dim]{case.name}: training {case.sizes}, "
                              f"holdout {case.holdout[case.schema.root].num_rows} customers[/dim]")
                for key in keys:
                    system = catalog[key]
                    if case.name not in system.cases:
                        continue
                    console.print(f"  {system.label} on {case.name}…", end=" ")
                    result = run_system(system, case, case_dir, Path(tmp) / str(n) / case.name / key, timeout_s)
                    row = {"customers": n, "case": case.name, "key": key, "label": system.label,
                           "runner": system.runner, "train_rows": case.sizes, **result}
                    if row["status"] == "ok":
                        row.update(score(case, read_tables(case, Path(tmp) / str(n) / case.name / key)))
                        console.print(f"fit {row['fit_s']:.1f} s, sample {row['sample_s']:.1f} s, "
                                      f"quality {row['quality']['default']['score']:.3f}, RI {row['ri_percent']:.1f} %")
                    else:
                        console.print(f"{row['status']}: {row.get('reason', '')}")
                    rows.append(row)
                    _save(doc, out)
    doc["targets"] = targets(rows)
    render(rows, settings, console)
    for t in doc["targets"]:
        mark = {True: "[green]met[/green]", False: "[red]missed[/red]", None: "[yellow]not measured[/yellow]"}[t["met"]]
        console.print(f"{t['customers']:,} customers — {t['target']}: {mark} — {t['detail']}")
    doc["markdown"] = markdown(rows, settings)
    _save(doc, out)
    console.print(f"[dim]saved {out}[/dim]")
    return doc


def _save(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str))
