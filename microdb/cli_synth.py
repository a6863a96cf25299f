"""``microdb synth …``, ``microdb bundle …`` and ``microdb gc``: synthetic bundles from the
command line (registered on the main app by :mod:`microdb.cli`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.table import Table

from microdb.cli import _executor, _open, _phases, _progress, app, emit, out
from microdb.errors import ConfigError, MicrodbError

synth_app = typer.Typer(no_args_is_help=True, help="Fit generators on entities, sample synthetic bundles, report.")
bundle_app = typer.Typer(no_args_is_help=True, help="List, verify, export, override and retire synthetic bundles.")
app.add_typer(synth_app, name="synth")
app.add_typer(bundle_app, name="bundle")


@contextmanager
def _bars() -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback drawing one bar per phase."""
    with _progress() as bar:
        yield _phases(bar)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _params(items: list[str]) -> dict[str, Any]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--param {item!r}: write NAME=VALUE (e.g. epochs=20)")
        params[name.strip()] = _value(value.strip())
    return params


def _sample_from(text: str) -> list[str] | int | None:
    if text == "all":
        return None
    if text.isdigit():
        return int(text)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise ConfigError("--sample-from: give all, a number of entities, or comma-separated keys")
    return keys


@synth_app.command("fit")
def fit(
    entity_type: str = typer.Argument(..., help="Entity type to learn from (its synced entities)."),
    generator: str = typer.Option("copula", "--generator", "-g", help="rules, copula or neural."),
    sample_from: str = typer.Option("all", "--sample-from", help="all, a number N (seeded sample) or keys K1,K2."),
    param: list[str] = typer.Option([], "--param", "-p", help="Generator parameter NAME=VALUE (repeatable)."),
    constraint: list[str] = typer.Option([], "--constraint", "-c", help="Constraint, e.g. 'amount > 0' (repeatable)."),
    dp_epsilon: Optional[float] = typer.Option(None, "--dp-epsilon", help="neural: train with DP-SGD to this ε (one entity = one privacy unit)."),
    dp_delta: Optional[float] = typer.Option(None, "--dp-delta", help="neural: δ for DP-SGD (default 1e-5)."),
    role: Optional[str] = typer.Option(None, "--role", help="Learn from this role's masked view (default [synth] role)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/holdout split and of training."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Model folder (default models/TYPE-GENERATOR-TIME)."),
    executor: Optional[str] = typer.Option(None, "--executor", help="Unseal the training entities in parallel tasks: local, process or ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: 'auto', 'ray://HOST:10001' or 'local' (default)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes for --executor process or a local Ray."),
) -> None:
    """Fit a generator on the masked training entities of TYPE (a holdout is kept for reports)."""
    params = _params(param)
    ex = _executor(executor, address, workers)
    if dp_epsilon is not None:
        params["dp_epsilon"] = dp_epsilon
    if dp_delta is not None:
        params["dp_delta"] = dp_delta
    ws = _open()
    try:
        with _bars() as progress:
            model = ws.synth_fit(entity_type, generator, params, seed=seed, sample_from=_sample_from(sample_from),
                                 role=role, constraints=constraint, out=output, executor=ex, progress=progress)
        info = json.loads((model / "training.json").read_text())
        out.print(f"fitted [bold]{generator}[/bold] on {info['training_entities']} {entity_type} entities "
                  f"(role {info['role']}) in {info['fit_seconds']:.1f}s → {model}")
        if info.get("privacy"):
            p = info["privacy"]
            out.print(f"  differential privacy: ε = {p['epsilon']:.3f}, δ = {p['delta']:g} (accountant: {p.get('accountant')})")
        if info["excluded_columns"]:
            out.print(f"  not learned (masked or PII, filled with made-up values): {', '.join(info['excluded_columns'])}")
    finally:
        if ex is not None:
            ex.close()
        ws.close()


@synth_app.command("sample")
def sample(
    model: Path = typer.Argument(..., help="Model folder written by `synth fit`."),
    entities: int = typer.Option(..., "--entities", "-n", help="How many entities to generate."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same tables."),
    condition: list[str] = typer.Option([], "--condition", help="TABLE.COLUMN=VALUE to over-represent (repeatable)."),
    share: float = typer.Option(1.0, "--share", help="Share of rows of the condition's table that meet it."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Bundle folder (default bundles/ID)."),
    evaluate: Optional[bool] = typer.Option(None, "--evaluate/--no-evaluate", help="Evaluate against the charter (default: when [charter.thresholds] is set)."),
    executor: Optional[str] = typer.Option(None, "--executor", help="One task per shard of [synth] shard_entities: local, process or ray (same bundle)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: 'auto', 'ray://HOST:10001' or 'local' (default)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes for --executor process or a local Ray."),
) -> None:
    """Sample synthetic entities into a sealed bundle (DuckDB + Parquet + manifest.json)."""
    ex = _executor(executor, address, workers)
    ws = _open()
    try:
        with _bars() as progress:
            bundle = ws.synth_sample(model, entities, seed=seed, conditions=condition, share=share, out=output,
                                     evaluate=evaluate, executor=ex, progress=progress)
        m = bundle.manifest
        rows = ", ".join(f"{n} {t}" for t, n in ((t, i["rows"]) for t, i in m["tables"].items()))
        out.print(f"bundle [bold]{bundle.id}[/bold] ({m['status']}): {entities} {m['entity_type']} entities, "
                  f"RI {m['integrity']['ri_percent']:.0f}% → {bundle.directory}")
        out.print(f"  rows: {rows}")
        _print_charter(m)
    finally:
        if ex is not None:
            ex.close()
        ws.close()


def _print_charter(m: dict[str, Any]) -> None:
    charter = m.get("charter")
    if not charter or not charter.get("checks"):
        return
    for c in charter["checks"]:
        mark = "[green]ok[/green]" if c["ok"] else "[red]FAIL[/red]"
        value = "n/a" if c.get("value") is None else f"{c['value']:.4g}"
        out.print(f"  {mark} {c['metric']} = {value} (needs {c['op']} {c['threshold']})")


@synth_app.command("report")
def report(
    bundle: str = typer.Argument(..., help="Bundle id, id prefix or folder."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for report.json/html (default: the bundle)."),
) -> None:
    """Fidelity, utility, privacy and fairness of a bundle against held-out real entities; applies the charter."""
    from microdb import synthesis

    ws = _open()
    try:
        with _bars() as progress:
            synthesis.report(ws, bundle, out=output, progress=progress)
        m = ws.bundles.find(bundle).manifest
        out.print(f"bundle {m['id']}: [bold]{m['status']}[/bold]; report in {m.get('report', {}).get('html')}")
        _print_charter(m)
    finally:
        ws.close()


@synth_app.command("drift")
def drift(
    bundle: str = typer.Argument(..., help="Bundle id, id prefix or folder."),
    other: Optional[str] = typer.Argument(None, help="A second bundle (default: the store's current entities)."),
    threshold: float = typer.Option(0.1, "--threshold", help="Distance above which a column counts as drifted."),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
) -> None:
    """Columns whose distribution moved between two bundles, or between a bundle and the store."""
    from microdb import synthesis

    ws = _open()
    try:
        result = synthesis.drift(ws, bundle, other, threshold)
        if fmt == "json":
            out.print_json(json.dumps(result, default=str))
            return
        table = Table("column", "statistic", "distance", "noise level", "drifted", title=f"drift against {result['against']}")
        for name, c in result["columns"].items():
            table.add_row(name, c["statistic"], f"{c['distance']:.3f}", f"{c['noise']:.3f}",
                          "[red]yes[/red]" if c["drifted"] else "no")
        out.print(table)
        out.print(f"{len(result.get('drifted', []))} drifted: {', '.join(result.get('drifted', [])) or 'none'}")
    finally:
        ws.close()


@synth_app.command("approved")
def approved() -> None:
    """Generator configurations whose bundles the charter released."""
    from lineage.charter import approved_configurations

    ws = _open()
    try:
        rows = approved_configurations([e.manifest for e in ws.bundles.entries()])
        table = Table("entity type", "generator", "parameters", "bundles")
        for r in rows:
            table.add_row(r["entity_type"], r["generator"], json.dumps(r["parameters"], sort_keys=True), ", ".join(r["bundles"]))
        out.print(table)
    finally:
        ws.close()


@bundle_app.command("list")
def bundle_list(fmt: str = typer.Option("table", "--format", "-f", help="table or json.")) -> None:
    """Bundles of this workspace with status, generator, seed and size."""
    ws = _open()
    try:
        entries = ws.bundles.entries()
        if fmt == "json":
            out.print_json(json.dumps([e.manifest for e in entries], default=str))
            return
        table = Table("id", "status", "type", "generator", "seed", "entities", "ε", "created", "path")
        for e in entries:
            m = e.manifest
            eps = (m.get("privacy") or {}).get("epsilon")
            created = datetime.fromtimestamp(e.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M")
            table.add_row(e.id, e.status, e.entity_type, m.get("generator", ""), str(m.get("seed")),
                          str(m.get("entities")), "" if eps is None else f"{eps:.2f}", created, str(e.path))
        out.print(table)
    finally:
        ws.close()


@bundle_app.command("verify")
def bundle_verify(bundle: str = typer.Argument(..., help="Bundle id, id prefix or folder.")) -> None:
    """Check a bundle's files against the content hashes of its manifest."""
    from microdb import synthesis

    ws = _open()
    try:
        problems = synthesis.verify(ws, bundle)
        if problems:
            for p in problems:
                out.print(f"[red]✗[/red] {p}")
            raise MicrodbError(f"bundle {bundle}: {len(problems)} problem(s)")
        out.print(f"[green]✓[/green] bundle {ws.bundles.find(bundle).id}: every file matches its manifest hash")
    finally:
        ws.close()


@bundle_app.command("export")
def bundle_export(
    bundle: str = typer.Argument(..., help="Bundle id, id prefix or folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for bundle.duckdb and parquet/."),
    fmt: str = typer.Option("both", "--format", "-f", help="duckdb, parquet or both."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty folder."),
) -> None:
    """Plain DuckDB/Parquet copies of a released bundle, with a manifest (audited)."""
    from microdb import synthesis

    ws = _open()
    try:
        written = synthesis.export(ws, bundle, output, fmt, force)
        out.print(f"exported {len(written)} file(s) to {output}")
    finally:
        ws.close()


@bundle_app.command("override")
def bundle_override(
    bundle: str = typer.Argument(..., help="Bundle id, id prefix or folder."),
    reason: str = typer.Option(..., "--reason", help="Why the rejected bundle may be used anyway (recorded)."),
) -> None:
    """Record an override that lets a rejected bundle be used (audited)."""
    from microdb import synthesis

    ws = _open()
    try:
        m = synthesis.override(ws, bundle, reason)
        out.print(f"bundle {m['id']}: override recorded ({len(m['overrides'])} in all)")
    finally:
        ws.close()


@bundle_app.command("retire")
def bundle_retire(
    bundle: str = typer.Argument(..., help="Bundle id, id prefix or folder."),
    reason: str = typer.Option(..., "--reason", help="Why it is retired (kept in the tombstone)."),
) -> None:
    """Destroy a bundle's key and files; its manifest and lineage stay, with a tombstone."""
    from microdb import synthesis

    ws = _open()
    try:
        m = synthesis.retire(ws, bundle, reason)
        out.print(f"bundle {m['id']} retired: key destroyed, {m['tombstone']['files_removed']} file(s) shredded")
    finally:
        ws.close()


@app.command("gc")
def gc() -> None:
    """Retire bundles older than [synth] retention_days."""
    from microdb import synthesis

    ws = _open()
    try:
        if ws.config.synth.retention_days is None:
            out.print("no [synth] retention_days configured: nothing to do")
            return
        done = synthesis.gc(ws)
        out.print(f"retired {len(done)} bundle(s)" + (f": {', '.join(done)}" if done else ""))
    finally:
        ws.close()


def query_bundle(target: str, sql: str, fmt: str, output: Optional[Path]) -> None:
    """``microdb query bundle:REF/KEY SQL``: one synthetic entity of a bundle."""
    ref, sep, key = target[len("bundle:"):].rpartition("/")
    if not sep or not ref or not key:
        raise ConfigError(f"{target!r}: write bundle:ID_OR_FOLDER/KEY")
    ws = _open()
    try:
        emit(ws.bundle_entity(ref, key).sql(sql), fmt, output)
    finally:
        ws.close()
