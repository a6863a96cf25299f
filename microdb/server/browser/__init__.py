"""The entity browser: server-rendered pages (no JavaScript) over the HTTP service.

Sign in with a token (kept in an HttpOnly, SameSite=Strict cookie), open an entity by
address, see its tables as the token's role sees them, run a read-only query and
download the result as CSV or Parquet. Every page goes through the same audited
calls as the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from microdb.errors import AuditError, MicrodbError

if TYPE_CHECKING:
    from microdb.server.http import Caller, Service

HERE = Path(__file__).parent
SHOWN_ROWS = 200
# no scripts at all; forms post to this origin only; never framed
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _shown(table: pa.Table) -> dict[str, Any]:
    """Columns, the first rows as display strings, and the row count of one table."""
    part = table.slice(0, SHOWN_ROWS)
    cols = [c.to_pylist() for c in part.columns]
    rows = [tuple(None if v is None else str(v) for v in row) for row in zip(*cols)] if cols else []
    return {"columns": table.column_names, "rows": rows, "total": table.num_rows}


def mount_browser(app: FastAPI, svc: "Service") -> None:
    """Add the browser's pages (``/``, ``/login``, ``/logout``, ``/ui/…``) and its stylesheet to ``app``."""
    from microdb.server.http import COOKIE, QueryBody, table_response

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    ws = svc.ws

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("caller", None)
        ctx.setdefault("error", None)
        ctx.setdefault("warnings", [])
        resp = templates.TemplateResponse(request, name, {"workspace": ws.config.workspace.name, **ctx},
                                          status_code=status)
        resp.headers.update(SECURITY_HEADERS)
        return resp

    def signed_in(request: Request) -> "Caller | None":
        """The caller of the session cookie; an invalid cookie is an audited refusal."""
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        caller = svc.auth.check(token)
        if caller is None:
            client = request.client.host if request.client else "?"
            ws.record("login", "refused", actor="anonymous", error="invalid token (browser cookie)",
                      details={"via": "browser", "client": client, "path": request.url.path})
        return caller

    def failure(request: Request, caller: "Caller", exc: MicrodbError, **ctx: Any) -> HTMLResponse:
        from microdb.server.http import status_of

        if isinstance(exc, AuditError):  # fail closed: nothing is shown that was not audited
            raise exc
        status, _ = status_of(exc)
        return page(request, "entity.html", status, caller=caller, error=exc.message, tables=None, **ctx)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request) -> HTMLResponse:
        caller = signed_in(request)
        if caller is None:
            return page(request, "login.html")
        types = []
        for name in sorted(ws.config.entities):
            et = ws.entity_type(name)
            types.append({"name": name, "count": ws.store.count(name), "keys": ws.store.keys(name, limit=40),
                          "tables": et.table_names})
        return page(request, "home.html", caller=caller, types=types)

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: str = Form("")) -> Response:
        caller = svc.auth.check(token.strip())
        client = request.client.host if request.client else "?"
        if caller is None:
            ws.record("login", "refused", actor="anonymous", error="invalid token", details={"via": "browser", "client": client})
            return page(request, "login.html", 401, error="That token is not valid.")
        ws.record("login", actor=caller.name, role=caller.role, details={"via": "browser", "client": client})
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/", max_age=12 * 3600)
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    @app.get("/ui/entity", response_class=HTMLResponse, include_in_schema=False)
    def entity_page(request: Request, address: str = "") -> Response:
        caller = signed_in(request)
        if caller is None:
            return RedirectResponse("/", status_code=303)
        address = address.strip()
        try:
            tables, refs, withheld, warnings = svc.entity_tables(caller, address)
        except MicrodbError as exc:
            return failure(request, caller, exc, address=address)
        root = next(iter(tables), "")
        sql = f"SELECT * FROM {root} LIMIT 100" if root else ""
        return page(request, "entity.html", caller=caller, address=address, warnings=warnings, withheld=withheld,
                    references=refs, tables={n: _shown(t) for n, t in tables.items()}, sql=sql, result=None)

    @app.post("/ui/query", include_in_schema=False)
    def query_page(request: Request, address: str = Form(...), sql: str = Form(...), format: str = Form("html")) -> Response:  # noqa: A002
        caller = signed_in(request)
        if caller is None:
            return RedirectResponse("/", status_code=303)
        if format not in ("html", "csv", "parquet"):
            format = "html"  # noqa: A001
        try:
            body = QueryBody(entity=address.strip(), sql=sql, format="json" if format == "html" else format)
            result, warnings = svc.query(caller, body)
            if format != "html":
                resp = table_response(result, format, address.strip(), warnings)
                resp.headers["Cache-Control"] = "no-store"
                return resp
        except MicrodbError as exc:
            return failure(request, caller, exc, address=address, sql=sql)
        except ValueError as exc:  # a malformed form (pydantic)
            return page(request, "entity.html", 422, caller=caller, error=str(exc).splitlines()[0], tables=None,
                        address=address, sql=sql)
        return page(request, "entity.html", caller=caller, address=address, sql=sql, warnings=warnings,
                    tables=None, result=_shown(result))
