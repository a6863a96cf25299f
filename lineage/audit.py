"""Append-only, hash-chained, HMAC-signed audit log (JSON lines, rotated by size).

Each record is one canonical JSON line (sorted keys, no spaces, UTF-8) holding a
sequence number that runs across the whole chain, the UTC time, the event fields,
``prev`` (SHA-256 of the previous record's line, without its newline; 64 zeros for the
first) and ``hmac`` (HMAC-SHA256 under the audit key over the record without ``hmac``).
Editing, deleting, inserting or reordering records, or dropping a rotated file, breaks
the chain or a signature, and :meth:`AuditLog.verify` names the first broken record.

Writers in many threads and processes share one log: every append runs under an
exclusive ``flock`` on ``audit.lock`` and reads only the tail of the current file.
If a record cannot be written the append raises :class:`~microdb.errors.AuditError`,
so the audited action fails closed.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import hmac
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from microdb.errors import AuditError

CURRENT_FILE = "audit.jsonl"
LOCK_FILE = "audit.lock"
GENESIS = "0" * 64
OUTCOMES = frozenset({"ok", "refused", "error"})
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MIN_KEY_BYTES = 16
_ROTATED = re.compile(r"^audit-(\d{12})\.jsonl$")
_CHAIN_FIELDS = ("seq", "time", "prev", "hmac")


@dataclass(frozen=True)
class AuditEvent:
    """One audited action; the log adds ``seq``, ``time``, ``prev`` and ``hmac`` on append.

    ``action`` names what happened (``sync``, ``query``, ``export``, ``detokenize``,
    ``forget``, ``synth.fit``, ``bundle.retire``, ``key.rotate``, ``pii.scan`` …),
    ``outcome`` is ``ok``, ``refused`` or ``error``. ``sql_hash`` defaults to the SHA-256
    of ``sql`` when only the SQL text is given.
    """

    action: str
    outcome: str
    actor: str
    role: str | None = None
    entity: str | None = None
    bundle: str | None = None
    sql_hash: str | None = None
    sql: str | None = None
    rows: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.action, str) or not self.action:
            raise AuditError(f"audit event: action must be a non-empty string, got {self.action!r}")
        if self.outcome not in OUTCOMES:
            raise AuditError(
                f"audit event {self.action}: outcome must be one of {sorted(OUTCOMES)}, got {self.outcome!r}"
            )
        if not isinstance(self.actor, str) or not self.actor:
            raise AuditError(f"audit event {self.action}: actor must be a non-empty string, got {self.actor!r}")
        if self.rows is not None and (isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 0):
            raise AuditError(f"audit event {self.action}: rows must be a non-negative int, got {self.rows!r}")
        if not isinstance(self.details, dict):
            raise AuditError(f"audit event {self.action}: details must be a dict, got {type(self.details).__name__}")
        if self.sql is not None and self.sql_hash is None:
            object.__setattr__(self, "sql_hash", hashlib.sha256(self.sql.encode("utf-8")).hexdigest())

    def to_dict(self) -> dict[str, Any]:
        """The event's fields as a plain dict (the part of a record the caller chose)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))
_RECORD_FIELDS = frozenset(_EVENT_FIELDS + _CHAIN_FIELDS)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`.

    ``records`` counts the records verified intact (all of them when ``ok``); when the
    chain is broken, ``first_bad`` is the sequence number expected at the broken place
    (every record with a smaller ``seq`` is intact) and ``file``/``line`` locate it.
    """

    ok: bool
    records: int
    files: int
    first_bad: int | None = None
    file: str | None = None
    line: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class _Tail:
    """Where the chain ends: last seq and line hash, plus the current file's identity."""

    seq: int
    digest: str
    inode: int | None
    size: int


def os_actor() -> str:
    """The operating-system user running this process, for CLI-initiated actions."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, no NaN: the bytes that are hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class AuditLog:
    """The audit log in ``directory``: ``audit.jsonl`` plus rotated ``audit-<firstseq>.jsonl`` files.

    ``key`` signs every record (derive it from the master key for purpose ``"audit"``).
    ``fsync`` makes each append durable before it returns (≈ 0.2 ms here); turn it off
    only where losing the last records on power failure is acceptable.
    """

    def __init__(
        self, directory: Path, key: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, fsync: bool = True
    ) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise AuditError(f"audit log {directory}: key must be at least {MIN_KEY_BYTES} bytes")
        if max_bytes <= 0:
            raise AuditError(f"audit log {directory}: max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._key = key
        self._thread_lock = threading.Lock()
        self._tail: _Tail | None = None
        self._current = str(self.directory / CURRENT_FILE)
        self._lock_path = str(self.directory / LOCK_FILE)
        self._fds: dict[str, tuple[int, int]] = {}  # path -> (pid, fd): kept open, never shared with a child
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AuditError(f"audit log {self.directory}: cannot create directory: {e}") from e

    @property
    def current_path(self) -> Path:
        return self.directory / CURRENT_FILE

    # ---------------------------------------------------------------- writing

    def append(self, event: AuditEvent) -> dict[str, Any]:
        """Write one record and return it as written; raises AuditError if it cannot be."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[AuditEvent]) -> list[dict[str, Any]]:
        """Write several records contiguously in the chain, under one lock, in one write per file.

        Nothing is written if an event is invalid. If the batch spans a rotation and a later
        write fails, the records before the rotation stay (they are valid, chained records).
        """
        events = list(events)
        bodies = [self._event_body(e, check=len(events) > 1) for e in events]
        if not bodies:
            return []
        with self._locked():
            try:
                return self._write(bodies, self._load_tail())
            except OSError as e:
                self._tail = None
                raise AuditError(f"audit log {self.current_path}: cannot append: {e}") from e

    def _event_body(self, event: AuditEvent, check: bool = True) -> dict[str, Any]:
        """The event as a dict; ``check``: fail now on details that cannot be JSON (a batch
        must be all valid before any of it is written; a single event fails in ``_seal``)."""
        if not isinstance(event, AuditEvent):
            raise AuditError(f"audit log: expected an AuditEvent, got {type(event).__name__}")
        body = event.to_dict()
        if check:
            try:
                canonical_json(body["details"])
            except (TypeError, ValueError) as e:
                raise AuditError(f"audit event {event.action}: details are not JSON-serializable: {e}") from e
        return body

    def _seal(self, body: dict[str, Any], seq: int, prev: str) -> tuple[dict[str, Any], bytes]:
        record = dict(body, seq=seq, time=_utc_now(), prev=prev)
        try:
            unsigned = canonical_json(record)
        except (TypeError, ValueError) as e:
            raise AuditError(f"audit event {body.get('action')}: details are not JSON-serializable: {e}") from e
        record["hmac"] = hmac.new(self._key, unsigned, hashlib.sha256).hexdigest()
        return record, canonical_json(record)

    def _fd(self, path: str, flags: int) -> int:
        """An open descriptor of ``path`` kept for this process (reopened after a fork)."""
        pid = os.getpid()
        held = self._fds.get(path)
        if held is not None and held[0] == pid:
            return held[1]
        fd = os.open(path, flags, 0o600)
        self._fds[path] = (pid, fd)
        return fd

    def _drop_fd(self, path: str) -> None:
        held = self._fds.pop(path, None)
        if held is not None and held[0] == os.getpid():
            os.close(held[1])

    def close(self) -> None:
        """Close the descriptors this log keeps open (it reopens them if used again)."""
        with self._thread_lock:
            for path in list(self._fds):
                self._drop_fd(path)

    def _write(self, bodies: list[dict[str, Any]], tail: _Tail) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        fd = self._fd(self._current, flags)
        st = os.fstat(fd)
        if st.st_nlink == 0 or tail.inode is None or st.st_ino != tail.inode:  # rotated by another process
            self._drop_fd(self._current)
            fd = self._fd(self._current, flags)
            st = os.fstat(fd)
        try:
            size = st.st_size
            pending: list[bytes] = []
            pending_bytes = 0
            seq, digest = tail.seq, tail.digest
            for body in bodies:
                record, line = self._seal(body, seq + 1, digest)
                data = line + b"\n"
                if size + pending_bytes > 0 and size + pending_bytes + len(data) > self.max_bytes:
                    size = self._write_all(fd, pending, size)
                    pending, pending_bytes = [], 0
                    self._drop_fd(self._current)
                    fd = -1
                    self._rotate()
                    fd = self._fd(self._current, flags)
                    size = os.fstat(fd).st_size
                pending.append(data)
                pending_bytes += len(data)
                records.append(record)
                seq, digest = seq + 1, hashlib.sha256(line).hexdigest()
            size = self._write_all(fd, pending, size)
            self._tail = _Tail(seq, digest, os.fstat(fd).st_ino, size)
        except BaseException:
            self._drop_fd(self._current)
            raise
        return records

    def _write_all(self, fd: int, chunks: list[bytes], size: int) -> int:
        """Write ``chunks`` at the end of ``fd``; on any failure cut the file back to ``size``."""
        if not chunks:
            return size
        data = b"".join(chunks)
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fdatasync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
        return size + len(data)

    def _rotate(self) -> None:
        """Rename the full current file to ``audit-<firstseq>.jsonl`` (called under the lock)."""
        first = _parse_line(_first_line(self.current_path), self.current_path)
        target = self.directory / f"audit-{int(first['seq']):012d}.jsonl"
        if target.exists():
            raise AuditError(f"audit log {self.directory}: cannot rotate, {target.name} already exists")
        os.rename(self.current_path, target)
        if self.fsync:
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across threads (``threading.Lock``) and processes (``flock``, opened per use
        so a forked child never shares the parent's lock)."""
        with self._thread_lock:
            try:
                fd = self._fd(self._lock_path, os.O_RDWR | os.O_CREAT)
            except OSError as e:
                raise AuditError(f"audit log {self.directory}: cannot open lock file: {e}") from e
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _load_tail(self) -> _Tail:
        """The chain's end: cached if the current file is as this process left it, else read
        from the last line of the current file (or of the newest rotated file)."""
        try:
            st = os.stat(self._current)
        except FileNotFoundError:
            st = None
        cached = self._tail
        if st is not None and cached is not None and cached.inode == st.st_ino and cached.size == st.st_size:
            return cached
        source = self.current_path if st is not None and st.st_size > 0 else None
        if source is None:
            rotated = self._rotated_files()
            source = rotated[-1][1] if rotated else None
        if source is None:
            return _Tail(0, GENESIS, st.st_ino if st else None, 0)
        line = _last_line(source)
        record = _parse_line(line, source)
        expected = self._mac(record)
        if not hmac.compare_digest(str(record.get("hmac")), expected):
            raise AuditError(f"audit log {source}: last record fails its HMAC; run `microdb audit verify`")
        return _Tail(int(record["seq"]), hashlib.sha256(line).hexdigest(), st.st_ino if st else None,
                     st.st_size if st else 0)

    def _mac(self, record: dict[str, Any]) -> str:
        unsigned = {k: v for k, v in record.items() if k != "hmac"}
        return hmac.new(self._key, canonical_json(unsigned), hashlib.sha256).hexdigest()

    def _rotated_files(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.directory.iterdir():
            m = _ROTATED.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def files(self) -> list[Path]:
        """Every file of the chain in order: rotated files by first seq, then the current file."""
        paths = [p for _, p in self._rotated_files()]
        if self.current_path.exists():
            paths.append(self.current_path)
        return paths

    # ---------------------------------------------------------------- verifying

    def verify(self) -> VerifyResult:
        """Check JSON, seq continuity, the prev-hash chain and every HMAC; report the first break.

        Runs on a snapshot taken under the lock (open handles to every file and the current
        file's size), so writers are blocked only for that instant.
        """
        with self._locked():
            snapshot = [(p, open(p, "rb")) for p in self.files()]  # noqa: SIM115 - closed below
            limit = snapshot[-1][1].seek(0, os.SEEK_END) if snapshot and snapshot[-1][0] == self.current_path else None
        try:
            return self._verify(snapshot, limit)
        finally:
            for _, fh in snapshot:
                fh.close()

    def _verify(self, snapshot: list[tuple[Path, Any]], limit: int | None) -> VerifyResult:
        expected_seq, prev, records = 1, GENESIS, 0

        def bad(path: Path, line: int, reason: str) -> VerifyResult:
            return VerifyResult(False, records, len(snapshot), expected_seq, path.name, line, reason)

        for index, (path, fh) in enumerate(snapshot):
            fh.seek(0)
            is_current = index == len(snapshot) - 1 and limit is not None
            data = fh.read(limit) if is_current else fh.read()
            m = _ROTATED.match(path.name)
            if m and not data:
                return bad(path, 1, "rotated file is empty")
            lines = data.split(b"\n")
            tail = lines.pop()
            if tail:
                lines.append(tail)
            for lineno, line in enumerate(lines, 1):
                if lineno == len(lines) and tail:
                    return bad(path, lineno, "record is truncated (no end of line)")
                try:
                    record = json.loads(line)
                except ValueError as e:
                    return bad(path, lineno, f"record is not valid JSON: {e}")
                if not isinstance(record, dict) or set(record) != _RECORD_FIELDS:
                    return bad(path, lineno, "record does not have the audit record fields")
                if not hmac.compare_digest(str(record["hmac"]), self._mac(record)):
                    return bad(path, lineno, "HMAC mismatch: record edited or forged")
                if canonical_json(record) != line:
                    return bad(path, lineno, "record is not in canonical form: re-serialized or edited")
                seq = record["seq"]
                if seq != expected_seq:
                    if lineno == 1 and isinstance(seq, int) and seq > expected_seq:
                        reason = (f"seq {seq} where {expected_seq} was expected: records {expected_seq}..{seq - 1} "
                                  "are missing (deleted, or a rotated file is missing)")
                    else:
                        reason = (f"seq {seq} where {expected_seq} was expected: "
                                  "a record was deleted, inserted or reordered")
                    return bad(path, lineno, reason)
                if m and lineno == 1 and int(m.group(1)) != seq:
                    return bad(path, lineno, f"file name says first seq {int(m.group(1))} but it starts at {seq}")
                if record["prev"] != prev:
                    return bad(path, lineno, "prev hash does not match the previous record: chain broken")
                prev = hashlib.sha256(line).hexdigest()
                expected_seq += 1
                records += 1
        return VerifyResult(True, records, len(snapshot))

    # ---------------------------------------------------------------- querying

    def query(
        self,
        *,
        entity: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> pa.Table:
        """Records matching every given filter, in seq order, as an Arrow table.

        ``since``/``until`` bound ``time`` (inclusive/exclusive); naive datetimes are taken as UTC.
        ``details`` comes back as JSON text. Reads the files with DuckDB's ``read_json``.
        """
        import duckdb

        clauses, params = [], []
        for column, value in (("entity", entity), ("actor", actor), ("action", action), ("outcome", outcome)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        for op, value in ((">=", since), ("<", until)):
            if value is not None:
                if value.tzinfo is None:
                    value = value.replace(tzinfo=timezone.utc)
                clauses.append(f"time {op} ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        columns = {
            "seq": "BIGINT", "time": "TIMESTAMPTZ", "action": "VARCHAR", "outcome": "VARCHAR",
            "actor": "VARCHAR", "role": "VARCHAR", "entity": "VARCHAR", "bundle": "VARCHAR",
            "sql_hash": "VARCHAR", "sql": "VARCHAR", "rows": "BIGINT", "error": "VARCHAR",
            "details": "JSON", "prev": "VARCHAR", "hmac": "VARCHAR",
        }
        column_spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"
        select = ", ".join(f'"{k}"' if k != "details" else "CAST(details AS VARCHAR) AS details" for k in columns)
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            last_error: duckdb.Error | None = None
            # A file may be rotated (renamed) or mid-append while we read: list again and retry.
            for _ in range(3):
                files = [str(p) for p in self.files()]
                if not files:
                    return _empty_query_table(con, columns, select)
                sql = (f"SELECT {select} FROM read_json(?, format = 'newline_delimited', columns = {column_spec}) "
                       f"{where} ORDER BY seq")
                try:
                    return con.sql(sql, params=[files, *params]).to_arrow_table()
                except (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException) as e:
                    last_error = e
            raise AuditError(f"audit log {self.directory}: cannot read records: {last_error}; "
                             "run `microdb audit verify`") from last_error
        finally:
            con.close()


def _empty_query_table(con: Any, columns: dict[str, str], select: str) -> pa.Table:
    defs = ", ".join(f'NULL::{v} AS "{k}"' for k, v in columns.items())
    return con.sql(f"SELECT {select} FROM (SELECT {defs}) WHERE false").to_arrow_table()


def _parse_line(line: bytes, path: Path) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise AuditError(f"audit log {path}: last record is damaged ({e}); run `microdb audit verify`") from e
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        raise AuditError(f"audit log {path}: last record has no seq; run `microdb audit verify`")
    return record


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.readline().rstrip(b"\n")


def _last_line(path: Path, chunk: int = 8192) -> bytes:
    """The last complete line of ``path`` without its newline, read backwards from the end."""
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        fh.seek(end - 1)
        if fh.read(1) != b"\n":
            raise AuditError(f"audit log {path}: last record is truncated (no end of line); "
                             "run `microdb audit verify`")
        buf, pos = b"", end - 1
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            buf = fh.read(pos - start) + buf
            pos = start
            cut = buf.rfind(b"\n")
            if cut >= 0:
                return buf[cut + 1:]
        return buf
