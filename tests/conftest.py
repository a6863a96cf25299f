"""Shared fixtures: the real PostgreSQL and MariaDB of this machine, the bank fixture,
and workspaces built on every kind of source. Services that are down fail the tests
with the command that starts them; nothing is skipped."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

PG_DSN = os.environ.get("MICRODB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL = dict(host="127.0.0.1", port=3306, user="root")
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
MYSQL_START = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
TEST_CUSTOMERS = 300
CORPUS_FILE = Path(__file__).parent / "masking" / "bypass_corpus.sql"


def unique_name(prefix: str = "mdbtest") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def require_postgres() -> str:
    import psycopg

    try:
        with psycopg.connect(PG_DSN, connect_timeout=5) as con:
            con.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_DSN} ({exc}); start it with: {PG_START}", pytrace=False)
    return PG_DSN


def require_mysql() -> dict:
    import pymysql

    try:
        pymysql.connect(**MYSQL, connect_timeout=5).close()
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB is not reachable at 127.0.0.1:3306 ({exc}); start it with: {MYSQL_START}", pytrace=False)
    return dict(MYSQL)


def load_corpus(tmp: Path) -> list[tuple[str, str, bool]]:
    """(name, sql, allowed) for every case of the bypass corpus, plus generated ones."""
    cases: list[tuple[str, str, bool]] = []
    for block in re.split(r"^-- case: ", CORPUS_FILE.read_text(), flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        allowed = "[allowed]" in header
        cases.append((header.replace("[allowed]", "").strip(), body.strip().replace("{tmp}", str(tmp)), allowed))
    cases += [
        ("very long query", "SELECT 1 AS x FROM customers WHERE " + " OR ".join(["id = 1"] * 20_000), False),
        ("deep parentheses", "SELECT " + "(" * 500 + "1" + ")" * 500, False),
        ("deep subqueries", "SELECT * FROM " + "(SELECT * FROM " * 100 + "vault" + ") t" * 100, False),
        ("long operator chain", "SELECT " + " + ".join(["1"] * 3000), False),
        ("deep nested function calls", "SELECT " + "abs(" * 200 + "1" + ")" * 200, False),
        ("NUL byte", "SELECT 1\x00; SELECT * FROM vault", False),
        ("empty", "", False),
        ("only comment", "-- nothing", False),
    ]
    return cases


@pytest.fixture(scope="session")
def bank_tables():
    from fixtures.bank import generate

    return generate(customers=TEST_CUSTOMERS, seed=3)


@pytest.fixture(scope="session")
def pg_bank(bank_tables):
    """The bank fixture loaded into a fresh PostgreSQL schema (dropped after the session)."""
    from fixtures.load import drop_postgres, load_postgres

    dsn = require_postgres()
    schema = load_postgres(bank_tables, dsn, schema=unique_name())
    yield f"{dsn}?schema={schema}", schema
    drop_postgres(schema, dsn)


@pytest.fixture(scope="session")
def mysql_bank(bank_tables):
    """The bank fixture loaded into a fresh MariaDB database (dropped after the session)."""
    from fixtures.load import drop_mysql, load_mysql

    conn = require_mysql()
    db = load_mysql(bank_tables, conn["host"], conn["port"], conn["user"], database=unique_name())
    yield f"mysql://root@127.0.0.1:3306/{db}", db
    drop_mysql(db, conn["host"], conn["port"], conn["user"])


def make_workspace(path: Path, sources: dict[str, str], extra: str = "") -> Path:
    """A workspace folder with the given sources and a fresh key file."""
    from microdb.keys import generate_key_file

    path.mkdir(parents=True, exist_ok=True)
    body = "version = 1\n\n" + "".join(f'[sources.{n}]\nurl = "{u}"\n\n' for n, u in sources.items()) + extra
    (path / "microdb.toml").write_text(body)
    generate_key_file(path / ".microdb" / "master.key")
    return path


def add_discovered(path: Path, source: str, root: str, key: list[str] | None = None) -> str:
    """Run discovery and append the entity type to the workspace config; returns its name."""
    import microdb
    from microdb.discover import discover, to_toml
    from microdb.init import append_entity

    ws = microdb.open(path)
    try:
        name, ent = discover(ws.config, ws.sources, source, root, key)
    finally:
        ws.close()
    append_entity(path / "microdb.toml", name, to_toml(name, ent))
    return name


@pytest.fixture(scope="session")
def demo_ws(tmp_path_factory):
    """The embedded demo workspace (SQLite + Parquet, three sources), synced."""
    import microdb
    from microdb.init import init_workspace

    path = tmp_path_factory.mktemp("demo")
    init_workspace(path, demo=True, customers=TEST_CUSTOMERS, seed=3)
    ws = microdb.open(path)
    ws.sync("customer")
    yield ws
    ws.close()


SERVE_PASSWORD = "correct horse battery"


def add_logins(path: Path) -> dict[str, str]:
    """Append serving logins to a workspace's config: a wire user per role (``analyst`` with a
    password, ``ops`` trusted locally) and an HTTP token per role; returns {token name: token}."""
    from microdb.server.http import hash_token, new_token
    from microdb.server.pgwire import ScramVerifier

    tokens = {"analyst": new_token(), "ops": new_token(), "tester": new_token()}
    roles = {"analyst": "analyst", "ops": "admin", "tester": "tester"}
    with (path / "microdb.toml").open("a") as fh:
        fh.write(f'\n[server.users.analyst]\nrole = "analyst"\npassword_verifier = "{ScramVerifier.from_password(SERVE_PASSWORD)}"\n'
                 '\n[server.users.ops]\nrole = "admin"\ntrusted_local = true\n')
        for name, token in tokens.items():
            fh.write(f'\n[server.tokens.{name}]\nrole = "{roles[name]}"\ntoken_hash = "{hash_token(token)}"\n')
    return tokens


# ------------------------------------------------------------------ object store (scale-out)
S3_BUCKET = "microdb-test"
S3_START = "pip install -e '.[scale]' (moto[server], boto3), then the fixture starts `python -m moto.server`"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode, its own process) on a free loopback
    port, with one bucket; credentials are set in the environment as a user would. Yields
    the endpoint URL."""
    import socket
    import subprocess
    import sys
    import time

    try:
        import boto3
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the object-store tests need {exc.name}: {S3_START}", pytrace=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "microdb-test"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "microdb-test-secret"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start on {endpoint} (exit {proc.poll()}); {S3_START}", pytrace=False)
                time.sleep(0.1)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def use_s3_store(path: Path, endpoint: str, partitions: int = 4) -> str:
    """Point a workspace's store at a fresh prefix of the test bucket; returns the store URL."""
    url = f"s3://{S3_BUCKET}/{unique_name()}"
    cfg = path / "microdb.toml"
    lines = f'url = "{url}"\nendpoint = "{endpoint}"\npartitions = {partitions}\n'
    text = cfg.read_text()
    if re.search(r"^\[store\]\s*$", text, flags=re.M):
        text = re.sub(r"^\[store\]\s*$", "[store]\n" + lines.rstrip("\n"), text, count=1, flags=re.M)
    else:
        text += "\n[store]\n" + lines
    cfg.write_text(text)
    return url


@pytest.fixture(params=["sqlite", "s3"])
def store_backend(request):
    """Each store backend in turn: a function that configures a workspace folder for it."""
    if request.param == "sqlite":
        return lambda path: None
    endpoint = request.getfixturevalue("s3_server")
    return lambda path: use_s3_store(path, endpoint)


def set_sections(path: Path, **sections: dict) -> None:
    """Replace whole top-level sections (``synth``, ``charter``…) of a workspace's config."""
    import tomllib

    import tomli_w

    cfg_path = Path(path) / "microdb.toml"
    doc = tomllib.loads(cfg_path.read_text())
    doc.update(sections)
    cfg_path.write_text(tomli_w.dumps(doc))
