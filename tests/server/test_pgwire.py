"""The PostgreSQL wire server, driven by real clients (psycopg 3, psql, and a raw socket
for protocol corners) over a test backend on an in-memory DuckDB database."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import os
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb
import psycopg
import pyarrow as pa
import pytest
from conftest import require_postgres, unique_name
from psycopg import errors

from microdb.errors import ConfigError, EntityNotFound, QueryError, QueryRefused
from microdb.server import pgtypes
from microdb.server.pgwire import PgServer, ScramVerifier, Session, UserAuth, _is_loopback, parse_options, split_sql

PASSWORD = "correct horse ☃"


class DuckBackend:
    """A backend over one DuckDB database; records what it was asked."""

    def __init__(self) -> None:
        self.con = duckdb.connect()
        self.con.execute("""
            CREATE TABLE kinds (id INTEGER, big BIGINT, amount DECIMAL(12, 2), label VARCHAR, day DATE,
                                stamp TIMESTAMP, stamp_tz TIMESTAMPTZ, flag BOOLEAN, ratio DOUBLE, raw BLOB);
            INSERT INTO kinds VALUES
              (1, 9007199254740993, 12.50, 'héllo ✓', DATE '2024-02-29', TIMESTAMP '2024-02-29 13:14:15.5',
               TIMESTAMPTZ '2024-02-29 13:14:15+00', true, 0.25, '\\x00\\xffab'::BLOB),
              (2, -1, -0.01, 'it''s', DATE '1999-12-31', TIMESTAMP '1999-12-31 23:59:59',
               TIMESTAMPTZ '1999-12-31 23:59:59.000001+00', false, -1e300, ''::BLOB),
              (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
            CREATE TABLE big AS SELECT i, i * 2 AS j, 'row ' || i AS s FROM range(1000) t(i);
        """)
        self.users = {
            "alice": UserAuth("analyst", scram=ScramVerifier.from_password(PASSWORD)),
            "local": UserAuth("admin", trusted_local=True),
            "nopass": UserAuth("analyst"),
        }
        self.calls: list[tuple[dict, str, list | None]] = []
        self.cancelled: list[int] = []

    def authenticate(self, user: str) -> UserAuth | None:
        return self.users.get(user)

    def execute(self, session: Session, sql: str, params: list[object] | None) -> pa.Table:
        self.calls.append((dict(session.settings), sql, params))
        if sql.startswith("select slow"):
            deadline = time.monotonic() + float(sql.split()[-1])
            while time.monotonic() < deadline:
                if session.cancel_event.is_set():
                    raise QueryError("interrupted")
                time.sleep(0.01)
            return pa.table({"done": [True]})
        if sql == "select entity":
            entity = session.settings.get("microdb.entity")
            if entity is None:
                raise EntityNotFound("no entity chosen: SET microdb.entity = 'type/key'")
            return pa.table({"entity": [entity], "role": [session.role]})
        if "forbidden" in sql:
            raise QueryRefused("table forbidden is not part of this micro-database")
        if "explode" in sql:
            raise RuntimeError("secret internal detail")
        cur = self.con.cursor()
        try:
            return cur.sql(sql, params=params or None).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from None
        finally:
            cur.close()

    def cancel(self, session: Session) -> None:
        self.cancelled.append(session.process_id)

    def catalog(self, session: Session, sql: str) -> pa.Table | None:
        if "pg_class" in sql:
            return pa.table({"relname": ["kinds", "big"]})
        return None


@pytest.fixture(scope="module")
def backend() -> DuckBackend:
    return DuckBackend()


@pytest.fixture(scope="module")
def server(backend):
    handle = PgServer(backend, port=0).serve_in_thread()
    yield handle
    handle.stop()


def connect(server, user: str = "local", **kwargs) -> psycopg.Connection:
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(host="127.0.0.1", port=server.port, user=user, dbname="microdb",
                           connect_timeout=5, **kwargs)


# --- simple queries and types -----------------------------------------------------------

EXPECTED = [
    (1, 9007199254740993, decimal.Decimal("12.50"), "héllo ✓", dt.date(2024, 2, 29),
     dt.datetime(2024, 2, 29, 13, 14, 15, 500000), dt.datetime(2024, 2, 29, 13, 14, 15, tzinfo=dt.timezone.utc),
     True, 0.25, b"\x00\xffab"),
    (2, -1, decimal.Decimal("-0.01"), "it's", dt.date(1999, 12, 31), dt.datetime(1999, 12, 31, 23, 59, 59),
     dt.datetime(1999, 12, 31, 23, 59, 59, 1, tzinfo=dt.timezone.utc), False, -1e300, b""),
    (3, None, None, None, None, None, None, None, None, None),
]


def test_types_round_trip_in_text_and_binary(server):
    with connect(server) as conn:
        rows = conn.execute("SELECT * FROM kinds ORDER BY id").fetchall()
        assert rows == EXPECTED
        oids = [d.type_code for d in conn.execute("SELECT * FROM kinds").description]
        assert oids == [23, 20, 1700, 25, 1082, 1114, 1184, 16, 701, 17]
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT id, big, label, day, stamp, stamp_tz, flag, ratio, raw FROM kinds ORDER BY id")
            assert cur.fetchall() == [r[:2] + r[3:] for r in EXPECTED]
        with conn.cursor(binary=True) as cur, pytest.raises(errors.FeatureNotSupported, match="binary"):
            cur.execute("SELECT amount FROM kinds")


def test_multi_statement_simple_query_and_empty_query(server):
    with connect(server) as conn:
        cur = conn.execute("SELECT 1 AS a; SELECT 'x;y' AS b -- ; comment\n;")
        assert cur.fetchall() == [(1,)]
        assert cur.nextset() and cur.fetchall() == [("x;y",)]
        assert conn.execute("  -- nothing\n ;").pgresult.status == psycopg.pq.ExecStatus.EMPTY_QUERY


# --- parameters -------------------------------------------------------------------------


def test_parameters_keep_their_declared_types(server, backend):
    with connect(server) as conn:
        row = conn.execute("SELECT %s AS a, %s AS b, %s::VARCHAR AS c", ["hi", "2024", "2024-01-01"]).fetchone()
        assert row == ("hi", "2024", "2024-01-01")
        assert backend.calls[-1][2] == ["hi", "2024", "2024-01-01"]
        when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
        values = [42, decimal.Decimal("1.25"), dt.date(2024, 1, 2), when, True, 2.5, b"\x00\x01"]
        conn.execute("SELECT %s, %s, %s, %s, %s, %s, %s", values)
        sent = backend.calls[-1][2]
        assert sent == values and [type(v) for v in sent] == [type(v) for v in values]
        conn.execute("SELECT %b, %b, %b, %b, %b, %b", [42, "txt", dt.date(2024, 1, 2), when, True, 2.5])
        assert backend.calls[-1][2] == [42, "txt", dt.date(2024, 1, 2), when, True, 2.5]
        assert conn.execute("SELECT count(*) FROM kinds WHERE id >= %s AND label <> %s", [1, "x"]).fetchone() == (2,)


def test_prepared_statements_are_reused(server, backend):
    with connect(server) as conn:
        for i in (1, 2, 3, 2):
            row = conn.execute("SELECT id, label FROM kinds WHERE id = %s", [i], prepare=True).fetchone()
            assert row == (i, EXPECTED[i - 1][3])
        conn.execute("DEALLOCATE ALL")


# --- cursors and max rows ---------------------------------------------------------------


def test_server_side_cursor_fetches_in_pieces(server):
    with connect(server, autocommit=False) as conn:
        with conn.cursor(name="pages") as cur:
            cur.execute("SELECT i, s FROM big WHERE i < %s ORDER BY i", [250])
            assert cur.fetchmany(100) == [(i, f"row {i}") for i in range(100)]
            assert cur.fetchone() == (100, "row 100")
            cur.scroll(10)
            assert cur.fetchone() == (111, "row 111")
            cur.scroll(5, mode="absolute")
            assert cur.fetchone() == (5, "row 5")
            assert len(cur.fetchall()) == 244
        conn.commit()
    with connect(server) as conn, conn.cursor(name="held", withhold=True) as cur:
        cur.execute("SELECT i FROM big WHERE i < 5 ORDER BY i")
        assert cur.fetchmany(3) == [(0,), (1,), (2,)] and cur.fetchall() == [(3,), (4,)]


def test_extended_protocol_corners_over_a_raw_socket(server):
    client = RawClient(server.port, "local")
    try:
        client.send(b"P", b"stmt\0SELECT i FROM big WHERE i < $1 ORDER BY i\0" + struct.pack(">hi", 1, 20))
        client.send(b"B", b"p1\0stmt\0" + struct.pack(">hhi", 0, 1, 1) + b"5" + struct.pack(">h", 0))
        client.send(b"E", b"p1\0" + struct.pack(">i", 2))
        client.send(b"E", b"p1\0" + struct.pack(">i", 2))
        client.send(b"E", b"p1\0" + struct.pack(">i", 2))
        client.send(b"S")
        kinds = [k for k, _ in client.until_ready()]
        assert kinds == [b"1", b"2", b"D", b"D", b"s", b"D", b"D", b"s", b"D", b"C", b"Z"]
        # the named statement is reused with a binary parameter; an error discards until Sync
        client.send(b"B", b"\0stmt\0" + struct.pack(">hhhi", 1, 1, 1, 8) + struct.pack(">q", 2)
                    + struct.pack(">hh", 1, 1))
        client.send(b"E", b"\0\0\0\0\0")
        client.send(b"P", b"\0SELECT nope FROM nowhere\0\0\0")
        client.send(b"B", b"\0\0\0\0\0\0\0\0")
        client.send(b"E", b"\0\0\0\0\0")
        client.send(b"S")
        answer = client.until_ready()
        assert [k for k, _ in answer] == [b"2", b"D", b"D", b"C", b"1", b"2", b"E", b"Z"]
        assert answer[1][1][-8:] == struct.pack(">q", 0) and answer[2][1][-8:] == struct.pack(">q", 1)
        client.send(b"C", b"Sstmt\0")
        client.send(b"B", b"\0stmt\0\0\0\0\0\0\0")
        client.send(b"S")
        answer = client.until_ready()
        assert [k for k, _ in answer] == [b"3", b"E", b"Z"] and b"26000" in answer[1][1]
        client.send(b"P", b"named2\0SELECT i, s FROM big WHERE i = $1\0\0\0")
        client.send(b"D", b"Snamed2\0")
        client.send(b"S")
        answer = client.until_ready()
        assert [k for k, _ in answer] == [b"1", b"t", b"T", b"Z"]
        assert answer[1][1] == struct.pack(">hi", 1, 25) and answer[2][1][:2] == struct.pack(">h", 2)
        client.send(b"P", b"\0\0\0\0")
        client.send(b"B", b"\0\0\0\0\0\0\0\0")
        client.send(b"D", b"P\0")
        client.send(b"E", b"\0\0\0\0\0")
        client.send(b"S")
        assert [k for k, _ in client.until_ready()] == [b"1", b"2", b"n", b"I", b"Z"]
    finally:
        client.close()


# --- errors -----------------------------------------------------------------------------


def test_errors_map_to_sqlstates_and_the_connection_recovers(server):
    with connect(server) as conn:
        with pytest.raises(errors.SyntaxError):
            conn.execute("SELEC 1")
        with pytest.raises(errors.InsufficientPrivilege, match="table forbidden is not part"):
            conn.execute("SELECT * FROM forbidden")
        with pytest.raises(errors.NoDataFound, match="no entity chosen"):
            conn.execute("select entity")
        with pytest.raises(errors.InternalError_) as info:
            conn.execute("SELECT explode")
        assert "secret" not in str(info.value) and "Traceback" not in str(info.value)
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    with connect(server, autocommit=False) as conn:
        with pytest.raises(errors.UndefinedTable):
            conn.execute("SELECT * FROM missing_table")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        conn.commit()


# --- session settings -------------------------------------------------------------------


def test_set_and_show_reach_the_backend(server, backend):
    with connect(server) as conn:
        conn.execute("SET microdb.entity = 'customer/42'")
        assert conn.execute("SHOW microdb.entity").fetchone() == ("customer/42",)
        assert conn.execute("select entity").fetchone() == ("customer/42", "admin")
        conn.execute("SET microdb.entity TO 'customer/7'")
        assert conn.execute("SELECT current_setting('microdb.entity')").fetchone() == ("customer/7",)
        conn.execute("RESET microdb.entity")
        with pytest.raises(errors.UndefinedObject):
            conn.execute("SHOW microdb.entity")
        assert conn.execute("SELECT current_setting('microdb.entity', true)").fetchone() == (None,)
        assert conn.execute("SELECT pg_catalog.version()").fetchone()[0].startswith("PostgreSQL 16.0")
        assert conn.execute("SHOW DateStyle").fetchone() == ("ISO, MDY",)
        assert conn.execute("SELECT current_user, current_database() AS db").fetchone() == ("local", "microdb")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SET ROLE admin")
        with pytest.raises(errors.FeatureNotSupported, match="catalog query not supported"):
            conn.execute("SELECT typname FROM pg_type")
        assert conn.execute("SELECT relname FROM pg_catalog.pg_class").fetchall() == [("kinds",), ("big",)]
        chosen = conn.execute("SELECT set_config('microdb.entity', %s, false)", ["customer/9"]).fetchone()
        assert chosen == ("customer/9",)
        assert conn.execute("select entity").fetchone() == ("customer/9", "admin")
        conn.execute("SET application_name = 'report'")
        assert conn.info.parameter_status("application_name") == "report"
        assert not any("SET" in sql or "SHOW" in sql for _, sql, _ in backend.calls)


@pytest.mark.parametrize("options", ["-c microdb.entity=customer/42", "--microdb.entity=customer/42"])
def test_startup_options_set_the_entity(server, options):
    with connect(server, options=options) as conn:
        assert conn.execute("select entity").fetchone() == ("customer/42", "admin")
        conn.execute("SET microdb.entity = 'customer/1'")
        conn.execute("RESET ALL")
        assert conn.execute("SHOW microdb.entity").fetchone() == ("customer/42",)


def test_parse_options_and_split_sql():
    assert parse_options(r"-c a.b=1 -cx=y\ z --c-d=e") == [("a.b", "1"), ("x", "y z"), ("c_d", "e")]
    parts = split_sql("SELECT ';' AS a, $$;$$, E'\\';' /* ; /* ; */ */; SELECT \"a;\" FROM t WHERE x = $2;;")
    assert [p.text for p in parts] == ["SELECT ';' AS a, $$;$$, E'\\';' /* ; /* ; */ */",
                                       'SELECT "a;" FROM t WHERE x = $2']
    assert [p.nparams for p in parts] == [0, 2]


# --- authentication and TLS -------------------------------------------------------------


def test_scram_authentication(server):
    with connect(server, "alice", password=PASSWORD) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with connect(server, "alice", password=PASSWORD, max_protocol_version="3.2") as conn:
        assert conn.info.server_version == 160000 and conn.execute("SELECT 2").fetchone() == (2,)
    for user, password in [("alice", "wrong"), ("nobody", PASSWORD), ("nopass", "x")]:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(server, user, password=password)


def test_malformed_scram_message_is_refused(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    params = b"user\0alice\0\0"
    sock.sendall(struct.pack(">ii", len(params) + 8, 196608) + params)
    assert b"SCRAM-SHA-256" in sock.recv(1024)
    payload = b"SCRAM-SHA-256\0" + struct.pack(">i", 5) + "n,,é".encode()
    sock.sendall(b"p" + struct.pack(">i", len(payload) + 4) + payload)
    answer = sock.recv(1024)
    assert answer[:1] == b"E" and b"28P01" in answer and b"password authentication failed" in answer
    sock.close()


def test_verifier_format_matches_postgresql():
    dsn = require_postgres()
    role = unique_name("mdbrole")
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("SET password_encryption = 'scram-sha-256'")
        pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        try:
            stored = pg.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]).fetchone()[0]
        finally:
            pg.execute(f"DROP ROLE {role}")
    verifier = ScramVerifier.parse(stored)
    assert str(verifier) == stored
    assert verifier.verify_password(PASSWORD) and not verifier.verify_password("wrong")
    assert ScramVerifier.from_password(PASSWORD, verifier.iterations, verifier.salt) == verifier
    with pytest.raises(ConfigError):
        ScramVerifier.parse("md5abcdef")
    backend = DuckBackend()
    backend.users["pguser"] = UserAuth("analyst", scram=verifier)
    handle = PgServer(backend, port=0).serve_in_thread()
    try:
        with connect(handle, "pguser", password=PASSWORD) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        handle.stop()


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_required(tmp_path, backend):
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handle = PgServer(backend, port=0, ssl_context=context, require_tls=True).serve_in_thread()
    try:
        with connect(handle, "alice", password=PASSWORD, sslmode="verify-full", sslrootcert=str(cert)) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT label FROM kinds WHERE id = 1").fetchone() == ("héllo ✓",)
            threading.Timer(0.2, conn.cancel_safe).start()  # the cancel connection negotiates TLS too
            with pytest.raises(errors.QueryCanceled):
                conn.execute("select slow 10")
        with pytest.raises(psycopg.OperationalError, match="TLS is required"):
            connect(handle, "alice", password=PASSWORD, sslmode="disable")
    finally:
        handle.stop()
    with pytest.raises(ConfigError):
        PgServer(backend, require_tls=True)


# --- cancel, concurrency, disconnects, shutdown -----------------------------------------


def test_cancel_interrupts_the_running_query(server, backend):
    with connect(server) as conn:
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("select slow 10")
        assert time.monotonic() - started < 5
        assert conn.info.backend_pid in backend.cancelled
        assert conn.execute("SELECT 1").fetchone() == (1,)


CANCEL_CLIENT = """
import sys, threading, time, psycopg
conn = psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="local", dbname="microdb", autocommit=True)
threading.Timer(0.3, conn.cancel).start()
started = time.monotonic()
try:
    conn.execute("select slow 10")
except psycopg.errors.QueryCanceled as exc:
    print("canceled", round(time.monotonic() - started), conn.execute("SELECT 1").fetchone()[0])
"""


def test_blocking_cancel_from_another_process(server):
    # conn.cancel() holds the GIL while libpq waits for the server, so the client runs
    # in its own process (an in-process server could not answer it)
    done = subprocess.run([sys.executable, "-c", CANCEL_CLIENT, str(server.port)], capture_output=True,
                          text=True, timeout=20)
    assert done.stdout.split() == ["canceled", "0", "1"], done.stderr


def test_twenty_clients_at_once(server):
    def work(n: int) -> list:
        with connect(server, "alice", password=PASSWORD, options=f"-c microdb.entity=customer/{n}") as conn:
            got = [conn.execute("select entity").fetchone()[0]]
            got.append(conn.execute("SELECT sum(i) FROM big WHERE i < %s", [n]).fetchone()[0])
            return got

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(work, range(20)))
    assert results == [[f"customer/{n}", sum(range(n)) if n else None] for n in range(20)]


def test_client_vanishing_mid_query_leaves_others_alone(server):
    raw = RawClient(server.port, "local")
    raw.send(b"Q", b"select slow 0.5\0")
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    with connect(server) as conn:
        assert conn.execute("SELECT 7").fetchone() == (7,)
        time.sleep(0.6)
        assert conn.execute("SELECT 8").fetchone() == (8,)


def test_stop_lets_running_queries_finish(backend):
    handle = PgServer(backend, port=0).serve_in_thread()
    results = []

    def slow() -> None:
        with connect(handle) as conn:
            results.append(conn.execute("select slow 0.4").fetchone())

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    handle.stop(grace_seconds=5)
    thread.join()
    assert results == [(True,)]
    with pytest.raises(psycopg.OperationalError):
        connect(handle)


# --- psql -------------------------------------------------------------------------------


def psql(server, *args: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    env = dict(os.environ, PGPASSWORD=password, PGCONNECT_TIMEOUT="5")
    return subprocess.run(["/usr/bin/psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", "alice", "-d",
                           "microdb", "-X", *args], capture_output=True, text=True, env=env, timeout=20)


def test_psql(server):
    done = psql(server, "-c", "select 1")
    assert done.returncode == 0 and "(1 row)" in done.stdout, done.stderr
    done = psql(server, "-At", "-c", "SET microdb.entity = 'x'; SHOW microdb.entity")
    assert (done.returncode, done.stdout) == (0, "SET\nx\n"), done.stderr  # psql 15 prints every result
    done = psql(server, "-At", "-F", ",", "-c", "SELECT id, label, flag FROM kinds ORDER BY id")
    assert done.stdout == "1,héllo ✓,t\n2,it's,f\n3,,\n"
    done = psql(server, "-c", r"\dt")
    assert done.returncode == 0 and "kinds" in done.stdout, done.stderr
    done = psql(server, "-c", r"\dn")
    assert done.returncode != 0 and "catalog query not supported" in done.stderr
    done = psql(server, "-c", "select 1", password="wrong")
    assert done.returncode != 0 and "password authentication failed" in done.stderr


# --- encoding and latency ---------------------------------------------------------------


def test_column_encoding_matches_postgresql_text():
    table = pa.table({
        "f": pa.array([1.5, float("inf"), float("nan"), None]),
        "ts": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5)] * 4, pa.timestamp("ns")),
        "tz": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 120000)] * 4, pa.timestamp("us", tz="Europe/Paris")),
        "b": pa.array([b"\x01\xab", b"", None, b"z"]),
        "i": pa.array([dt.timedelta(hours=-2), dt.timedelta(days=1, microseconds=5), None, dt.timedelta(0)]),
    })
    text = [pgtypes.text_column(c).to_pylist() for c in table.columns]
    assert text[0] == [b"1.5", b"Infinity", b"NaN", None]
    assert text[1][0] == b"2024-01-02 03:04:05" and text[2][0] == b"2024-01-02 03:04:05.12+00"
    assert text[3] == [b"\\x01ab", b"\\x", None, b"\\x7a"]
    assert text[4] == [b"0 mons 0 days -02:00:00", b"0 mons 0 days 24:00:00.000005", None, b"0 mons 0 days 00:00:00"]
    assert pgtypes.decode_param(b"2024", 0, 0) == "2024" and pgtypes.decode_param(b"2024", 23, 0) == 2024
    many = pa.table({"n": pa.array([None if i % 7 == 0 else i for i in range(40)]),
                     "s": pa.array([None if i % 5 == 0 else "é" * i for i in range(40)])})
    encoded = [pgtypes.text_column(c) for c in many.columns]
    assert bytes(pgtypes.datarows(encoded)) == pgtypes._datarows_small(encoded)


def test_only_loopback_addresses_are_local():
    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"))
    assert not any(_is_loopback(h) for h in ("192.0.2.2", "10.0.0.1", "fd00::2", "", "localhost"))


def test_latency_and_bulk_rows(server):
    with connect(server) as conn:
        timings = []
        for _ in range(300):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            timings.append(time.perf_counter() - started)
        assert statistics.median(timings) < 0.01
        rows = conn.execute("SELECT i, j, s FROM big ORDER BY i").fetchall()
        assert rows[999] == (999, 1998, "row 999") and len(rows) == 1000


class RawClient:
    """Just enough of a frontend to send protocol messages by hand."""

    def __init__(self, port: int, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        params = b"user\0" + user.encode() + b"\0database\0microdb\0\0"
        self.sock.sendall(struct.pack(">ii", len(params) + 8, 196608) + params)
        self.buffer = b""
        assert self.until_ready()[0] == (b"R", struct.pack(">i", 0))

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.sock.sendall(kind + struct.pack(">i", len(payload) + 4) + payload)

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        messages = []
        while not messages or messages[-1][0] != b"Z":
            while len(self.buffer) < 5 or len(self.buffer) < 1 + struct.unpack_from(">i", self.buffer, 1)[0]:
                chunk = self.sock.recv(65536)
                assert chunk, "server closed the connection"
                self.buffer += chunk
            length = struct.unpack_from(">i", self.buffer, 1)[0]
            messages.append((self.buffer[:1], self.buffer[5:1 + length]))
            self.buffer = self.buffer[1 + length:]
        return messages

    def close(self) -> None:
        self.sock.close()
