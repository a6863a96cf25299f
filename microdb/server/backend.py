"""The workspace behind the Postgres-wire server: logins map to roles, the session's
``microdb.entity`` setting picks the entity (or ``TYPE/*`` / ``TYPE/K1,K2`` to fan out),
and every query goes through the same guard, masking and audit as the CLI and API."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from microdb.errors import QueryError
from microdb.server.pgwire import ScramVerifier, Session, UserAuth
from microdb.workspace import ACTOR, STALE, Workspace

ENTITY_SETTING = "microdb.entity"


def _literal(value: Any) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float, decimal.Decimal)):
        return exp.Literal.number(str(value))
    if isinstance(value, dt.datetime):
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), "TIMESTAMPTZ" if value.tzinfo else "TIMESTAMP")
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), "DATE")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return exp.cast(exp.Literal.string(bytes(value).hex()), "BLOB")
    return exp.Literal.string(str(value))


def bind_params(sql: str, params: list[Any]) -> str:
    """Substitute ``$n`` (or ``?``) parameters as quoted literals, so the guard sees plain SQL."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as err:
        raise QueryError(f"SQL syntax error: {str(err).splitlines()[0][:200]}") from None
    position = iter(range(len(params)))

    def swap(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder):
            idx = int(node.this) - 1 if node.this else next(position)
            if not 0 <= idx < len(params):
                raise QueryError(f"parameter ${idx + 1} has no value ({len(params)} given)")
            return _literal(params[idx])
        return node

    return tree.transform(swap).sql(dialect="duckdb")


class WorkspaceBackend:
    """Implements :class:`microdb.server.pgwire.Backend` over a :class:`Workspace`."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._verifiers: dict[str, ScramVerifier] = {
            name: ScramVerifier.parse(u.password_verifier)
            for name, u in ws.config.server.users.items()
            if u.password_verifier
        }

    def authenticate(self, user: str) -> UserAuth | None:
        spec = self.ws.config.server.users.get(user)
        if spec is None:
            self.ws.record("login", "refused", actor=user, error="unknown user")
            return None
        return UserAuth(role=spec.role, scram=self._verifiers.get(user), trusted_local=spec.trusted_local)

    def execute(self, session: Session, sql: str, params: list[Any] | None) -> pa.Table:
        target = session.settings.get(ENTITY_SETTING)
        if not target:
            raise QueryError(f"no entity chosen: SET {ENTITY_SETTING} = 'TYPE/KEY' (or 'TYPE/*' for all synced entities)")
        if params:
            sql = bind_params(sql, params)
        token = ACTOR.set(session.user)
        stale = STALE.set(session.notices)  # entities served stale become NoticeResponses
        try:
            etype, _, key = target.partition("/")
            if key == "*":
                return self.ws.query(etype, sql, role=session.role)
            if "," in key:
                return self.ws.query(etype, sql, keys=[k.strip() for k in key.split(",") if k.strip()], role=session.role)
            return self.ws.entity(target, role=session.role).sql(sql)
        finally:
            STALE.reset(stale)
            ACTOR.reset(token)

    def catalog(self, session: Session, sql: str) -> pa.Table | None:
        """psql's ``\\d`` family and other catalog queries, from the schemas the session sees."""
        from microdb.server.catalog import Catalog

        return Catalog(self._schemas(session)).answer(sql)

    def _schemas(self, session: Session) -> dict[str, pa.Schema]:
        target = session.settings.get(ENTITY_SETTING)
        if not target:
            return {}
        etype, _, key = target.partition("/")
        if key == "*":
            first = self.ws.store.keys(etype, limit=1)
            key = first[0] if first else ""
        elif "," in key:
            key = key.split(",")[0].strip()
        if not key:
            return {}
        token = ACTOR.set(session.user)
        try:
            entry = self.ws.hydrate(f"{etype}/{key}", session.role)
        finally:
            ACTOR.reset(token)
        return {name: table.schema for name, table in entry.tables.items()}
