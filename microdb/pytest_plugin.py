"""pytest plugin: masked entities, synthetic bundles and a provisioned PostgreSQL schema
as fixtures (registered through the ``pytest11`` entry point ``microdb``).

Fixtures:

- ``microdb_workspace`` (session): the workspace from ``--microdb-workspace DIR``,
  ``$MICRODB_WORKSPACE`` or the ``microdb_workspace`` ini option.
- ``microdb_entity``: a factory, ``microdb_entity("customer/42", role="tester")`` → an
  entity with ``.sql()``, ``.tables()``.
- ``microdb_bundle`` (session): a factory, ``microdb_bundle(generator="rules", entities=50,
  seed=1)`` → a synthetic bundle (fitted and sampled once per session and parameters). A
  bundle the charter rejects fails the test, unless ``override="reason"`` records an
  (audited) override.
- ``microdb_postgres``: a fresh PostgreSQL schema holding what the test's
  ``@pytest.mark.microdb_postgres(...)`` asks for — ``entities=["customer/1", …]``,
  ``type=``, ``keys=``, ``where=``, ``sample=``, ``stratify=``, ``role=``, or
  ``bundle={"generator": "rules", "entities": 50, "seed": 1}`` (or a bundle id) —
  dropped after the test. The server is ``--microdb-postgres URL``,
  ``$MICRODB_TEST_PG`` or the ``microdb_postgres`` ini option.

Nothing is skipped: a missing workspace or an unreachable server fails the test with
what to set or start.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from microdb.errors import MicrodbError

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
MARKER = "microdb_postgres"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("microdb", "microdb test data")
    group.addoption("--microdb-workspace", default=None, help="microdb workspace folder for the microdb_* fixtures.")
    group.addoption("--microdb-postgres", default=None,
                    help="PostgreSQL server URL for the microdb_postgres fixture (a schema per test is created there).")
    parser.addini("microdb_workspace", "microdb workspace folder for the microdb_* fixtures.")
    parser.addini("microdb_postgres", "PostgreSQL server URL for the microdb_postgres fixture.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(entities=None, type=None, keys=None, where=None, sample=None, stratify=None, seed=0, role=None, "
        "bundle=None): what the microdb_postgres fixture provisions into its temporary schema.",
    )


def _setting(config: pytest.Config, option: str, env: str, ini: str) -> str | None:
    value = config.getoption(option) or os.environ.get(env) or config.getini(ini)
    return str(value) if value else None


@pytest.fixture(scope="session")
def microdb_workspace(pytestconfig: pytest.Config) -> Iterator[Any]:
    """The microdb workspace the tests read (closed at the end of the session)."""
    import microdb

    path = _setting(pytestconfig, "--microdb-workspace", "MICRODB_WORKSPACE", "microdb_workspace")
    if path is None:
        pytest.fail("microdb_workspace: no workspace given; pass --microdb-workspace DIR, set MICRODB_WORKSPACE, "
                    "or set microdb_workspace in the pytest ini options", pytrace=False)
    try:
        ws = microdb.open(Path(path))
    except MicrodbError as exc:
        pytest.fail(f"microdb_workspace: {exc.message}", pytrace=False)
    yield ws
    ws.close()


@pytest.fixture
def microdb_entity(microdb_workspace: Any) -> Callable[..., Any]:
    """``microdb_entity("customer/42", role="tester")``: one entity as a role sees it."""

    def make(address: str, role: str | None = None) -> Any:
        return microdb_workspace.entity(address, role)

    return make


@pytest.fixture(scope="session")
def microdb_bundle(microdb_workspace: Any, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """``microdb_bundle(generator="rules", entities=50, seed=1)``: a synthetic bundle."""
    made: dict[tuple, Any] = {}

    def make(generator: str = "rules", entities: int = 50, seed: int = 0, *, type: str | None = None,  # noqa: A002
             params: dict[str, Any] | None = None, conditions: tuple[str, ...] = (),
             override: str | None = None) -> Any:
        from microdb.provision import default_type

        etype = default_type(microdb_workspace, type)
        key = (etype, generator, entities, seed, repr(sorted((params or {}).items())), tuple(conditions))
        if key not in made:
            folder = tmp_path_factory.mktemp("microdb-bundle")
            model = microdb_workspace.synth_fit(etype, generator=generator, params=params, seed=seed,
                                                out=folder / "model")
            made[key] = microdb_workspace.synth_sample(model, entities, seed=seed, conditions=conditions,
                                                       out=folder / "bundle")
        bundle = made[key]
        if bundle.status == "rejected" and not (bundle.manifest or {}).get("overrides"):
            if override is None:
                failed = [c.get("metric") for c in (bundle.manifest.get("charter") or {}).get("checks", []) if not c.get("ok")]
                pytest.fail(f"microdb_bundle: bundle {bundle.id} was rejected by the charter (failed: "
                            f"{', '.join(map(str, failed)) or 'see its report'}); pass override='reason' to use it anyway",
                            pytrace=False)
            from microdb import synthesis

            synthesis.override(microdb_workspace, bundle.id, override)
            made[key] = bundle = microdb_workspace.bundle(bundle.id)
        return bundle

    return make


@dataclass
class ProvisionedSchema:
    """A temporary PostgreSQL schema filled by :func:`microdb.provision.provision`."""

    dsn: str  # the server, without the schema
    schema: str
    result: Any  # ProvisionResult

    @property
    def url(self) -> str:
        """The schema as a microdb source/target URL (``…?schema=NAME``)."""
        return f"{self.dsn}{'&' if '?' in self.dsn else '?'}schema={self.schema}"

    def connect(self) -> Any:
        """A psycopg connection whose ``search_path`` is the schema (close it yourself)."""
        import psycopg

        con = psycopg.connect(self.dsn)
        con.execute(f'SET search_path TO "{self.schema}"')
        return con


@pytest.fixture
def microdb_postgres(request: pytest.FixtureRequest, microdb_workspace: Any) -> Iterator[ProvisionedSchema]:
    """A fresh PostgreSQL schema with the entities or bundle of the test's marker."""
    from microdb.provision import provision

    dsn = _setting(request.config, "--microdb-postgres", "MICRODB_TEST_PG", "microdb_postgres") or DEFAULT_POSTGRES
    marker = request.node.get_closest_marker(MARKER)
    spec: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        pytest.fail(f"@pytest.mark.{MARKER} takes keyword arguments only", pytrace=False)
    kwargs: dict[str, Any] = {}
    entities = spec.pop("entities", None)
    if entities is not None:
        from microdb.entity import parse_address

        pairs = [parse_address(a) for a in entities]
        types = {t for t, _ in pairs}
        if len(types) != 1:
            pytest.fail(f"@pytest.mark.{MARKER}(entities=…) must name entities of one type, got {sorted(types)}",
                        pytrace=False)
        kwargs["etype"], kwargs["keys"] = types.pop(), [k for _, k in pairs]
    bundle = spec.pop("bundle", None)
    if isinstance(bundle, dict):
        bundle = request.getfixturevalue("microdb_bundle")(**bundle)
    if bundle is not None:
        kwargs["bundle"] = bundle
    if "type" in spec:
        kwargs["etype"] = spec.pop("type")
    for name in ("keys", "where", "sample", "stratify", "seed", "role"):
        if name in spec:
            kwargs[name] = spec.pop(name)
    if spec:
        pytest.fail(f"@pytest.mark.{MARKER}: unknown argument(s) {', '.join(sorted(spec))}", pytrace=False)
    schema = f"microdb_test_{uuid.uuid4().hex[:10]}"
    holder = ProvisionedSchema(dsn, schema, None)
    try:
        holder.result = provision(microdb_workspace, holder.url, **kwargs)
    except MicrodbError as exc:
        pytest.fail(f"microdb_postgres: {exc.message}", pytrace=False)
    try:
        yield holder
    finally:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
