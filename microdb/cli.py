"""The ``microdb`` command line: parse options, call the library, render with rich."""

from __future__ import annotations

import io
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import pyarrow as pa
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from microdb import workspace as wsmod
from microdb.errors import MicrodbError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Per-entity micro-databases, masked on read.",
)
# piped output (make, CI, files) gets a wide console instead of rich's 80 columns
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
out = Console(width=_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else int(os.environ.get("COLUMNS", "160")))


class State:
    workspace: Optional[Path] = None
    role: Optional[str] = None


state = State()


@app.callback()
def _main(
    workspace: Optional[Path] = typer.Option(
        None, "-w", "--workspace", help="Workspace folder (default: $MICRODB_WORKSPACE or the current directory)."
    ),
) -> None:
    state.workspace = workspace


def _open() -> wsmod.Workspace:
    return wsmod.open(state.workspace)


# rendering ---------------------------------------------------------------------------------
def _cell(v: object) -> str:
    if v is None:
        return "[dim]NULL[/dim]"
    return str(v).replace("[", r"\[")


def render_table(table: pa.Table, title: str | None = None, limit: int | None = None) -> None:
    shown = table if limit is None else table.slice(0, limit)
    t = Table(title=title, title_justify="left", header_style="bold cyan", show_lines=False)
    for field in table.schema:
        t.add_column(field.name, overflow="ellipsis", no_wrap=True, max_width=32)
    for row in shown.to_pylist():
        t.add_row(*(_cell(v) for v in row.values()))
    out.print(t)
    if limit is not None and table.num_rows > limit:
        out.print(f"[dim]… {table.num_rows - limit} more rows ({table.num_rows} in all)[/dim]")


def emit(table: pa.Table, fmt: str, output: Optional[Path]) -> None:
    fmt = fmt.lower()
    if fmt == "table":
        if output:
            raise MicrodbError("--output is for json, csv and parquet formats")
        render_table(table)
        out.print(f"[dim]{table.num_rows} rows[/dim]")
        return
    if fmt == "json":
        text = json.dumps(table.to_pylist(), default=str, ensure_ascii=False, indent=1)
        _write_text(text + "\n", output)
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        _write_bytes(buf.getvalue(), output)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        if output is None:
            raise MicrodbError("--format parquet needs --output FILE")
        pq.write_table(table, output, compression="zstd")
    else:
        raise MicrodbError(f"unknown format {fmt!r} (table, json, csv, parquet)")


def _write_text(text: str, output: Optional[Path]) -> None:
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _write_bytes(data: bytes, output: Optional[Path]) -> None:
    if output:
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


# commands ----------------------------------------------------------------------------------
@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Folder for the new workspace."),
    demo: bool = typer.Option(False, "--demo", help="Fill it with the bank fixture (three sources) and a customer entity."),
    customers: int = typer.Option(2000, "--customers", help="Customers in the demo fixture."),
    seed: int = typer.Option(7, "--seed", help="Seed of the demo fixture."),
    force: bool = typer.Option(False, "--force", help="Replace an existing microdb.toml."),
) -> None:
    """Create a workspace: microdb.toml, a master key file (0600) and an empty store."""
    from microdb.init import init_workspace

    summary = init_workspace(directory, demo=demo, customers=customers, seed=seed, force=force)
    for line in summary:
        out.print(line)


@app.command()
def discover(
    source: str = typer.Option(..., "--source", help="Source holding the root table."),
    root: str = typer.Option(..., "--root", help="Root table of the entity."),
    key: Optional[str] = typer.Option(None, "--key", help="Key column(s), comma separated (default: primary key)."),
    name: Optional[str] = typer.Option(None, "--name", help="Entity type name (default: singular of the root)."),
    write: bool = typer.Option(False, "--write", help="Append the entity type to microdb.toml."),
) -> None:
    """Infer an entity type by walking foreign keys, and print (or write) its TOML."""
    from microdb.config import CONFIG_FILE
    from microdb.discover import discover as run, to_toml

    ws = _open()
    try:
        ename, ent = run(ws.config, ws.sources, source, root, key.split(",") if key else None, name)
        text = to_toml(ename, ent)
        if write:
            from microdb.init import append_entity

            append_entity(ws.root / CONFIG_FILE, ename, text)
            err.print(f"[green]wrote entity type {ename!r} to {ws.root / CONFIG_FILE}[/green]")
        sys.stdout.write(text)
    finally:
        ws.close()


@app.command()
def sync(
    entity_type: str = typer.Argument(..., help="Entity type to project."),
    all_: bool = typer.Option(False, "--all", help="Every entity in the sources."),
    keys: Optional[str] = typer.Option(None, "--keys", help="Comma-separated keys."),
    changed_since: Optional[datetime] = typer.Option(None, "--changed-since", help="Entities with rows changed after this time (watermark columns)."),
    executor: Optional[str] = typer.Option(None, "--executor", help="Run one task per key partition: local, process or ray (default: one pass here)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: 'auto' (the running one), 'ray://HOST:10001', or 'local' (default)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes for --executor process or a local Ray (default: CPU count)."),
) -> None:
    """Project sources into sealed micro-databases (set-based, one read per table)."""
    chosen = sum([all_, keys is not None, changed_since is not None])
    if chosen != 1:
        raise MicrodbError("choose exactly one of --all, --keys K1,K2 or --changed-since TIME")
    ex = _executor(executor, address, workers)
    ws = _open()
    try:
        with _progress() as bar:
            res = ws.sync(
                entity_type,
                keys=_key_list(keys),
                changed_since=changed_since,
                progress=_phases(bar),
                executor=ex,
            )
            for task in bar.tasks:
                bar.update(task.id, completed=task.total)
        rows = ", ".join(f"{n} {t}" for t, n in res.rows.items())
        out.print(
            f"synced [bold]{res.entities}[/bold] {entity_type} entities in {res.seconds:.2f}s "
            f"({res.entities_per_second:,.0f}/s; {res.source_queries} source queries)"
        )
        out.print(f"  rows: {rows}")
        if res.references:
            out.print("  reference tables: " + ", ".join(f"{t} ({n} rows)" for t, n in res.references.items()))
        if res.orphans:
            out.print("[yellow]  rows linked to no entity (skipped): " + ", ".join(f"{t}: {n}" for t, n in res.orphans.items()) + "[/yellow]")
        if res.missing_keys:
            out.print(f"[yellow]  keys not found in the source: {', '.join(res.missing_keys)}[/yellow]")
        if res.partitions:
            out.print(f"  {len(res.partitions)} key partitions on the {executor} executor "
                      f"({len({p.worker for p in res.partitions})} workers), each published atomically")
    finally:
        if ex is not None:
            ex.close()
        ws.close()


@app.command()
def get(
    address: str = typer.Argument(..., help="TYPE/KEY, e.g. customer/42."),
    role: Optional[str] = typer.Option(None, "--role", help="Role to see the entity as."),
    limit: int = typer.Option(10, "--limit", help="Rows shown per table."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Show every table of one entity's micro-database."""
    ws = _open()
    try:
        ent = ws.entity(address, role)
        tables = ent.tables()
        if fmt == "json":
            doc = {name: t.to_pylist() for name, t in tables.items()}
            sys.stdout.write(json.dumps(doc, default=str, ensure_ascii=False, indent=1) + "\n")
            return
        refs = {r.name for r in ws.entity_type(ent.type).references}
        for name, t in tables.items():
            if name in refs:
                continue
            render_table(t, title=f"{address} · {name} ({t.num_rows} rows)", limit=limit)
        if refs:
            out.print("[dim]reference tables: " + ", ".join(f"{n} ({tables[n].num_rows} rows)" for n in sorted(refs) if n in tables) + "[/dim]")
        if ent.withheld:
            out.print(f"[yellow]withheld from role {ent.role} until classified: {', '.join(ent.withheld)}[/yellow]")
    finally:
        ws.close()


@app.command()
def query(
    target: str = typer.Argument(..., help="TYPE/KEY for one entity, or TYPE with --keys/--all for fan-out."),
    sql: str = typer.Argument(..., help="A read-only SELECT over the entity's tables."),
    keys: Optional[str] = typer.Option(None, "--keys", help="Fan-out over these comma-separated keys."),
    all_: bool = typer.Option(False, "--all", help="Fan-out over every synced entity."),
    role: Optional[str] = typer.Option(None, "--role", help="Role to query as."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, csv or parquet."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to a file instead of stdout."),
) -> None:
    """Run SQL on one entity, or on many (adds an entity_key column); bundle:ID/KEY for a synthetic one."""
    if target.startswith("bundle:"):
        from microdb.cli_synth import query_bundle

        return query_bundle(target, sql, fmt, output)
    ws = _open()
    try:
        if "/" in target:
            if keys or all_:
                raise MicrodbError("--keys/--all are for fan-out: give TYPE, not TYPE/KEY")
            table = ws.entity(target, role).sql(sql)
        else:
            if not keys and not all_:
                raise MicrodbError(f"give TYPE/KEY for one entity, or --keys/--all to fan out over {target!r}")
            table = ws.query(target, sql, keys=[k.strip() for k in keys.split(",")] if keys else None, role=role)
        emit(table, fmt, output)
    finally:
        ws.close()


def _phases(bar: Progress):
    """A library progress callback (phase, done, total) drawing one bar per phase;
    ``"evaluate|privacy"`` keeps one bar ``evaluate`` and shows its current step."""
    tasks: dict[str, int] = {}

    def progress(phase: str, done: int, total: int) -> None:
        key, _, step = phase.partition("|")
        label = f"{key}: {step}" if step else key
        if key not in tasks:
            tasks[key] = bar.add_task(label, total=max(total, 1))
        bar.update(tasks[key], completed=done, total=max(total, 1), description=label)

    return progress


def _executor(name: Optional[str], address: Optional[str], workers: Optional[int]):
    """The executor named by ``--executor`` (None: run here in one pass)."""
    if name is None:
        if address is not None or workers is not None:
            raise MicrodbError("--address and --workers need --executor (local, process or ray)")
        return None
    from microdb.executors import get_executor

    return get_executor(name, workers=workers, address=address)


def _key_list(keys: Optional[str]) -> Optional[list[str]]:
    return [k.strip() for k in keys.split(",") if k.strip()] if keys else None


@app.command()
def export(
    target: str = typer.Argument(..., help="TYPE/KEY for one entity, or TYPE with --keys/--all/--where/--sample."),
    output: Path = typer.Option(..., "--output", "-o", help="A .duckdb file, or (many entities) a folder for Parquet files."),
    role: Optional[str] = typer.Option(None, "--role", help="Role whose view is exported."),
    keys: Optional[str] = typer.Option(None, "--keys", help="Comma-separated keys."),
    all_: bool = typer.Option(False, "--all", help="Every synced entity."),
    where: Optional[str] = typer.Option(None, "--where", help="SQL predicate over the entity's tables."),
    sample: Optional[int] = typer.Option(None, "--sample", help="A random sample of N entities."),
    stratify: Optional[str] = typer.Option(None, "--stratify", help="TABLE.COLUMN to stratify the sample on."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    force: bool = typer.Option(False, "--force", help="Overwrite the file or folder."),
) -> None:
    """Write one entity to a DuckDB file, or many (one table per source table, all entities
    in it) to a DuckDB file or a folder of Parquet files — as a role sees them."""
    many = keys is not None or all_ or where is not None or sample is not None
    ws = _open()
    try:
        if "/" in target:
            if many:
                raise MicrodbError("--keys/--all/--where/--sample are for many entities: give TYPE, not TYPE/KEY")
            path = ws.export(target, output, role, overwrite=force)
            out.print(f"exported {target} to {path}")
            return
        if not many:
            raise MicrodbError(f"give TYPE/KEY for one entity, or --keys/--all/--where/--sample for many {target!r} entities")
        from microdb.provision import export_set

        with _progress() as bar:
            path, rows = export_set(ws, target, output, keys=_key_list(keys), where=where, sample=sample,
                                    stratify=stratify, seed=seed, role=role, overwrite=force, progress=_phases(bar))
        out.print(f"exported {sum(rows.values())} rows to {path}: " + ", ".join(f"{t} {n}" for t, n in rows.items()))
    finally:
        ws.close()


@app.command()
def provision(
    target: str = typer.Option(..., "--target", help="postgresql://…, mysql://…, sqlite:PATH or duckdb:PATH."),
    entity_type: Optional[str] = typer.Option(None, "--type", help="Entity type (default: the only one)."),
    keys: Optional[str] = typer.Option(None, "--keys", help="Comma-separated keys."),
    where: Optional[str] = typer.Option(None, "--where", help="SQL predicate over the entity's tables, e.g. transactions.is_fraud."),
    sample: Optional[int] = typer.Option(None, "--sample", help="A random sample of N entities."),
    stratify: Optional[str] = typer.Option(None, "--stratify", help="TABLE.COLUMN to stratify the sample on."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    bundle: Optional[str] = typer.Option(None, "--bundle", help="A released synthetic bundle (id or folder) instead of masked entities."),
    role: Optional[str] = typer.Option(None, "--role", help="Role whose (masked) view is provisioned."),
    schema_only: bool = typer.Option(False, "--schema-only", help="Create the tables, load no rows."),
    truncate: bool = typer.Option(False, "--truncate", help="Replace the rows of existing tables."),
    upsert: bool = typer.Option(False, "--upsert", help="Insert or update by primary key (re-runs change nothing)."),
    schema: Optional[str] = typer.Option(None, "--schema", help="Target schema (PostgreSQL, DuckDB) or database (MySQL)."),
) -> None:
    """Write masked entities (or a synthetic bundle) into a database with the source schema:
    keys, foreign keys, parents before children; atomic where the target allows."""
    from microdb.provision import provision as run

    if sum([schema_only, truncate, upsert]) > 1:
        raise MicrodbError("choose at most one of --schema-only, --truncate and --upsert")
    mode = "schema_only" if schema_only else "truncate" if truncate else "upsert" if upsert else "create"
    ws = _open()
    try:
        with _progress() as bar:
            res = run(ws, target, etype=entity_type, keys=_key_list(keys), where=where, sample=sample,
                      stratify=stratify, seed=seed, bundle=bundle, role=role, mode=mode, schema=schema,
                      progress=_phases(bar))
        where_to = f"{res.target}" + (f" (schema {res.schema})" if res.schema else "")
        what = f"bundle {res.bundle}" if res.bundle else f"{res.entities} {res.entity_type} entities"
        out.print(f"provisioned {what} into {where_to} in {res.seconds:.2f}s "
                  f"({res.total_rows:,} rows, {res.rows_per_second:,.0f} rows/s; mode {res.mode})")
        out.print("  rows: " + ", ".join(f"{t} {n}" for t, n in res.rows.items()))
        if res.withheld:
            out.print(f"[yellow]  withheld from the role (not provisioned): {', '.join(res.withheld)}[/yellow]")
        for line in res.skipped_links:
            out.print(f"[dim]  no constraint for {line}[/dim]")
    finally:
        ws.close()


@app.command()
def mount(
    directory: Path = typer.Argument(..., help="Folder for the per-entity .duckdb files."),
    entity_type: Optional[str] = typer.Option(None, "--type", help="Entity type (default: the only one)."),
    keys: Optional[str] = typer.Option(None, "--keys", help="Comma-separated keys (default: every synced entity)."),
    where: Optional[str] = typer.Option(None, "--where", help="SQL predicate over the entity's tables."),
    role: Optional[str] = typer.Option(None, "--role", help="Role whose (masked) view is written."),
) -> None:
    """Materialize one .duckdb micro-database per entity (its tables and the reference tables) in a folder."""
    from microdb.provision import default_type, mount as run

    ws = _open()
    try:
        etype = default_type(ws, entity_type)
        with _progress() as bar:
            path, n = run(ws, directory, etype, keys=_key_list(keys), where=where, role=role, progress=_phases(bar))
        out.print(f"mounted {n} {etype} micro-databases in {path}")
    finally:
        ws.close()


@app.command()
def forget(address: str = typer.Argument(..., help="TYPE/KEY to destroy.")) -> None:
    """Crypto-shred one entity: destroy its data key and sealed record."""
    ws = _open()
    try:
        ws.forget(address)
        out.print(f"forgot {address}: its data key and sealed record are destroyed")
    finally:
        ws.close()


@app.command()
def detokenize(
    values: list[str] = typer.Argument(..., help="Tokens as the role sees them."),
    role: str = typer.Option(..., "--role", help="A role granted detokenize = true."),
    column: str = typer.Option(..., "--column", help="TABLE.COLUMN the tokens come from (masked with a reversible function)."),
    entity: Optional[str] = typer.Option(None, "--entity", help="TYPE/KEY, recorded in the audit log."),
) -> None:
    """Recover original values of reversible tokens (FPE); refused unless the role is granted it. Always audited."""
    ws = _open()
    try:
        for token, value in zip(values, ws.detokenize(role, column, values, entity)):
            out.print(f"{token}\t{value}", highlight=False)
    finally:
        ws.close()


@app.command()
def serve(
    pg: Optional[str] = typer.Option(None, "--pg", help="HOST:PORT of the Postgres-wire listener (default [server] pg, 127.0.0.1:6543); 'off' to disable."),
    http: Optional[str] = typer.Option(None, "--http", help="HOST:PORT of the HTTP API and entity browser (default [server] http, 127.0.0.1:8642); 'off' to disable."),
) -> None:
    """Serve entities over the PostgreSQL wire protocol and HTTP (API + browser) until SIGINT/SIGTERM.

    psql -h 127.0.0.1 -p 6543 -U analyst -d microdb, then SET microdb.entity = 'customer/42';
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8642/entities/customer/42"""
    import signal
    import ssl
    import threading

    ws = _open()
    handles: list = []
    try:
        sc = ws.config.server
        pg_at, http_at = pg or sc.pg, http or sc.http
        if pg_at == "off" and http_at == "off":
            raise MicrodbError("nothing to serve: --pg and --http are both off")
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        if pg_at != "off":
            from microdb.server.backend import WorkspaceBackend
            from microdb.server.pgwire import PgServer

            host, _, port = pg_at.rpartition(":")
            ctx = None
            if sc.tls_cert and sc.tls_key:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(ws.root / sc.tls_cert, ws.root / sc.tls_key)
            server = PgServer(WorkspaceBackend(ws), host or "127.0.0.1", int(port), ssl_context=ctx, require_tls=sc.require_tls)
            handle = server.serve_in_thread()
            handles.append(handle)
            err.print(f"microdb: Postgres wire on {server.host}:{handle.port} "
                      f"({len(sc.users)} user(s); psql -h {server.host} -p {handle.port} -U USER -d microdb)", soft_wrap=True)
        if http_at != "off":
            from microdb.server.http import HttpThread, create_app

            host, _, port = http_at.rpartition(":")
            web = HttpThread(create_app(ws), host.strip("[]") or "127.0.0.1", int(port))
            handles.append(web)
            err.print(f"microdb: HTTP on http://{web.host}:{web.port} ({len(sc.tokens)} token(s); "
                      f"browser at /, API docs at /docs)", soft_wrap=True)
        done.wait()
        err.print("microdb: stopping (letting running queries finish)")
    finally:
        for h in reversed(handles):
            h.stop()
        ws.close()


@app.command()
def token(
    name: str = typer.Argument(..., help="Name of the token: the audit log's actor for its requests."),
    role: str = typer.Option(..., "--role", help="Role the token's requests run as."),
) -> None:
    """Create an HTTP bearer token: print it once, and the [server.tokens.NAME] lines (its hash) for microdb.toml."""
    from microdb.server.http import hash_token, new_token

    ws = _open()
    try:
        ws.policies.role(role)  # an unknown role fails here, not at the first request
        if name in ws.config.server.tokens:
            raise MicrodbError(f"server.tokens.{name} already exists in {ws.root / 'microdb.toml'}: pick another name or remove it")
    finally:
        ws.close()
    if not name.replace("_", "").replace("-", "").isalnum():
        raise MicrodbError(f"token name {name!r}: use letters, digits, '-' and '_'")
    secret = new_token()
    err.print("the token (shown once; store it in a secret manager):")
    out.print(secret, markup=False, highlight=False, soft_wrap=True)
    err.print("add to microdb.toml (only the hash is kept):")
    out.print(f'[server.tokens.{name}]\nrole = "{role}"\ntoken_hash = "{hash_token(secret)}"', markup=False, highlight=False, soft_wrap=True)


@app.command()
def verifier(
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True, help="The password (prompted)."),
) -> None:
    """Print a SCRAM-SHA-256 verifier for [server.users.NAME] password_verifier (the password itself is never stored)."""
    from microdb.server.pgwire import ScramVerifier

    out.print(str(ScramVerifier.from_password(password)), highlight=False, soft_wrap=True)


pii_app = typer.Typer(no_args_is_help=True, help="Find personal data and measure re-identification risk.")
app.add_typer(pii_app, name="pii")


@pii_app.command("scan")
def pii_scan(
    source: Optional[list[str]] = typer.Option(None, "--source", help="Sources to scan (default: all)."),
    sample: int = typer.Option(2000, "--sample", help="Values sampled per column."),
    policy: Optional[str] = typer.Option(None, "--policy-draft", help="Also print a [policies.NAME.columns] draft classifying every column."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the draft to this file instead of stdout."),
) -> None:
    """Propose PII tags per column from names and sampled values (email, phone, national id,
    card numbers with Luhn, IBAN with checksum, names, addresses, dates of birth, IPs, geo)."""
    from masking.pii import policy_draft, scan_tables

    ws = _open()
    try:
        names = source or ws.sources.names
        findings = []
        for name in names:
            src = ws.sources[name]
            tables = {t: src.read(t) for t in src.catalog().tables}
            findings += scan_tables(tables, sample=sample)
        ws.record("pii.scan", details={"sources": names, "columns": len(findings)})
    finally:
        ws.close()
    t = Table(title="PII scan", header_style="bold cyan", title_justify="left")
    for col in ("table.column", "tag", "confidence", "by", "matched", "proposed rule"):
        t.add_column(col)
    for f in findings:
        if f.tag is None:
            continue
        rule = f.rule if isinstance(f.rule, str) else ", ".join(f"{k}={v}" for k, v in f.rule.items())
        t.add_row(f"{f.table}.{f.column}", f.tag, f"{f.confidence:.2f}", f.by or "", f"{f.matched_share:.0%}", rule)
    out.print(t)
    out.print(f"[dim]{sum(1 for f in findings if f.pii)} PII columns of {len(findings)} scanned[/dim]")
    if policy:
        text = policy_draft(findings, policy)
        if output:
            output.write_text(text)
            err.print(f"wrote the policy draft to {output}")
        else:
            sys.stdout.write(text)


@pii_app.command("kcheck")
def pii_kcheck(
    entity_type: str = typer.Argument(..., help="Entity type whose synced entities are measured."),
    columns: str = typer.Option(..., "--columns", help="Quasi-identifiers of one table: TABLE.COL1,TABLE.COL2,…"),
    role: Optional[str] = typer.Option(None, "--role", help="Measure the view of this role."),
) -> None:
    """k-anonymity of quasi-identifiers as a role sees them, over all synced entities."""
    from masking.kanon import k_anonymity

    cols = [c.strip() for c in columns.split(",") if c.strip()]
    tables = {c.rpartition(".")[0] for c in cols}
    if len(tables) != 1 or "" in tables:
        raise MicrodbError("--columns must all be TABLE.COLUMN of one table")
    table = tables.pop()
    names = [c.rpartition(".")[2] for c in cols]
    ws = _open()
    try:
        sql = "SELECT " + ", ".join(f'"{n}"' for n in names) + f' FROM "{table}"'
        data = ws.query(entity_type, sql, role=role).drop_columns(["entity_key"])
    finally:
        ws.close()
    rep = k_anonymity(data, names)
    out.print(f"k = [bold]{rep.k}[/bold] over {rep.rows} rows in {rep.classes} classes ({', '.join(names)}; role {role or 'default'})")
    for k, share in rep.share_below.items():
        out.print(f"  rows in classes smaller than {k}: {share:.1%}")


audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
app.add_typer(audit_app, name="audit")


def _audit_log():
    ws = _open()
    if ws.audit is None:
        ws.close()
        raise MicrodbError("the audit log is disabled in this workspace ([audit] enabled = false)")
    return ws


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the whole hash chain and every signature; report the first broken record."""
    ws = _audit_log()
    try:
        res = ws.audit.verify()
    finally:
        ws.close()
    if res.ok:
        out.print(f"[green]audit log intact[/green]: {res.records} records in {res.files} file(s)")
        return
    err.print(
        f"[bold red]audit log broken[/bold red] at record seq {res.first_bad} ({res.file}, line {res.line}): {res.reason}; "
        f"{res.records} records before it are intact"
    )
    raise typer.Exit(8)


@audit_app.command("log")
def audit_log(
    entity: Optional[str] = typer.Option(None, "--entity", help="Only records of this entity (TYPE/KEY)."),
    user: Optional[str] = typer.Option(None, "--user", help="Only records of this actor."),
    action: Optional[str] = typer.Option(None, "--action", help="Only this action (query, sync, export …)."),
    outcome: Optional[str] = typer.Option(None, "--outcome", help="ok, refused or error."),
    since: Optional[datetime] = typer.Option(None, "--since", help="Only records at or after this time (UTC)."),
    limit: int = typer.Option(50, "--limit", help="Newest N records (table format)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
) -> None:
    """Query the audit log."""
    ws = _audit_log()
    try:
        table = ws.audit.query(entity=entity, actor=user, action=action, outcome=outcome, since=since)
    finally:
        ws.close()
    if fmt == "table":
        cols = [c for c in ("seq", "time", "actor", "role", "action", "outcome", "entity", "rows", "error") if c in table.column_names]
        render_table(table.select(cols).slice(max(table.num_rows - limit, 0)))
        return
    emit(table, fmt, None)


from microdb import cli_synth  # noqa: E402,F401  (registers `synth`, `bundle`, `gc`)


def main() -> None:
    """Console entry point: one clear line and an exit code per error class."""
    try:
        app()
    except MicrodbError as exc:
        err.print(f"[bold red]error:[/bold red] {escape(exc.message)}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # `python -m microdb.cli`: run the importable module, where commands register
    from microdb.cli import main as _entry

    _entry()
