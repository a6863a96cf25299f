"""The configured sources of a workspace, opened lazily and closed together."""

from __future__ import annotations

from pathlib import Path

from microdb.config import Config
from microdb.errors import ConfigError
from microdb.sources import Catalog, Source, open_source


class SourceSet:
    """Named sources from ``[sources.*]``; each is connected on first use."""

    def __init__(self, cfg: Config, base_dir: Path) -> None:
        self._cfg = cfg
        self._base = base_dir
        self._open: dict[str, Source] = {}

    def __getitem__(self, name: str) -> Source:
        src = self._open.get(name)
        if src is None:
            sc = self._cfg.sources.get(name)
            if sc is None:
                known = ", ".join(sorted(self._cfg.sources)) or "none configured"
                raise ConfigError(f"unknown source {name!r} (known: {known})")
            src = open_source(name, sc.url, sc.options, base_dir=self._base)
            self._open[name] = src
        return src

    def catalog(self, name: str) -> Catalog:
        return self[name].catalog()

    @property
    def names(self) -> list[str]:
        return sorted(self._cfg.sources)

    def queries(self) -> int:
        """Statements sent to every open source so far."""
        return sum(s.queries for s in self._open.values())

    def close(self) -> None:
        for src in self._open.values():
            src.close()
        self._open.clear()
