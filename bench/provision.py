"""Provisioning benchmark: masked entities into PostgreSQL, next to a plain COPY of the same rows.

The baseline is what a hand-written loader would do with rows already in memory: one
psycopg ``COPY … FROM STDIN (FORMAT csv)`` per table (CSV written by pyarrow) into tables
without keys. Provisioning does more: unseal and mask every entity, keep only the used
reference rows, create the tables, load them (ADBC binary COPY), add primary keys,
foreign keys (validated over every row) and indexes — all in one transaction.
"""

from __future__ import annotations

import io
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

import microdb
from bench.report import Report

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
ROLE = "analyst"


def _plain_copy(tables: dict[str, pa.Table], schema: str) -> float:
    """Seconds for CREATE TABLE (no keys) + COPY of every table, one transaction."""
    import psycopg

    from microdb.provision import PostgresTarget, TablePlan, ColumnPlan

    target = PostgresTarget(f"{PG_DSN}?schema={schema}", None)
    opts = pacsv.WriteOptions(include_header=False, quoting_style="all_valid", null_string="")
    started = time.perf_counter()
    with psycopg.connect(PG_DSN) as con, con.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
        for name, table in tables.items():
            plan = TablePlan(name, tuple(ColumnPlan(f.name, f.type, False) for f in table.schema), (), ())
            cur.execute(target.create_sql(plan, None, keys=False)[0])
            cols = ", ".join(f'"{c}"' for c in table.column_names)
            with cur.copy(f'COPY "{schema}"."{name}" ({cols}) FROM STDIN (FORMAT csv)') as copy:
                for start in range(0, max(table.num_rows, 1), 200_000):
                    sink = io.BytesIO()
                    pacsv.write_csv(table.slice(start, 200_000), sink, opts)
                    copy.write(sink.getvalue())
    return time.perf_counter() - started


def _drop(*schemas: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as con:
        for s in schemas:
            con.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')


def run(report: Report, customers: int = 20_000) -> None:
    from microdb.init import init_workspace
    from microdb.provision import provision
    from microdb.subset import gather

    with tempfile.TemporaryDirectory(prefix="microdb-bench-prov-") as tmp:
        init_workspace(Path(tmp), demo=True, customers=customers, seed=11)
        ws = microdb.open(tmp)
        ws.sync("customer")
        keys = ws.store.keys("customer")
        gather(ws, "customer", keys[:50], ROLE)  # warm imports, catalogs and masking vocabularies
        t0 = time.perf_counter()
        es = gather(ws, "customer", keys, ROLE)
        gather_s = time.perf_counter() - t0
        rows = sum(es.rows().values())
        mine, base = f"bench_prov_{uuid.uuid4().hex[:8]}", f"bench_copy_{uuid.uuid4().hex[:8]}"
        try:
            copy_s = _plain_copy(es.plain(), base)
            res = provision(ws, f"{PG_DSN}?schema={mine}", etype="customer", role=ROLE)
            t0 = time.perf_counter()
            provision(ws, f"{PG_DSN}?schema={mine}", etype="customer", role=ROLE, mode="upsert")
            upsert_s = time.perf_counter() - t0
        finally:
            _drop(mine, base)
            ws.close()
    assert res.total_rows == rows
    write_s = res.seconds - gather_s
    target = "≥ 0.5× plain COPY"
    report.add("provision", f"{customers:,} masked customers → PostgreSQL, end to end ({rows:,} rows, "
               f"{res.seconds:.2f} s)", res.rows_per_second, "rows/s", "plain COPY", res.rows_per_second * copy_s / rows,
               target)
    report.add("provision", "  of which unseal + mask + subset", rows / gather_s, "rows/s", "plain COPY",
               (rows / gather_s) * copy_s / rows)
    report.add("provision", "  of which DDL + load + keys + FK validation (≈ total − unseal/mask)",
               rows / max(write_s, 1e-9), "rows/s", "plain COPY", (rows / max(write_s, 1e-9)) * copy_s / rows)
    report.add("provision", "plain COPY of the same rows (baseline, no keys)", rows / copy_s, "rows/s")
    report.add("provision", "upsert re-run (changes nothing)", rows / upsert_s, "rows/s", "plain COPY",
               (rows / upsert_s) * copy_s / rows)
