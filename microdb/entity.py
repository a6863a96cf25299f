"""Entity types: a root table and key, child tables linked to their parents, and
reference tables, resolved from the configuration into a tree the projector walks."""

from __future__ import annotations

from dataclasses import dataclass

from microdb.config import Config
from microdb.errors import ConfigError, EntityNotFound

KEY_SEPARATOR = "/"


@dataclass(frozen=True)
class EntityTable:
    """One table of an entity's micro-database and how it hangs off its parent."""

    name: str
    source: str
    table: str
    parent: str | None
    columns: tuple[str, ...]  # child side of the join
    parent_columns: tuple[str, ...]
    watermark: str | None
    projection: tuple[str, ...] | None
    depth: int

    @property
    def qualified(self) -> str:
        return f"{self.source}.{self.table}"


@dataclass(frozen=True)
class ReferenceTable:
    """A shared lookup table stored once per entity type, not per instance."""

    name: str
    source: str
    table: str
    projection: tuple[str, ...] | None


@dataclass(frozen=True)
class EntityType:
    name: str
    root: str
    key: tuple[str, ...] | None  # None: the root table's primary key, read from the catalog
    tables: tuple[EntityTable, ...]  # root first, parents before children
    references: tuple[ReferenceTable, ...]
    on_demand: str
    ttl: float
    serve_stale: bool = False

    def table(self, name: str) -> EntityTable:
        for t in self.tables:
            if t.name == name:
                return t
        raise ConfigError(f"entity type {self.name!r} has no table {name!r}")

    @property
    def root_table(self) -> EntityTable:
        return self.tables[0]

    def children(self, name: str) -> list[EntityTable]:
        return [t for t in self.tables if t.parent == name]

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.tables] + [r.name for r in self.references]


def entity_type(cfg: Config, name: str) -> EntityType:
    """Resolve entity type ``name`` from the configuration (no source is contacted)."""
    ent = cfg.entity(name)
    ordered: list[EntityTable] = []
    depth = {ent.root: 0}
    pending = [ent.root]
    while pending:
        current = pending.pop(0)
        tc = ent.tables[current]
        ordered.append(
            EntityTable(
                name=current,
                source=tc.source,
                table=tc.table,
                parent=tc.parent,
                columns=tuple(tc.join.keys()),
                parent_columns=tuple(tc.join.values()),
                watermark=tc.watermark,
                projection=tuple(tc.columns) if tc.columns else None,
                depth=depth[current],
            )
        )
        for child in sorted(n for n, t in ent.tables.items() if t.parent == current):
            depth[child] = depth[current] + 1
            pending.append(child)
    refs = tuple(
        ReferenceTable(name=n, source=r.source, table=r.table, projection=tuple(r.columns) if r.columns else None)
        for n, r in sorted(ent.references.items())
    )
    return EntityType(
        name=name,
        root=ent.root,
        key=tuple(ent.key) if ent.key else None,
        tables=tuple(ordered),
        references=refs,
        on_demand=ent.on_demand,
        ttl=ent.ttl,
        serve_stale=ent.serve_stale,
    )


def parse_address(address: str) -> tuple[str, str]:
    """Split ``"customer/42"`` into ``("customer", "42")``; composite keys keep their slashes."""
    etype, sep, key = address.partition(KEY_SEPARATOR)
    if not sep or not etype or not key:
        raise EntityNotFound(f"not an entity address: {address!r} (expected TYPE/KEY, e.g. customer/42)")
    return etype, key
