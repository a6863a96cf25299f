"""Source connectors, one module each, chosen by URL scheme.

URLs: ``sqlite:PATH``, ``duckdb:PATH``, ``parquet:DIR``, ``csv:DIR`` — a relative PATH is
taken from the workspace folder, ``sqlite:///abs/path`` (three slashes) is absolute —
and ``postgresql://…``, ``mysql://…`` (``postgres://``, ``mariadb://`` too).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from microdb.errors import ConfigError
from microdb.sources.base import Catalog, Column, ForeignKey, KeyIn, Since, Source, TableInfo

_REGISTRY: dict[str, str] = {
    "sqlite": "microdb.sources.sqlite:SqliteSource",
    "duckdb": "microdb.sources.duckdb_file:DuckdbSource",
    "parquet": "microdb.sources.files:FileFolderSource",
    "csv": "microdb.sources.files:CsvFolderSource",
    "postgresql": "microdb.sources.postgres:PostgresSource",
    "postgres": "microdb.sources.postgres:PostgresSource",
    "mysql": "microdb.sources.mysql:MysqlSource",
    "mariadb": "microdb.sources.mysql:MysqlSource",
}
_FILE_SCHEMES = {"sqlite", "duckdb", "parquet", "csv"}


def _file_path(rest: str, base_dir: Path | None) -> Path:
    if rest.startswith("//"):
        rest = rest[2:]  # sqlite:///abs -> /abs ; sqlite://rel -> rel
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path


def open_source(name: str, url: str, options: dict[str, Any] | None = None, base_dir: Path | None = None) -> Source:
    """Open source ``name`` at ``url`` (file paths relative to ``base_dir``)."""
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in _REGISTRY:
        raise ConfigError(f"source {name!r}: unknown URL scheme in {url!r} (known: {', '.join(sorted(_REGISTRY))})")
    module, cls = _REGISTRY[scheme].split(":")
    klass = getattr(importlib.import_module(module), cls)
    if scheme in _FILE_SCHEMES:
        return klass(name, url, options, path=_file_path(rest, base_dir))
    return klass(name, url, options)


__all__ = ["Catalog", "Column", "ForeignKey", "KeyIn", "Since", "Source", "TableInfo", "open_source"]
