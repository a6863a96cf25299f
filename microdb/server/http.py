"""The HTTP API (FastAPI) and the entity browser over a :class:`Workspace`.

Bearer tokens from ``[server.tokens.NAME]`` map to roles; only their SHA-256 is kept in
the config. Every data request runs through the same guard, masking and audit as the CLI
and the Postgres wire, with the token's name as the audit actor. Errors are JSON
``{"error": {"code", "message"}}`` with the status their class calls for.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import hashlib
import hmac
import io
import json
import secrets
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from microdb.entity import parse_address
from microdb.errors import (AccessDenied, AuditError, ConfigError, EntityNotFound, KeyMaterialError, MicrodbError,
                            PolicyError, QueryError, QueryRefused, SchemaError, SealError, SourceError)
from microdb.workspace import ACTOR, STALE, Workspace

TOKEN_PREFIX = "mdb_"
COOKIE = "microdb_token"
MEDIA = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}
# status and error code per error class (most specific first)
_STATUS: tuple[tuple[type[MicrodbError], int, str], ...] = (
    (QueryRefused, 403, "query_refused"),
    (PolicyError, 403, "forbidden"),
    (AccessDenied, 403, "forbidden"),
    (EntityNotFound, 404, "not_found"),
    (QueryError, 422, "query_error"),
    (SourceError, 503, "source_unavailable"),
    (AuditError, 500, "audit_unavailable"),
    (SealError, 500, "seal_error"),
    (KeyMaterialError, 500, "key_error"),
    (SchemaError, 500, "schema_error"),
    (ConfigError, 500, "config_error"),
)
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# tokens ------------------------------------------------------------------------------------
def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the config stores for ``token``: ``sha256:<hex>`` (tokens are random, so no salt or stretching is needed)."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Caller:
    """An authenticated client: the token's name (the audit actor) and its role."""

    name: str
    role: str


class TokenAuth:
    """Bearer tokens of ``[server.tokens]``, checked by hash in constant time."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._tokens = [(bytes.fromhex(t.token_hash.split(":", 1)[1]), Caller(n, t.role))
                        for n, t in ws.config.server.tokens.items()]

    def check(self, token: str | None) -> Caller | None:
        if not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for known, caller in self._tokens:  # compare with every token: timing does not tell which matched
            if hmac.compare_digest(known, digest):
                found = caller
        return found

    async def refuse(self, request: Request, reason: str) -> None:
        """Audit a refused login (off the event loop), then answer 401."""
        import anyio

        client = request.client.host if request.client else "?"
        details = {"via": "http", "client": client, "path": request.url.path}
        await anyio.to_thread.run_sync(lambda: self.ws.record("login", "refused", actor="anonymous", error=reason,
                                                              details=details))
        raise ApiError(401, "unauthorized", reason)


def presented_token(request: Request) -> str | None:
    """The bearer token of the Authorization header, else the browser's cookie."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    return request.cookies.get(COOKIE)


# errors ------------------------------------------------------------------------------------
class ApiError(Exception):
    """An HTTP error with a JSON body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def status_of(exc: MicrodbError) -> tuple[int, str]:
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            return status, code
    return 500, "error"


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


# metrics -----------------------------------------------------------------------------------
class Metrics:
    """Request counts and latency histograms per route template, in Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> bucket counts + [count, sum]
        self.in_flight = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            k = (method, route, status)
            self.requests[k] = self.requests.get(k, 0) + 1
            h = self.latency.setdefault(route, [0.0] * (len(_BUCKETS) + 2))
            for i, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    h[i] += 1
            h[-2] += 1
            h[-1] += seconds

    def render(self, ws: Workspace) -> str:
        entries, nbytes = ws.pool.size
        lines = ["# HELP microdb_http_requests_total HTTP requests by method, route and status.",
                 "# TYPE microdb_http_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'microdb_http_requests_total{{method="{method}",route="{_label(route)}",status="{status}"}} {n}')
            lines += ["# HELP microdb_http_request_duration_seconds HTTP request latency by route.",
                      "# TYPE microdb_http_request_duration_seconds histogram"]
            for route, h in sorted(self.latency.items()):
                r = _label(route)
                for bound, n in zip(_BUCKETS, h):
                    lines.append(f'microdb_http_request_duration_seconds_bucket{{route="{r}",le="{bound}"}} {int(n)}')
                lines.append(f'microdb_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {int(h[-2])}')
                lines.append(f'microdb_http_request_duration_seconds_count{{route="{r}"}} {int(h[-2])}')
                lines.append(f'microdb_http_request_duration_seconds_sum{{route="{r}"}} {h[-1]:.6f}')
            in_flight = self.in_flight
        lines += [
            "# HELP microdb_http_in_flight Requests being served.", "# TYPE microdb_http_in_flight gauge",
            f"microdb_http_in_flight {in_flight}",
            "# HELP microdb_pool_entries Warm (entity, role) micro-databases.", "# TYPE microdb_pool_entries gauge",
            f"microdb_pool_entries {entries}",
            "# HELP microdb_pool_bytes Bytes of the warm entities' tables.", "# TYPE microdb_pool_bytes gauge",
            f"microdb_pool_bytes {nbytes}",
            "# HELP microdb_pool_max_entries Configured bound of the warm pool.", "# TYPE microdb_pool_max_entries gauge",
            f"microdb_pool_max_entries {ws.pool.max_entries}",
            "# HELP microdb_pool_max_bytes Configured memory bound of the warm pool.", "# TYPE microdb_pool_max_bytes gauge",
            f"microdb_pool_max_bytes {ws.pool.max_bytes}",
            "# HELP microdb_pool_hits_total Warm pool hits.", "# TYPE microdb_pool_hits_total counter",
            f"microdb_pool_hits_total {ws.pool.hits}",
            "# HELP microdb_pool_misses_total Warm pool misses (hydrations).", "# TYPE microdb_pool_misses_total counter",
            f"microdb_pool_misses_total {ws.pool.misses}",
        ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsMiddleware:
    """Pure ASGI middleware: times every HTTP request and counts it under its route template."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.in_flight -= 1
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status[0], time.perf_counter() - t0)


# encoding ----------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact, as the wire's text format sends it
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def json_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts; non-finite floats become null (JSON has no NaN)."""
    cols = []
    for col in table.columns:
        if pa.types.is_floating(col.type):
            col = pc.if_else(pc.is_finite(col), col, pa.scalar(None, col.type))
        cols.append(col)
    return pa.table(cols, names=table.column_names).to_pylist()


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, default=_json_default, ensure_ascii=False, allow_nan=False).encode("utf-8")


def table_bytes(table: pa.Table, fmt: str) -> bytes:
    """``table`` as CSV, Parquet or an Arrow IPC stream."""
    buf = io.BytesIO()
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, buf)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buf, compression="zstd")
    elif fmt == "arrow":
        with pa.ipc.new_stream(buf, table.schema) as writer:
            writer.write_table(table)
    else:
        raise ApiError(422, "invalid_request", f"unknown format {fmt!r} (json, csv, parquet, arrow)")
    return buf.getvalue()


def _columns(table: pa.Table) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in table.schema]


def table_response(table: pa.Table, fmt: str, filename: str, warnings: list[str]) -> Response:
    """One result table in the asked format, with staleness warnings as headers (and in JSON)."""
    headers = _warning_headers(warnings)
    if fmt == "json":
        doc = {"columns": _columns(table), "rows": json_rows(table), "row_count": table.num_rows}
        if warnings:
            doc["warnings"] = warnings
        return Response(dumps(doc), media_type=MEDIA["json"], headers=headers)
    ext = {"csv": "csv", "parquet": "parquet", "arrow": "arrows"}.get(fmt, fmt)
    headers["Content-Disposition"] = f'attachment; filename="{_safe_filename(filename)}.{ext}"'
    return Response(table_bytes(table, fmt), media_type=MEDIA[fmt], headers=headers)


def tables_zip(tables: dict[str, pa.Table], fmt: str) -> bytes:
    """Every table as ``NAME.csv`` or ``NAME.parquet`` in one zip file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, table in tables.items():
            zf.writestr(f"{name}.{fmt}", table_bytes(table, fmt))
    return buf.getvalue()


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "result"


def _warning_headers(warnings: list[str]) -> dict[str, str]:
    if not warnings:
        return {}
    text = "; ".join(warnings).encode("ascii", "replace").decode("ascii").replace('"', "'")
    return {"Warning": f'110 microdb "{text[:1000]}"'}


# request bodies ----------------------------------------------------------------------------
class QueryBody(BaseModel):
    """``{"entity": "customer/42", "sql": …}`` or ``{"type": "customer", "keys": [...] | "*", "sql": …}``."""

    model_config = ConfigDict(extra="forbid")

    entity: str | None = Field(None, description="TYPE/KEY of one entity", examples=["customer/42"])
    type: str | None = Field(None, description="entity type to fan out over")
    keys: list[str | int] | Literal["*"] | None = Field(None, description='keys to fan out over, or "*" for every synced entity')
    sql: str = Field(min_length=1, max_length=200_000, description="one read-only SELECT over the entity's tables")
    format: Literal["json", "csv", "parquet", "arrow"] = "json"

    @model_validator(mode="after")
    def _target(self) -> "QueryBody":
        if (self.entity is None) == (self.type is None):
            raise ValueError('give either "entity" (TYPE/KEY) or "type" with "keys"')
        if self.type is not None and self.keys is None:
            raise ValueError('"type" needs "keys": a list of keys or "*" for every synced entity')
        if self.entity is not None and self.keys is not None:
            raise ValueError('"keys" goes with "type", not with "entity"')
        return self


# the service -------------------------------------------------------------------------------
class Service:
    """What the routes share: the workspace, token checks and audited calls as a caller."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.auth = TokenAuth(ws)

    async def caller(self, request: Request) -> Caller:
        """The dependency of every data route: the caller of the bearer token (or browser cookie), else 401.
        Async: a hash and a compare need no worker thread."""
        token = presented_token(request)
        if token is None:
            await self.auth.refuse(request, "missing bearer token (Authorization: Bearer TOKEN)")
        found = self.auth.check(token)
        if found is None:
            await self.auth.refuse(request, "invalid token")
        return found

    @contextlib.contextmanager
    def acting(self, caller: Caller) -> Iterator[list[str]]:
        """Run as ``caller`` (the audit actor); yields the list collecting staleness warnings."""
        warnings: list[str] = []
        a, s = ACTOR.set(caller.name), STALE.set(warnings)
        try:
            yield warnings
        finally:
            STALE.reset(s)
            ACTOR.reset(a)

    def check_target(self, caller: Caller, action: str, etype: str, entity: str) -> None:
        """Refuse (audited) an unknown entity type or a role the workspace does not define."""
        if etype not in self.ws.config.entities:
            known = ", ".join(sorted(self.ws.config.entities)) or "none configured"
            exc: MicrodbError = EntityNotFound(f"unknown entity type {etype!r} (known: {known})")
        else:
            try:
                self.ws.policies.role(caller.role)
                return
            except MicrodbError as err:
                exc = err
        self.ws.record(action, "refused" if isinstance(exc, PolicyError) else "error", role=caller.role,
                       entity=entity, error=exc.message)
        raise exc

    def entity_tables(self, caller: Caller, address: str) -> tuple[dict[str, pa.Table], list[str], list[str], list[str]]:
        """(tables, reference names, withheld columns, warnings) of one entity as the caller's role sees it."""
        etype, key = parse_address(address)
        with self.acting(caller) as warnings:
            self.check_target(caller, "get", etype, address)
            try:
                entry = self.ws.hydrate(address, caller.role)  # once: on_demand = "always" projects per call
                tables = dict(entry.tables)
                self.ws.record("get", role=caller.role, entity=address, rows=sum(t.num_rows for t in tables.values()))
            except AuditError:
                raise
            except MicrodbError as exc:
                self.ws.record("get", "refused" if isinstance(exc, (PolicyError, AccessDenied)) else "error",
                               role=caller.role, entity=address, error=exc.message)
                raise
            refs = [r.name for r in self.ws.entity_type(etype).references]
            return tables, refs, list(entry.withheld), warnings

    def query(self, caller: Caller, body: QueryBody) -> tuple[pa.Table, list[str]]:
        with self.acting(caller) as warnings:
            if body.entity is not None:
                etype, _ = parse_address(body.entity)
                self.check_target(caller, "query", etype, body.entity)
                return self.ws.entity(body.entity, caller.role).sql(body.sql), warnings
            self.check_target(caller, "query", body.type, f"{body.type}/*")
            keys = None if body.keys == "*" else [str(k) for k in body.keys]
            return self.ws.query(body.type, body.sql, keys=keys, role=caller.role), warnings

    def keys(self, caller: Caller, etype: str, offset: int, limit: int) -> dict[str, Any]:
        with self.acting(caller):
            self.check_target(caller, "list", etype, f"{etype}/*")
            total = self.ws.store.count(etype)
            keys = self.ws.store.keys(etype, limit=limit, offset=offset)
            self.ws.record("list", role=caller.role, entity=f"{etype}/*", rows=len(keys),
                           details={"offset": offset, "limit": limit})
        return {"type": etype, "total": total, "offset": offset, "limit": limit, "keys": keys}


def create_app(ws: Workspace, *, browser: bool = True) -> FastAPI:
    """The HTTP API (and, with ``browser``, the entity browser at ``/``) over ``ws``."""
    app = FastAPI(
        title="microdb", version="1",
        description="Per-entity micro-databases, masked on read. Authenticate with `Authorization: Bearer TOKEN` "
                    "(tokens from `microdb token NAME --role R`).",
    )
    svc = Service(ws)
    metrics = Metrics()
    app.state.service = svc
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="microdb"'} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(MicrodbError)
    async def _microdb_error(request: Request, exc: MicrodbError) -> JSONResponse:
        status, code = status_of(exc)
        return error_response(status, code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("microdb.http").exception("internal error on %s", request.url.path)
        return error_response(500, "internal", "internal error (details are in the server log)")

    caller_dep = Depends(svc.caller)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness: the workspace is open and its store answers."""
        entries, nbytes = ws.pool.size
        return {"status": "ok", "entity_types": sorted(ws.config.entities),
                "pool": {"entries": entries, "bytes": nbytes, "max_entries": ws.pool.max_entries}}

    @app.get("/metrics", tags=["service"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus text: request counts and latencies per route, warm pool size and hits."""
        return Response(metrics.render(ws), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/entities/{etype}", tags=["entities"])
    def list_keys(etype: str, offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=10_000),
                  caller: Caller = caller_dep) -> dict[str, Any]:
        """Keys of the synced entities of a type, paginated."""
        return svc.keys(caller, etype, offset, limit)

    @app.get("/entities/{etype}/{key:path}", tags=["entities"], response_class=Response)
    def get_entity(etype: str, key: str, format: Literal["json", "csv", "parquet"] = "json",  # noqa: A002
                   table: str | None = Query(None, description="one table (csv/parquet); default: a zip of all"),
                   caller: Caller = caller_dep) -> Response:
        """Every table of one entity as the caller's role sees it."""
        address = f"{etype}/{key}"
        tables, refs, withheld, warnings = svc.entity_tables(caller, address)
        if format == "json":
            doc = {"entity": address, "role": caller.role,
                   "tables": {n: json_rows(t) for n, t in tables.items()},
                   "references": refs, "withheld": withheld}
            if warnings:
                doc["warnings"] = warnings
            return Response(dumps(doc), media_type=MEDIA["json"], headers=_warning_headers(warnings))
        name = f"{etype}_{key}"
        if table is not None:
            if table not in tables:
                raise ApiError(404, "not_found", f"{address} has no table {table!r} (tables: {', '.join(tables)})")
            return table_response(tables[table], format, f"{name}_{table}", warnings)
        headers = {**_warning_headers(warnings), "Content-Disposition": f'attachment; filename="{_safe_filename(name)}.zip"'}
        return Response(tables_zip(tables, format), media_type="application/zip", headers=headers)

    @app.post("/query", tags=["query"], response_class=Response)
    def run_query(body: QueryBody, caller: Caller = caller_dep) -> Response:
        """Run one read-only SQL query on one entity, or fanned out over many (adds ``entity_key``)."""
        table, warnings = svc.query(caller, body)
        name = body.entity or f"{body.type}_fanout"
        return table_response(table, body.format, name, warnings)

    if browser:
        from microdb.server.browser import mount_browser

        mount_browser(app, svc)
    return app


class HttpThread:
    """The HTTP app served by uvicorn in a background thread (CLI, tests); ``stop()`` drains it."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8642, grace_seconds: float = 10.0) -> None:
        import socket

        import uvicorn

        try:
            self.sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                             backlog=512)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} for HTTP: {exc}") from None
        # accepted sockets inherit it: without it a keep-alive response waits ~40 ms for a delayed ACK
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = host
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=grace_seconds, backlog=512)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="microdb-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.sock.close()
                raise ConfigError(f"the HTTP server on {host}:{port} did not start (see the log above)")
            time.sleep(0.01)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def stop(self) -> None:
        """Stop accepting, let running requests finish (up to the grace period), end the thread."""
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()
