"""The PostgreSQL frontend/backend protocol (v3) over asyncio, so ``psql`` and drivers such
as psycopg 3 can query micro-databases.

The server knows nothing of workspaces: it speaks the protocol, authenticates with
SCRAM-SHA-256 (or trusts local users), keeps per-connection session settings such as
``microdb.entity``, answers session commands (SET/SHOW/BEGIN/...) and client start-up
probes itself, and hands every other query to a :class:`Backend`. Queries run in a thread
pool; rows are encoded a column at a time (``pgtypes``).

Parameters of the extended protocol are *not* spliced into SQL: the backend receives the
SQL with its ``$1 … $n`` placeholders and a list of Python values chosen by each
parameter's declared type OID (untyped parameters stay ``str``), and must bind them
itself (DuckDB binds ``$n`` natively).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import hashlib
import hmac
import ipaddress
import itertools
import logging
import os
import re
import secrets
import ssl
import stringprep
import struct
import threading
import time
import unicodedata
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from microdb.errors import (
    AccessDenied,
    ConfigError,
    EntityNotFound,
    MicrodbError,
    PolicyError,
    QueryError,
    QueryRefused,
)
from microdb.server import pgtypes
from microdb.server.pgtypes import PgWireError

log = logging.getLogger(__name__)

SERVER_VERSION = "16.0 (microdb)"
_SSL_REQUEST, _GSSENC_REQUEST, _CANCEL_REQUEST = 80877103, 80877104, 80877102
_MAX_MESSAGE = 64 * 1024 * 1024
_ROWS_PER_CHUNK = 65_536


# --- public data types ------------------------------------------------------------------


@dataclass(frozen=True)
class ScramVerifier:
    """A SCRAM-SHA-256 verifier: what the server keeps instead of a password.

    Its text form is PostgreSQL's ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``
    (base64 fields), so configuration can hold verifiers made by either.
    """

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def from_password(cls, password: str, iterations: int = 4096, salt: bytes | None = None) -> ScramVerifier:
        """Derive a verifier from a password (random 16-byte salt unless given)."""
        salt = os.urandom(16) if salt is None else salt
        salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        return cls(iterations, salt, hashlib.sha256(client_key).digest(), hmac.digest(salted, b"Server Key", "sha256"))

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Read PostgreSQL's stored verifier format; ConfigError if it is not one."""
        match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)",
                             text.strip())
        if not match:
            raise ConfigError("not a SCRAM-SHA-256 verifier: expected "
                              "'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>'")
        try:
            salt, stored, server = (base64.b64decode(match[i], validate=True) for i in (2, 3, 4))
        except ValueError:
            raise ConfigError("SCRAM-SHA-256 verifier has a field that is not valid base64") from None
        if len(stored) != 32 or len(server) != 32 or int(match[1]) < 1:
            raise ConfigError("SCRAM-SHA-256 verifier has wrong key lengths or iteration count")
        return cls(int(match[1]), salt, stored, server)

    def __str__(self) -> str:
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        return f"SCRAM-SHA-256${self.iterations}:{b64(self.salt)}${b64(self.stored_key)}:{b64(self.server_key)}"

    def verify_password(self, password: str) -> bool:
        """True if ``password`` derives this verifier (for config checks, not the wire)."""
        other = ScramVerifier.from_password(password, self.iterations, self.salt)
        return hmac.compare_digest(other.stored_key, self.stored_key)


@dataclass(frozen=True)
class UserAuth:
    """How a login user authenticates and which role it gets.

    ``trusted_local`` users connecting from a loopback address need no password;
    everyone else must prove the password behind ``scram``.
    """

    role: str
    scram: ScramVerifier | None = None
    trusted_local: bool = False


@dataclass
class Session:
    """One client connection's identity and settings, as the backend sees it.

    ``settings`` holds start-up parameters, ``-c`` options and SET values by lower-case
    name (e.g. ``{"microdb.entity": "customer/42"}``). ``cancel_event`` is set when the
    client cancels the running query; a backend may poll it instead of offering cancel().
    """

    user: str
    role: str
    database: str
    process_id: int
    peer: str
    tls: bool
    settings: dict[str, str] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    notices: list[str] = field(default_factory=list, repr=False)  # warnings to send with the next result
    secret_key: int = field(default=0, repr=False)


class Backend(Protocol):
    """What the wire server needs from microdb.

    Optional methods, looked up with getattr:

    - ``describe(session, sql) -> pa.Schema | None``: the result schema of ``sql`` (with
      unbound ``$n``) without running it, for Describe of a prepared statement.
    - ``cancel(session) -> None``: interrupt the session's running ``execute``; called
      on the event loop thread, so it must be quick and thread-safe.
    - ``catalog(session, sql) -> pa.Table | None``: answer a query over pg_catalog or
      information_schema (psql's ``\\d``); None means unsupported.
    """

    def authenticate(self, user: str) -> UserAuth | None:
        """The user's credentials and role; None for an unknown user."""

    def execute(self, session: Session, sql: str, params: list[object] | None) -> pa.Table:
        """Run ``sql`` (binding ``$1 … $n`` to ``params``) for the session; raise MicrodbError to refuse."""


# --- SCRAM-SHA-256 (RFC 5802 / RFC 7677, as PostgreSQL speaks it) -----------------------


def _saslprep(password: str) -> bytes:
    """SASLprep (RFC 4013) like PostgreSQL: ASCII is used as is, and a password that
    fails preparation is used as raw UTF-8 rather than refused."""
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c))
    text = unicodedata.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7,
                  stringprep.in_table_c8, stringprep.in_table_c9, stringprep.in_table_a1)
    if not text or any(check(c) for c in text for check in prohibited):
        return raw
    if any(stringprep.in_table_d1(c) for c in text):
        if any(stringprep.in_table_d2(c) for c in text) or not (
                stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])):
            return raw
    return text.encode("utf-8")


class _ScramExchange:
    """The server side of one SCRAM-SHA-256 exchange. With no verifier (unknown user) it
    runs a mock exchange with a stable fake salt, so user names cannot be probed."""

    def __init__(self, user: str, verifier: ScramVerifier | None, mock_secret: bytes) -> None:
        if verifier is None:
            salt = hmac.digest(mock_secret, user.encode("utf-8"), "sha256")[:16]
            verifier = ScramVerifier(4096, salt, os.urandom(32), os.urandom(32))
            self.mock = True
        else:
            self.mock = False
        self.user, self.verifier = user, verifier
        self.client_first_bare = self.server_first = self.nonce = self.gs2_header = ""

    def first(self, message: bytes) -> bytes:
        text = self._ascii(message)
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y") or parts[1] != "":
            raise _auth_failed(self.user, "malformed SCRAM client-first-message or channel binding requested")
        self.gs2_header = f"{parts[0]},,"
        self.client_first_bare = parts[2]
        attrs = dict(a.split("=", 1) for a in self.client_first_bare.split(",") if "=" in a)
        client_nonce = attrs.get("r", "")
        if not client_nonce or not all(0x21 <= ord(c) <= 0x7E and c != "," for c in client_nonce):
            raise _auth_failed(self.user, "malformed SCRAM client nonce")
        self.nonce = client_nonce + base64.b64encode(os.urandom(18)).decode()
        salt = base64.b64encode(self.verifier.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={self.verifier.iterations}"
        return self.server_first.encode()

    def final(self, message: bytes) -> bytes:
        text = self._ascii(message)
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(",") if "=" in a)
        try:
            proof = base64.b64decode(proof_b64, validate=True)
            binding = base64.b64decode(attrs.get("c", ""), validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise _auth_failed(self.user, "malformed SCRAM client-final-message") from None
        if not sep or binding != self.gs2_header or attrs.get("r") != self.nonce or len(proof) != 32:
            raise _auth_failed(self.user, "SCRAM channel binding, nonce or proof does not match")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.digest(self.verifier.stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if self.mock or not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key):
            raise _auth_failed(self.user, "wrong password or unknown user")
        server_signature = hmac.digest(self.verifier.server_key, auth_message, "sha256")
        return b"v=" + base64.b64encode(server_signature)

    def _ascii(self, message: bytes) -> str:
        try:
            return message.decode("ascii")
        except UnicodeDecodeError:
            raise _auth_failed(self.user, "SCRAM message is not ASCII") from None


def _auth_failed(user: str, detail: str) -> PgWireError:
    log.info("authentication failed for user %r: %s", user, detail)
    return PgWireError("password authentication failed", "28P01", fatal=True)


# --- SQL text: statements, tokens, placeholders -----------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<block>/\*)
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<param>\$[0-9]+)
  | (?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)
  | (?P<word>[^\W\d][\w$]*)
  | (?P<number>[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+)
  | (?P<semi>;)
  | (?P<op>::|.)
""", re.X | re.S)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def value(self) -> str:
        """A literal's or identifier's value: quotes removed, doubled quotes undone."""
        if self.kind == "string":
            return self.text[1:-1].replace("''", "'")
        if self.kind == "estring":
            return re.sub(r"\\(.)", r"\1", self.text[2:-1].replace("''", "'"))
        if self.kind == "quoted":
            return self.text[1:-1].replace('""', '"')
        if self.kind == "dollar":
            tag_len = self.text.index("$", 1) + 1
            return self.text[tag_len:-tag_len]
        return self.text.lower() if self.kind == "word" else self.text


@dataclass(frozen=True)
class Statement:
    """One SQL statement: its text, its significant tokens and its number of ``$n`` placeholders."""

    text: str
    tokens: tuple[Token, ...]
    nparams: int

    def word(self, i: int) -> str:
        return self.tokens[i].upper if i < len(self.tokens) else ""


def split_sql(sql: str) -> list[Statement]:
    """Split ``sql`` at top-level semicolons (quotes, dollar quotes and comments respected);
    empty statements are dropped."""
    statements: list[Statement] = []
    tokens: list[Token] = []
    nparams, start, pos = 0, 0, 0
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        kind, end = m.lastgroup, m.end()
        if kind == "block":
            depth, end = 1, pos + 2
            while depth and end < len(sql):
                if sql.startswith("/*", end):
                    depth, end = depth + 1, end + 2
                elif sql.startswith("*/", end):
                    depth, end = depth - 1, end + 2
                else:
                    end += 1
        elif kind == "dollar":
            close = sql.find(m.group(), end)
            end = len(sql) if close < 0 else close + len(m.group())
        if kind == "semi":
            statements.append(_statement(sql, start, pos, tokens, nparams))
            tokens, nparams, start = [], 0, end
        elif kind not in ("space", "comment", "block"):
            tokens.append(Token(kind, sql[pos:end], pos))
            if kind == "param":
                nparams = max(nparams, int(m.group()[1:]))
        pos = end
    statements.append(_statement(sql, start, len(sql), tokens, nparams))
    return [s for s in statements if s.tokens]


def _statement(sql: str, start: int, end: int, tokens: list[Token], nparams: int) -> Statement:
    text = sql[start:end]
    shift = start + len(text) - len(text.lstrip())
    return Statement(text.strip(), tuple(Token(t.kind, t.text, t.start - shift) for t in tokens), nparams)


# --- session settings -------------------------------------------------------------------

_DEFAULTS = {
    "server_version": SERVER_VERSION, "server_version_num": "160000", "server_encoding": "UTF8",
    "client_encoding": "UTF8", "datestyle": "ISO, MDY", "intervalstyle": "postgres",
    "integer_datetimes": "on", "timezone": "UTC", "standard_conforming_strings": "on",
    "application_name": "", "is_superuser": "off", "default_transaction_read_only": "on",
    "transaction_read_only": "on", "in_hot_standby": "off", "search_path": '"$user", main',
    "max_identifier_length": "63", "transaction_isolation": "read committed", "extra_float_digits": "1",
    "lc_messages": "C", "bytea_output": "hex",
}
_CANONICAL = {"datestyle": "DateStyle", "timezone": "TimeZone", "intervalstyle": "IntervalStyle"}
_REPORTED = ("server_version", "server_encoding", "client_encoding", "datestyle", "intervalstyle",
             "integer_datetimes", "timezone", "standard_conforming_strings", "application_name",
             "is_superuser", "session_authorization", "default_transaction_read_only", "in_hot_standby")
_READ_ONLY = {"server_version", "server_version_num", "server_encoding", "integer_datetimes", "is_superuser",
              "session_authorization", "in_hot_standby", "max_identifier_length", "transaction_read_only"}


def _check_setting(name: str, value: str) -> str:
    """The value to store for ``SET name = value``, or PgWireError if microdb cannot honour it."""
    if name in _READ_ONLY:
        raise PgWireError(f'parameter "{name}" cannot be changed', "55P02")
    if name in ("role", "session_authorization"):
        raise PgWireError("the role comes from the login user and cannot be changed", "42501")
    if name == "client_encoding":
        if value.upper().replace("-", "").replace("_", "") not in ("UTF8", "UNICODE", "SQLASCII"):
            raise PgWireError(f"client_encoding {value!r} is not supported: microdb speaks UTF8 only", "22023")
        return "UTF8"
    if name == "datestyle":
        if "ISO" not in value.upper():
            raise PgWireError(f"DateStyle {value!r} is not supported: microdb sends dates as ISO", "22023")
        order = next((o for o in ("DMY", "YMD") if o in value.upper()), "MDY")
        return f"ISO, {order}"
    if name == "intervalstyle" and value.lower() != "postgres":
        raise PgWireError("IntervalStyle must be postgres", "22023")
    if name == "standard_conforming_strings" and value.lower() not in ("on", "true", "1"):
        raise PgWireError("standard_conforming_strings must be on", "22023")
    if name == "timezone":
        if value.upper() in ("UTC", "GMT", "Z"):
            return "UTC"
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise PgWireError(f'invalid value for parameter "TimeZone": "{value}"', "22023") from None
    return value


def parse_options(options: str) -> list[tuple[str, str]]:
    """Settings from a start-up ``options`` string: ``-c name=value``, ``-cname=value`` and
    ``--name=value``; backslash escapes a space, as libpq documents."""
    words, current, escaped, has = [], [], False, False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped, has = False, True
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if has:
                words.append("".join(current))
            current, has = [], False
        else:
            current.append(ch)
            has = True
    if has:
        words.append("".join(current))
    settings, i = [], 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            pair, i = words[i + 1], i + 2
        elif word.startswith("-c"):
            pair, i = word[2:], i + 1
        elif word.startswith("--"):
            pair, i = word[2:], i + 1
        else:
            raise PgWireError(f"invalid command-line argument in options: {word!r}", "42601", fatal=True)
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise PgWireError(f"option {pair!r} needs the form name=value", "42601", fatal=True)
        settings.append((name.strip().lower().replace("-", "_"), value))
    return settings


# --- protocol messages ------------------------------------------------------------------


def _msg(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack(">i", len(payload) + 4) + payload


def _cstr(text: str) -> bytes:
    return text.encode("utf-8") + b"\0"


def _notice(message: str) -> bytes:
    """A NoticeResponse (a WARNING the client shows but that does not fail the query)."""
    fields = [(b"S", "WARNING"), (b"V", "WARNING"), (b"C", "01000"), (b"M", message)]
    return _msg(b"N", b"".join(k + _cstr(v) for k, v in fields) + b"\0")


def _error(exc: PgWireError | MicrodbError, severity: str = "ERROR") -> bytes:
    fields = [(b"S", severity), (b"V", severity), (b"C", _sqlstate(exc)), (b"M", exc.message)]
    return _msg(b"E", b"".join(k + _cstr(v) for k, v in fields) + b"\0")


_QUERY_ERROR_STATES = (("parser error", "42601"), ("syntax error", "42601"), ("catalog error", "42P01"),
                       ("binder error", "42703"), ("conversion error", "22P02"), ("out of range", "22003"),
                       ("division by zero", "22012"))


def _sqlstate(exc: MicrodbError) -> str:
    """The SQLSTATE of a microdb error: an explicit ``sqlstate`` attribute wins, then the class."""
    explicit = getattr(exc, "sqlstate", None)
    if explicit:
        return explicit
    if isinstance(exc, (QueryRefused, PolicyError, AccessDenied)):
        return "42501"
    if isinstance(exc, EntityNotFound):
        return "P0002"
    if isinstance(exc, QueryError):
        lowered = exc.message.lower()
        return next((state for text, state in _QUERY_ERROR_STATES if text in lowered), "XX000")
    return "XX000"


def _row_description(schema: pa.Schema, formats: list[int]) -> bytes:
    parts = [struct.pack(">h", len(schema))]
    for fld, fmt in zip(schema, formats):
        t = pgtypes.pg_type(fld.type)
        parts.append(_cstr(fld.name) + struct.pack(">ihihih", 0, 0, t.oid, t.size, -1, fmt))
    return _msg(b"T", b"".join(parts))


def _formats(codes: list[int], ncols: int) -> list[int]:
    if not codes:
        return [0] * ncols
    if len(codes) == 1:
        return codes * ncols
    if len(codes) != ncols:
        raise PgWireError(f"bind message has {len(codes)} result formats but query has {ncols} columns", "08P01")
    return codes


class _Body:
    """A cursor over one message's payload."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def int16(self) -> int:
        return struct.unpack(">h", self.bytes(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.bytes(4))[0]

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PgWireError("message is shorter than its fields say", "08P01")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def cstr(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise PgWireError("unterminated string in message", "08P01")
        try:
            text = self.data[self.pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise PgWireError("invalid byte sequence for encoding UTF8", "22021") from None
        self.pos = end + 1
        return text


# --- per-connection state ---------------------------------------------------------------


@dataclass
class _Result:
    """What one statement produced: rows (tag gets the count) or a command tag."""

    table: pa.Table | None = None
    tag: str = ""
    formats: list[int] | None = None  # simple-protocol override (BINARY cursors)
    empty: bool = False


@dataclass
class _Prepared:
    statement: Statement | None  # None: empty query
    param_oids: list[int]


@dataclass
class _Portal:
    prepared: _Prepared
    params: list[object] | None
    formats: list[int]
    result: _Result | None = None
    pos: int = 0


@dataclass
class _Cursor:
    table: pa.Table
    hold: bool
    binary: bool
    pos: int = 0


class _Connection:
    """One client: start-up, authentication, then the message loop."""

    def __init__(self, server: PgServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.out = bytearray()
        self.session: Session | None = None
        self.tls = False
        self.tx = "I"
        self.busy = False
        self.ignore_until_sync = False
        self.statements: dict[str, _Prepared] = {}
        self.portals: dict[str, _Portal] = {}
        self.cursors: dict[str, _Cursor] = {}
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.loopback = _is_loopback(peer[0] if isinstance(peer, tuple) else "")

    # -- I/O --

    def send(self, *messages: bytes) -> None:
        for m in messages:
            self.out += m

    async def flush(self) -> None:
        if self.out:
            self.writer.write(bytes(self.out))
            self.out.clear()
        await self.writer.drain()

    async def read_message(self, limit: int = _MAX_MESSAGE) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(5)
        length = struct.unpack_from(">i", header, 1)[0]
        if length < 4 or length > limit:
            raise PgWireError(f"invalid message length {length}", "08P01", fatal=True)
        return header[:1], await self.reader.readexactly(length - 4)

    # -- start-up and authentication --

    async def startup(self) -> bool:
        """Negotiate TLS and read the StartupMessage; False when the connection should just close."""
        while True:
            length = struct.unpack(">i", await self.reader.readexactly(4))[0]
            if length < 8 or length > 10_000:
                raise PgWireError("invalid start-up packet length", "08P01", fatal=True)
            body = await self.reader.readexactly(length - 4)
            code = struct.unpack_from(">i", body)[0]
            if code == _SSL_REQUEST:
                if self.tls or self.server.ssl_context is None:
                    self.writer.write(b"N")
                    continue
                if self.reader._buffer:  # plaintext sent after SSLRequest would pass as encrypted (CVE-2021-23214)
                    raise PgWireError("unencrypted data after SSL request", "08P01", fatal=True)
                self.writer.write(b"S")
                await self.writer.drain()
                await self.writer.start_tls(self.server.ssl_context)
                self.tls = True
                continue
            if code == _GSSENC_REQUEST:
                self.writer.write(b"N")
                continue
            if code == _CANCEL_REQUEST:
                pid, key = struct.unpack_from(">iI", body, 4)
                self.server.cancel(pid, key)
                return False
            if code >> 16 != 3:
                raise PgWireError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}", "0A000", fatal=True)
            items = body[4:].split(b"\0")
            params = {k.decode(): v.decode() for k, v in zip(items[0::2], items[1::2]) if k}
            unknown = [k for k in params if k.startswith("_pq_.")]
            if code & 0xFFFF or unknown:
                payload = struct.pack(">ii", 3 << 16, len(unknown)) + b"".join(_cstr(k) for k in unknown)
                self.send(_msg(b"v", payload))
            await self.login(params)
            return True

    async def login(self, params: dict[str, str]) -> None:
        user = params.get("user", "")
        if not user:
            raise PgWireError("no user name specified in start-up packet", "28000", fatal=True)
        if self.server.require_tls and not self.tls:
            raise PgWireError("connection refused: TLS is required (use sslmode=require)", "28000", fatal=True)
        loop = asyncio.get_running_loop()
        auth = await loop.run_in_executor(self.server.executor, self.server.backend.authenticate, user)
        if not (auth is not None and auth.trusted_local and self.loopback):
            await self.scram(user, auth.scram if auth is not None else None)
        if auth is None:  # unreachable: the mock exchange of an unknown user always fails
            raise _auth_failed(user, "unknown user")
        self.session = Session(user=user, role=auth.role, database=params.get("database") or user,
                               process_id=next(self.server.pids), peer=self.peer, tls=self.tls,
                               secret_key=secrets.randbits(32))
        settings = [(k.lower(), v) for k, v in params.items()
                    if k not in ("user", "database", "options", "replication") and not k.startswith("_pq_.")]
        settings += parse_options(params.get("options", ""))
        for name, value in settings:
            try:
                self.session.settings[name] = _check_setting(name, value)
            except PgWireError as exc:
                raise PgWireError(exc.message, exc.sqlstate, fatal=True) from None
        self.startup_settings = dict(self.session.settings)
        self.send(_msg(b"R", struct.pack(">i", 0)))
        for name in _REPORTED:
            self.send(self._parameter_status(name))
        self.send(_msg(b"K", struct.pack(">iI", self.session.process_id, self.session.secret_key)),
                  _msg(b"Z", self.tx.encode()))
        self.server.sessions[self.session.process_id] = self
        await self.flush()

    async def scram(self, user: str, verifier: ScramVerifier | None) -> None:
        exchange = _ScramExchange(user, verifier, self.server.mock_secret)
        self.send(_msg(b"R", struct.pack(">i", 10) + _cstr("SCRAM-SHA-256") + b"\0"))
        await self.flush()
        body = _Body(await self._auth_message())
        if body.cstr() != "SCRAM-SHA-256":
            raise PgWireError("unsupported SASL mechanism", "28000", fatal=True)
        self.send(_msg(b"R", struct.pack(">i", 11) + exchange.first(body.bytes(body.int32()))))
        await self.flush()
        self.send(_msg(b"R", struct.pack(">i", 12) + exchange.final(await self._auth_message())))

    async def _auth_message(self) -> bytes:
        kind, body = await self.read_message(limit=8192)
        if kind != b"p":
            raise PgWireError("expected a SASL response message", "08P01", fatal=True)
        return body

    def _parameter_status(self, name: str) -> bytes:
        return _msg(b"S", _cstr(_CANONICAL.get(name, name)) + _cstr(self.setting(name) or ""))

    def setting(self, name: str) -> str | None:
        assert self.session is not None
        if name == "session_authorization":
            return self.session.user
        return self.session.settings.get(name, _DEFAULTS.get(name))

    # -- message loop --

    async def serve(self) -> None:
        handlers = {b"Q": self.on_query, b"P": self.on_parse, b"B": self.on_bind, b"D": self.on_describe,
                    b"E": self.on_execute, b"S": self.on_sync, b"H": self.on_flush, b"C": self.on_close}
        while True:
            kind, body = await self.read_message()
            if kind == b"X":
                return
            if self.ignore_until_sync and kind != b"S":
                continue
            handler = handlers.get(kind)
            try:
                if handler is None:
                    raise PgWireError(f"unsupported message type {kind!r}", "0A000")
                await handler(_Body(body))
            except Exception as exc:  # noqa: BLE001 - _refusal re-raises what is not a refusal
                self.fail(self._refusal(exc))
                if kind == b"Q":
                    self.send(_msg(b"Z", self.tx.encode()))
                else:
                    self.ignore_until_sync = True
                await self.flush()

    def _refusal(self, exc: Exception) -> MicrodbError:
        """The error to send for a failed request. A non-microdb exception is a bug (in the
        backend or here): the request is refused with a generic message, details go to the log."""
        if isinstance(exc, MicrodbError):
            return exc
        if isinstance(exc, (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
            raise exc
        log.error("internal error serving %s", self.peer, exc_info=exc)
        return PgWireError("internal error (details are in the server log)", "XX000")

    def fail(self, exc: MicrodbError) -> None:
        if isinstance(exc, PgWireError) and exc.fatal:
            raise exc
        self.send(_error(exc))
        if self.tx == "T":
            self.tx = "E"

    # -- simple query --

    async def on_query(self, body: _Body) -> None:
        sql = body.cstr()
        self.statements.pop("", None)
        self.portals.pop("", None)
        statements = split_sql(sql)
        if not statements:
            self.send(_msg(b"I"))
        for statement in statements:
            try:
                result = await self.run(statement, None)
                if result.table is not None:
                    formats = result.formats or [0] * result.table.num_columns
                    _check_formats(result.table.schema, formats)
                    self.send(_row_description(result.table.schema, formats))
                    await self.send_rows(result.table, formats, 0, result.table.num_rows)
                    self.send(_msg(b"C", _cstr(result.tag.format(n=result.table.num_rows))))
                else:
                    self.send(_msg(b"C", _cstr(result.tag)))
            except Exception as exc:  # noqa: BLE001 - _refusal re-raises what is not a refusal
                self.fail(self._refusal(exc))
                break
        self.send(_msg(b"Z", self.tx.encode()))
        await self.flush()

    async def send_rows(self, table: pa.Table, formats: list[int], start: int, stop: int) -> None:
        for chunk_start in range(start, stop, _ROWS_PER_CHUNK):
            part = table.slice(chunk_start, min(_ROWS_PER_CHUNK, stop - chunk_start))
            if table.num_columns == 0:
                self.send(_msg(b"D", b"\0\0") * part.num_rows)
                continue
            columns = [pgtypes.binary_column(col, pgtypes.pg_type(col.type).oid) if fmt else pgtypes.text_column(col)
                       for col, fmt in zip(part.columns, formats)]
            encoded = pgtypes.datarows(columns)
            self.out += memoryview(encoded)
            if len(self.out) >= _ROWS_PER_CHUNK * 4:
                await self.flush()

    # -- extended query --

    async def on_parse(self, body: _Body) -> None:
        name, sql = body.cstr(), body.cstr()
        oids = [body.int32() for _ in range(body.int16())]
        if name and name in self.statements:
            raise PgWireError(f'prepared statement "{name}" already exists', "42P05")
        statements = split_sql(sql)
        if len(statements) > 1:
            raise PgWireError("cannot insert multiple commands into a prepared statement", "42601")
        self.statements[name] = _Prepared(statements[0] if statements else None, oids)
        self.send(_msg(b"1"))

    async def on_bind(self, body: _Body) -> None:
        portal_name, statement_name = body.cstr(), body.cstr()
        param_formats = [body.int16() for _ in range(body.int16())]
        values = []
        for _ in range(body.int16()):
            n = body.int32()
            values.append(None if n == -1 else body.bytes(n))
        result_formats = [body.int16() for _ in range(body.int16())]
        prepared = self._prepared(statement_name)
        oids = self._param_oids(prepared)
        if len(values) != len(oids):
            raise PgWireError(f'bind message supplies {len(values)} parameters, but prepared statement '
                              f'"{statement_name}" requires {len(oids)}', "08P01")
        if portal_name and portal_name in self.portals:
            raise PgWireError(f'portal "{portal_name}" already exists', "42P03")
        fmts = _formats(param_formats, len(values))
        timezone = self.setting("timezone") or "UTC"
        params = [pgtypes.decode_param(v, oid, f, timezone) for v, oid, f in zip(values, oids, fmts)]
        self.portals[portal_name] = _Portal(prepared, params or None, result_formats)
        self.send(_msg(b"2"))

    async def on_describe(self, body: _Body) -> None:
        kind, name = body.bytes(1), body.cstr()
        if kind == b"S":
            prepared = self._prepared(name)
            oids = [oid or pgtypes.TEXT for oid in self._param_oids(prepared)]
            schema = await self.describe_statement(prepared.statement)
            self.send(_msg(b"t", struct.pack(f">h{len(oids)}i", len(oids), *oids)))
            self.send(_row_description(schema, [0] * len(schema)) if schema is not None else _msg(b"n"))
            return
        if name not in self.portals and name in self.cursors:
            cursor = self.cursors[name]
            self.send(_row_description(cursor.table.schema, [int(cursor.binary)] * cursor.table.num_columns))
            return
        portal = self._portal(name)
        if portal.result is None:
            portal.result = await self.run_prepared(portal)
        table = portal.result.table
        if table is None:
            self.send(_msg(b"n"))
            return
        formats = _formats(portal.formats, table.num_columns)
        _check_formats(table.schema, formats)
        self.send(_row_description(table.schema, formats))

    async def on_execute(self, body: _Body) -> None:
        portal = self._portal(body.cstr())
        max_rows = body.int32()
        if portal.result is None:
            portal.result = await self.run_prepared(portal)
        result = portal.result
        if result.empty:
            self.send(_msg(b"I"))
        elif result.table is None:
            self.send(_msg(b"C", _cstr(result.tag)))
        else:
            table = result.table
            formats = _formats(portal.formats, table.num_columns)
            _check_formats(table.schema, formats)
            stop = table.num_rows if max_rows <= 0 else min(table.num_rows, portal.pos + max_rows)
            await self.send_rows(table, formats, portal.pos, stop)
            sent, portal.pos = stop - portal.pos, stop
            if max_rows > 0 and stop < table.num_rows:
                self.send(_msg(b"s"))
            else:
                self.send(_msg(b"C", _cstr(result.tag.format(n=sent))))
        if len(self.out) > 65_536:
            await self.flush()

    async def on_sync(self, body: _Body) -> None:
        self.ignore_until_sync = False
        if self.tx == "I":
            self.portals.clear()
        self.send(_msg(b"Z", self.tx.encode()))
        await self.flush()

    async def on_flush(self, body: _Body) -> None:
        await self.flush()

    async def on_close(self, body: _Body) -> None:
        kind, name = body.bytes(1), body.cstr()
        (self.statements if kind == b"S" else self.portals).pop(name, None)
        self.send(_msg(b"3"))

    def _prepared(self, name: str) -> _Prepared:
        if name not in self.statements:
            raise PgWireError(f'prepared statement "{name}" does not exist', "26000")
        return self.statements[name]

    def _portal(self, name: str) -> _Portal:
        if name not in self.portals:
            raise PgWireError(f'portal "{name}" does not exist', "34000")
        return self.portals[name]

    @staticmethod
    def _param_oids(prepared: _Prepared) -> list[int]:
        count = max(len(prepared.param_oids), prepared.statement.nparams if prepared.statement else 0)
        return prepared.param_oids + [0] * (count - len(prepared.param_oids))

    async def run_prepared(self, portal: _Portal) -> _Result:
        if portal.prepared.statement is None:
            return _Result(empty=True)
        return await self.run(portal.prepared.statement, portal.params)

    # -- statements --

    async def run(self, statement: Statement, params: list[object] | None) -> _Result:
        """Answer one statement: session commands and probes here, the rest by the backend."""
        first = statement.word(0)
        if self.tx == "E" and first not in ("COMMIT", "END", "ROLLBACK", "ABORT"):
            raise PgWireError("current transaction is aborted, commands ignored until end of transaction block",
                              "25P02")
        command = self.commands.get(first)
        if command is not None:
            return await command(self, statement, params)
        probe = self.probe(statement, params)
        if probe is not None:
            return _Result(probe, "SELECT {n}")
        return _Result(await self.query(statement.text, params, _mentions_catalog(statement)), "SELECT {n}")

    async def query(self, sql: str, params: list[object] | None, catalog: bool) -> pa.Table:
        backend = self.server.backend
        if catalog:
            hook = getattr(backend, "catalog", None)
            table = await self.call(hook, self.session, sql) if hook is not None else None
            if table is None:
                raise PgWireError(f"catalog query not supported: {_shorten(sql)}", "0A000")
        else:
            table = await self.call(backend.execute, self.session, sql, params)
        if self.session is not None and self.session.notices:
            self.send(*(_notice(note) for note in self.session.notices))
            self.session.notices.clear()
        if not isinstance(table, pa.Table):
            raise PgWireError(f"backend returned {type(table).__name__}, not a pyarrow.Table", "XX000")
        return table

    async def call(self, fn: Callable[..., object], *args: object) -> object:
        """Run a backend call in the thread pool; a cancel during it turns any result into 57014."""
        assert self.session is not None
        self.session.cancel_event.clear()
        self.busy = True
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self.server.executor, functools.partial(fn, *args))
        except MicrodbError:
            if self.session.cancel_event.is_set():
                raise PgWireError("canceling statement due to user request", "57014") from None
            raise
        finally:
            self.busy = False
        if self.session.cancel_event.is_set():
            raise PgWireError("canceling statement due to user request", "57014")
        return result

    async def describe_statement(self, statement: Statement | None) -> pa.Schema | None:
        """The row shape of a prepared statement before its parameters are bound."""
        if statement is None:
            return None
        first = statement.word(0)
        if first == "SHOW":
            return (await self.cmd_show(statement, None)).table.schema
        if first == "FETCH":
            return self._fetch_target(statement)[0].table.schema
        if first in self.commands:
            return None
        probe = self.probe(statement, [None] * statement.nparams)
        if probe is not None:
            return probe.schema
        describe = getattr(self.server.backend, "describe", None)
        if describe is not None and not _mentions_catalog(statement):
            schema = await self.call(describe, self.session, statement.text)
            if schema is not None:
                return schema
        # no describe hook: run it with every parameter NULL (read-only SELECTs, so harmless)
        params = [None] * statement.nparams or None
        return (await self.query(statement.text, params, _mentions_catalog(statement))).schema

    # -- session commands (never sent to the backend) --

    async def cmd_set(self, statement: Statement, params: list[object] | None) -> _Result:
        tokens, i = statement.tokens, 1
        while statement.word(i) in ("SESSION", "LOCAL"):
            i += 1
        if statement.word(i) in ("TRANSACTION", "CHARACTERISTICS"):
            return _Result(tag="SET")
        if statement.word(i) == "TIME" and statement.word(i + 1) == "ZONE":
            name, i = "timezone", i + 2
        elif statement.word(i) in ("ROLE", "AUTHORIZATION"):
            raise PgWireError("the role comes from the login user and cannot be changed", "42501")
        else:
            name, i = _setting_name(tokens, i)
            if i < len(tokens) and (tokens[i].text == "=" or tokens[i].upper == "TO"):
                i += 1
            else:
                raise PgWireError(f"syntax error in SET: expected = or TO after {name}", "42601")
        if i >= len(tokens):
            raise PgWireError(f"syntax error in SET: no value for {name}", "42601")
        if statement.word(i) == "DEFAULT" and i + 1 == len(tokens):
            self._reset(name)
            return _Result(tag="SET")
        value = _setting_value(tokens[i:], params)
        self.session.settings[name] = _check_setting(name, value)
        if name in _REPORTED:
            self.send(self._parameter_status(name))
        return _Result(tag="SET")

    async def cmd_reset(self, statement: Statement, params: list[object] | None) -> _Result:
        if statement.word(1) == "ALL":
            for name in set(self.session.settings) | set(self.startup_settings):
                self._reset(name)
        else:
            self._reset(_setting_name(statement.tokens, 1)[0])
        return _Result(tag="RESET")

    def _reset(self, name: str) -> None:
        if name in self.startup_settings:
            self.session.settings[name] = self.startup_settings[name]
        else:
            self.session.settings.pop(name, None)
        if name in _REPORTED:
            self.send(self._parameter_status(name))

    async def cmd_show(self, statement: Statement, params: list[object] | None) -> _Result:
        if statement.word(1) == "ALL":
            names = sorted(set(_DEFAULTS) | set(self.session.settings) | {"session_authorization"})
            table = pa.table({"name": [_CANONICAL.get(n, n) for n in names],
                              "setting": [self.setting(n) for n in names],
                              "description": [""] * len(names)})
            return _Result(table, "SHOW")
        if statement.word(1) == "TIME" and statement.word(2) == "ZONE":
            name = "timezone"
        else:
            name = _setting_name(statement.tokens, 1)[0]
        value = self.setting(name)
        if value is None:
            raise PgWireError(f'unrecognized configuration parameter "{name}"', "42704")
        return _Result(pa.table({_CANONICAL.get(name, name): pa.array([value], pa.string())}), "SHOW")

    async def cmd_begin(self, statement: Statement, params: list[object] | None) -> _Result:
        if self.tx == "I":
            self.tx = "T"
        return _Result(tag="BEGIN" if statement.word(0) != "START" else "START TRANSACTION")

    async def cmd_commit(self, statement: Statement, params: list[object] | None) -> _Result:
        if statement.word(0) == "ROLLBACK" and statement.word(1) == "TO":
            self.tx = "T" if self.tx == "E" else self.tx
            return _Result(tag="ROLLBACK")
        failed, self.tx = self.tx == "E", "I"
        self.cursors = {name: c for name, c in self.cursors.items() if c.hold}
        rollback = failed or statement.word(0) in ("ROLLBACK", "ABORT")
        return _Result(tag="ROLLBACK" if rollback else "COMMIT")

    async def cmd_savepoint(self, statement: Statement, params: list[object] | None) -> _Result:
        return _Result(tag=statement.word(0))

    async def cmd_discard(self, statement: Statement, params: list[object] | None) -> _Result:
        what = statement.word(1)
        if what == "ALL":
            if self.tx != "I":
                raise PgWireError("DISCARD ALL cannot run inside a transaction block", "25001")
            for name in set(self.session.settings) | set(self.startup_settings):
                self._reset(name)
            self.statements = {k: v for k, v in self.statements.items() if k == ""}
            self.cursors.clear()
        elif what in ("PLANS", "SEQUENCES", "TEMP", "TEMPORARY"):
            pass
        else:
            raise PgWireError(f"syntax error in DISCARD: {statement.text}", "42601")
        return _Result(tag=f"DISCARD {what}")

    async def cmd_deallocate(self, statement: Statement, params: list[object] | None) -> _Result:
        i = 2 if statement.word(1) == "PREPARE" else 1
        if statement.word(i) == "ALL":
            self.statements = {k: v for k, v in self.statements.items() if k == ""}
            return _Result(tag="DEALLOCATE ALL")
        name = statement.tokens[i].value if i < len(statement.tokens) else ""
        if name not in self.statements:
            raise PgWireError(f'prepared statement "{name}" does not exist', "26000")
        del self.statements[name]
        return _Result(tag="DEALLOCATE")

    async def cmd_declare(self, statement: Statement, params: list[object] | None) -> _Result:
        tokens = statement.tokens
        words = [t.upper for t in tokens]
        if len(tokens) < 2 or "CURSOR" not in words or "FOR" not in words[words.index("CURSOR"):]:
            raise PgWireError("syntax error in DECLARE: expected DECLARE name ... CURSOR ... FOR query", "42601")
        name, cursor_index = tokens[1].value, words.index("CURSOR")
        for_index = words.index("FOR", cursor_index)
        options, hold = words[2:cursor_index], words[cursor_index + 1:for_index] == ["WITH", "HOLD"]
        if not hold and self.tx == "I":
            raise PgWireError("DECLARE CURSOR can only be used in transaction blocks", "25P01")
        if name in self.cursors:
            raise PgWireError(f'cursor "{name}" already exists', "42P03")
        if for_index + 1 >= len(tokens):
            raise PgWireError("DECLARE CURSOR needs a query after FOR", "42601")
        inner_sql = statement.text[tokens[for_index + 1].start:]
        inner = split_sql(inner_sql)[0]
        probe = self.probe(inner, params)
        table = probe if probe is not None else await self.query(inner_sql, params, _mentions_catalog(inner))
        self.cursors[name] = _Cursor(table, hold=hold, binary="BINARY" in options)
        return _Result(tag="DECLARE CURSOR")

    async def cmd_fetch(self, statement: Statement, params: list[object] | None) -> _Result:
        cursor, first, end, new_pos = self._fetch_target(statement)
        cursor.pos = new_pos
        if statement.word(0) == "MOVE":
            return _Result(tag=f"MOVE {abs(end - first) if end != first else abs(new_pos - first)}")
        table = cursor.table.slice(first, end - first)
        return _Result(table, "FETCH {n}", formats=[int(cursor.binary)] * table.num_columns)

    def _fetch_target(self, statement: Statement) -> tuple[_Cursor, int, int, int]:
        """(cursor, first row, end row, new position) of a FETCH or MOVE.

        The position counts the rows already passed (0 = before the first row), so
        ``MOVE ABSOLUTE n`` leaves the next FETCH at row n + 1, as in PostgreSQL.
        """
        tokens = list(statement.tokens[1:])
        if len(tokens) >= 2 and tokens[-2].upper in ("FROM", "IN"):
            del tokens[-2]
        if not tokens:
            raise PgWireError(f"syntax error in {statement.word(0)}: no cursor name", "42601")
        cursor = self._cursor(tokens[-1].value)
        size, pos = cursor.table.num_rows, cursor.pos
        words = [t.upper or t.text for t in tokens[:-1]]
        mode = words.pop(0) if words and words[0] in ("FORWARD", "NEXT", "RELATIVE", "ABSOLUTE") else "FORWARD"
        text = "".join(words)
        if text == "ALL":
            count = size
        else:
            try:
                count = 1 if text == "" else int(text)
            except ValueError:
                raise PgWireError(f"unsupported {statement.word(0)} direction: {' '.join(words)}", "0A000") from None
        if mode == "ABSOLUTE":
            new = min(max(count, 0), size)
            return cursor, new - 1 if 1 <= count <= size else new, new, new
        if count < 0:
            if statement.word(0) != "MOVE":
                raise PgWireError("backward FETCH is not supported", "0A000")
            new = max(pos + count, 0)
            return cursor, pos, pos, new
        end = min(pos + count, size)
        return cursor, pos, end, end

    async def cmd_close(self, statement: Statement, params: list[object] | None) -> _Result:
        if statement.word(1) == "ALL":
            self.cursors.clear()
            return _Result(tag="CLOSE CURSOR ALL")
        name = statement.tokens[1].value if len(statement.tokens) > 1 else ""
        self._cursor(name)
        del self.cursors[name]
        return _Result(tag="CLOSE CURSOR")

    def _cursor(self, name: str) -> _Cursor:
        if name not in self.cursors:
            raise PgWireError(f'cursor "{name}" does not exist', "34000")
        return self.cursors[name]

    commands = {
        "SET": cmd_set, "RESET": cmd_reset, "SHOW": cmd_show, "BEGIN": cmd_begin, "START": cmd_begin,
        "COMMIT": cmd_commit, "END": cmd_commit, "ROLLBACK": cmd_commit, "ABORT": cmd_commit,
        "SAVEPOINT": cmd_savepoint, "RELEASE": cmd_savepoint, "DISCARD": cmd_discard,
        "DEALLOCATE": cmd_deallocate, "DECLARE": cmd_declare, "FETCH": cmd_fetch, "MOVE": cmd_fetch,
        "CLOSE": cmd_close,
    }

    # -- start-up probes: SELECT version(), current_setting('x'), current_user, ... --

    def probe(self, statement: Statement, params: list[object] | None) -> pa.Table | None:
        """Answer a SELECT made only of session functions (no FROM), or None."""
        tokens = statement.tokens
        if statement.word(0) != "SELECT" or len(tokens) < 2:
            return None
        items, depth, current = [], 0, []
        for t in tokens[1:]:
            depth += (t.text == "(") - (t.text == ")")
            if t.text == "," and depth == 0:
                items.append(current)
                current = []
            else:
                current.append(t)
        items.append(current)
        columns = {}
        for item in items:
            answer = self._probe_item(item, params)
            if answer is None:
                return None
            columns[answer[0]] = answer[1]
        return pa.table(columns) if len(columns) == len(items) else None

    def _probe_item(self, item: list[Token], params: list[object] | None) -> tuple[str, pa.Array] | None:
        i = 2 if len(item) > 2 and item[0].value == "pg_catalog" and item[1].text == "." else 0
        if i >= len(item) or item[i].kind != "word":
            return None
        func, i = item[i].value, i + 1
        args: list[Token] = []
        if i < len(item) and item[i].text == "(":
            close = next((j for j in range(i, len(item)) if item[j].text == ")"), None)
            if close is None:
                return None
            args, i = [t for t in item[i + 1:close] if t.text != ","], close + 1
        elif func not in _BARE_PROBES:
            return None
        if i < len(item) and item[i].upper == "AS":
            i += 1
        alias = item[i].value if i == len(item) - 1 and item[i].kind in ("word", "quoted") else None
        if i != len(item) - (alias is not None):
            return None
        value = self._probe_value(func, args, params)
        if value is None:
            return None
        return alias or func, value

    def _probe_value(self, func: str, args: list[Token], params: list[object] | None) -> pa.Array | None:
        session = self.session
        texts = [_argument(t, params) for t in args]
        if func == "current_setting" and 1 <= len(args) <= 2 and texts[0] is not None:
            missing_ok = len(args) > 1 and args[1].upper == "TRUE"
            name = texts[0].lower()
            value = self.setting(name)
            if value is None and not missing_ok:
                raise PgWireError(f'unrecognized configuration parameter "{name}"', "42704")
            return pa.array([value], pa.string())
        if func == "set_config" and len(args) == 3 and None not in texts[:2]:
            name = texts[0].lower()
            session.settings[name] = _check_setting(name, texts[1])
            if name in _REPORTED:
                self.send(self._parameter_status(name))
            return pa.array([session.settings[name]], pa.string())
        if args:
            return None
        simple = {"version": f"PostgreSQL {SERVER_VERSION}", "current_database": session.database,
                  "current_catalog": session.database, "current_schema": "main", "current_user": session.user,
                  "session_user": session.user, "user": session.user, "current_role": session.user}
        if func in simple:
            return pa.array([simple[func]], pa.string())
        if func == "pg_backend_pid":
            return pa.array([session.process_id], pa.int32())
        return None

    def cancel(self) -> None:
        """Interrupt the running query (CancelRequest); idle sessions ignore it."""
        if not self.busy or self.session is None:
            return
        self.session.cancel_event.set()
        hook = getattr(self.server.backend, "cancel", None)
        if hook is not None:
            try:
                hook(self.session)
            except MicrodbError as exc:
                log.warning("backend cancel failed for pid %s: %s", self.session.process_id, exc.message)


def _argument(token: Token, params: list[object] | None) -> str | None:
    """A probe function's text argument: a string literal or a bound parameter."""
    if token.kind in ("string", "estring", "dollar"):
        return token.value
    if token.kind == "param" and params is not None and int(token.text[1:]) <= len(params):
        value = params[int(token.text[1:]) - 1]
        return None if value is None else str(value)
    return None


_BARE_PROBES = {"current_user", "session_user", "user", "current_catalog", "current_role", "current_schema"}


def _mentions_catalog(statement: Statement) -> bool:
    for i, t in enumerate(statement.tokens):
        if t.kind == "word" and (t.value in ("pg_catalog", "information_schema") or t.value.startswith("pg_")):
            return True
        if t.text == "::" and i + 1 < len(statement.tokens) and statement.tokens[i + 1].value.startswith("reg"):
            return True
    return False


def _setting_name(tokens: tuple[Token, ...], i: int) -> tuple[str, int]:
    parts = []
    while i < len(tokens) and tokens[i].kind in ("word", "quoted"):
        parts.append(tokens[i].value.lower())
        if i + 1 < len(tokens) and tokens[i + 1].text == ".":
            i += 2
        else:
            i += 1
            break
    if not parts:
        raise PgWireError("syntax error: expected a setting name", "42601")
    return ".".join(parts), i


def _setting_value(tokens: tuple[Token, ...], params: list[object] | None) -> str:
    values, sign = [], ""
    for t in tokens:
        if t.text == ",":
            continue
        if t.text in ("-", "+"):
            sign = t.text
            continue
        if t.kind == "param":
            index = int(t.text[1:]) - 1
            if params is None or index >= len(params):
                raise PgWireError(f"no value bound for {t.text}", "08P01")
            values.append(str(params[index]))
        elif t.kind in ("string", "estring", "dollar", "quoted", "word", "number"):
            values.append(sign + t.value if t.kind != "word" else sign + t.text)
        else:
            raise PgWireError(f"syntax error in SET value near {t.text!r}", "42601")
        sign = ""
    return ", ".join(values)


def _check_formats(schema: pa.Schema, formats: list[int]) -> None:
    for fld, fmt in zip(schema, formats):
        if fmt not in (0, 1):
            raise PgWireError(f"unsupported result format code {fmt}", "08P01")
        if fmt == 1 and pgtypes.pg_type(fld.type).oid not in pgtypes.BINARY_OIDS:
            raise PgWireError(f"binary result format is not supported for column {fld.name!r} "
                              f"({fld.type}); request text format", "0A000")


def _shorten(sql: str, limit: int = 200) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


# --- the server -------------------------------------------------------------------------


class PgServer:
    """A PostgreSQL-protocol server over a :class:`Backend`.

    ``port=0`` picks a free port (read ``.port`` after start). With ``ssl_context`` the
    server accepts TLS (SSLRequest); ``require_tls`` refuses clients that do not use it.
    """

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 6543,
                 ssl_context: ssl.SSLContext | None = None, require_tls: bool = False,
                 max_workers: int = 32, grace_seconds: float = 10.0, auth_timeout: float = 60.0) -> None:
        if require_tls and ssl_context is None:
            raise ConfigError("require_tls needs an ssl_context (certificate and key) to be configured")
        self.backend, self.host, self.ssl_context, self.require_tls = backend, host, ssl_context, require_tls
        self.grace_seconds, self.auth_timeout = grace_seconds, auth_timeout
        self._requested_port = port
        self._max_workers = max_workers
        self._server: asyncio.Server | None = None
        self._connections: dict[_Connection, asyncio.Task] = {}
        self._stopped: asyncio.Event | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.sessions: dict[int, _Connection] = {}
        self.pids = itertools.count(secrets.randbelow(1 << 20) + 1000)
        self.mock_secret = os.urandom(32)

    @property
    def port(self) -> int:
        """The port the server listens on (the chosen one when started with port 0)."""
        if self._server is None:
            return self._requested_port
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Start listening."""
        self.executor = concurrent.futures.ThreadPoolExecutor(self._max_workers, thread_name_prefix="microdb-pgwire")
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, self.host, self._requested_port)

    async def serve_forever(self) -> None:
        """Start if needed and wait until :meth:`stop` completes."""
        if self._server is None:
            await self.start()
        await self._stopped.wait()

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Stop accepting, let running queries finish (up to the grace period), then close."""
        if self._server is None:
            return
        self._server.close()
        deadline = time.monotonic() + (self.grace_seconds if grace_seconds is None else grace_seconds)
        while any(c.busy for c in self._connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn, task in list(self._connections.items()):
            conn.cancel()
            if not conn.busy:
                conn.writer.write(_error(PgWireError("terminating connection due to administrator command",
                                                     "57P01"), "FATAL"))
            task.cancel()
        await asyncio.gather(*self._connections.values(), return_exceptions=True)
        await self._server.wait_closed()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._server = None
        self._stopped.set()

    def cancel(self, pid: int, key: int) -> None:
        """Handle a CancelRequest: interrupt the session whose process id and secret key match."""
        conn = self.sessions.get(pid)
        if conn is not None and conn.session is not None and hmac.compare_digest(
                struct.pack(">I", conn.session.secret_key), struct.pack(">I", key)):
            conn.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self._connections[conn] = asyncio.current_task()
        try:
            if await asyncio.wait_for(conn.startup(), self.auth_timeout):
                await conn.serve()
        except MicrodbError as exc:  # refusals at start-up (bad password, TLS required) end the connection
            conn.send(_error(exc, "FATAL"))
            await _quietly(conn.flush())
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError, TimeoutError):
            pass
        except Exception:  # never let one connection's bug reach the loop or other clients
            log.exception("internal error on connection from %s", conn.peer)
            conn.send(_error(PgWireError("internal error (details are in the server log)"), "FATAL"))
            await _quietly(conn.flush())
        finally:
            self._connections.pop(conn, None)
            if conn.session is not None:
                self.sessions.pop(conn.session.process_id, None)
            writer.close()

    def serve_in_thread(self) -> ServerThread:
        """Run the server on its own event loop in a daemon thread (tests, CLI)."""
        return ServerThread(self)


async def _quietly(awaitable: object) -> None:
    try:
        await awaitable
    except (ConnectionError, ssl.SSLError):
        pass


class ServerThread:
    """A :class:`PgServer` running in a background thread; ``stop()`` shuts it down."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        started = concurrent.futures.Future()
        self.thread = threading.Thread(target=self._run, args=(started,), name="microdb-pgwire", daemon=True)
        self.thread.start()
        started.result()

    def _run(self, started: concurrent.futures.Future) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except OSError as exc:
            started.set_exception(ConfigError(f"cannot listen on {self.server.host}:{self.server.port}: {exc}"))
            self.loop.close()
            return
        started.set_result(None)
        self.loop.run_forever()
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop the server gracefully and end its thread."""
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(grace_seconds), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
