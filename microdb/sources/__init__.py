"""Source connectors, one module each, chosen by URL scheme and imported on first use.

URLs:

- ``sqlite:PATH``, ``duckdb:PATH``, ``parquet:DIR``, ``csv:DIR``. Three slashes make the
  path absolute (``sqlite:///data/crm.sqlite`` is ``/data/crm.sqlite``); ``sqlite:data/crm.sqlite``
  and ``sqlite://data/crm.sqlite`` are relative to ``base_dir`` (the workspace folder).
  ``~`` is expanded.
- ``postgresql://user@host:port/db?schema=NAME`` (also ``postgres://``; default schema ``public``).
- ``mysql://user@host:port/db`` (also ``mariadb://``).

Passwords belong in ``options["password"]`` (resolved from the secret providers), not in the URL.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from microdb.errors import ConfigError
from microdb.sources.base import Catalog, Column, ForeignKey, KeyIn, Since, Source, TableInfo, file_path

# scheme -> (module, class, the package that provides its driver)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "sqlite": ("microdb.sources.sqlite", "SqliteSource", "adbc-driver-sqlite"),
    "duckdb": ("microdb.sources.duckdb_file", "DuckdbSource", "duckdb"),
    "parquet": ("microdb.sources.files", "FileFolderSource", "pyarrow"),
    "csv": ("microdb.sources.files", "CsvFolderSource", "pyarrow"),
    "postgresql": ("microdb.sources.postgres", "PostgresSource", "adbc-driver-postgresql"),
    "postgres": ("microdb.sources.postgres", "PostgresSource", "adbc-driver-postgresql"),
    "mysql": ("microdb.sources.mysql", "MysqlSource", "connectorx and pymysql"),
    "mariadb": ("microdb.sources.mysql", "MysqlSource", "connectorx and pymysql"),
}
FILE_SCHEMES = frozenset({"sqlite", "duckdb", "parquet", "csv"})


def source_class(scheme: str) -> type[Source]:
    """The connector class for a URL scheme, imported now."""
    entry = _REGISTRY.get(scheme.lower())
    if entry is None:
        raise ConfigError(f"unknown source URL scheme {scheme!r} (known: {', '.join(sorted(_REGISTRY))})")
    module, cls, package = entry
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{scheme} sources need {package} installed ({exc})") from exc


def open_source(name: str, url: str, options: dict | None = None, base_dir: Path | None = None) -> Source:
    """Open source ``name`` at ``url``; relative file paths are taken from ``base_dir``.

    Nothing is contacted yet: the first ``catalog()``, ``read()`` or ``ping()`` connects.
    """
    scheme, sep, _ = url.partition(":")
    if not sep or scheme.lower() not in _REGISTRY:
        raise ConfigError(
            f"source {name!r}: unknown URL scheme in {url!r} (known: {', '.join(sorted(_REGISTRY))})"
        )
    scheme = scheme.lower()
    klass = source_class(scheme)
    if scheme in FILE_SCHEMES:
        url = f"{scheme}://{file_path(url, base_dir).as_posix()}"
    return klass(name, url, options)


__all__ = ["Catalog", "Column", "ForeignKey", "KeyIn", "Since", "Source", "TableInfo", "open_source"]
