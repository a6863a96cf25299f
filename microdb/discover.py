"""Discovery: infer an entity type from foreign keys.

Starting at a root table, every table holding a foreign key to a table already in the
tree becomes its child (breadth first, so the shortest path wins); every table a tree
table references but that is not in the tree becomes a reference table, and so do the
tables those reference. Links across sources come from ``[[relations]]`` in the config.
Self-references are ignored for the tree (a row's parent row is in the same table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tomli_w

from microdb.config import Config
from microdb.errors import SchemaError
from microdb.sourceset import SourceSet


# conventional names of "last changed" columns, proposed as watermarks for review
WATERMARK_NAMES = ("updated_at", "modified_at", "last_modified", "last_updated", "changed_at", "updated", "modified")


@dataclass(frozen=True)
class Edge:
    """``child(columns)`` references ``parent(parent_columns)``; names are 'source.table'."""

    child: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]


def _edges(cfg: Config, sources: SourceSet, names: list[str]) -> list[Edge]:
    edges: list[Edge] = []
    for src in names:
        for tname, info in sorted(sources.catalog(src).tables.items()):
            for fk in info.foreign_keys:
                edges.append(Edge(f"{src}.{tname}", tuple(fk.columns), f"{src}.{fk.ref_table}", tuple(fk.ref_columns)))
    for rel in cfg.relations:
        edges.append(Edge(rel.child, tuple(rel.columns), rel.parent, tuple(rel.parent_columns)))
    return sorted(edges, key=lambda e: (e.child, e.columns, e.parent))


def discover(
    cfg: Config, sources: SourceSet, source: str, root: str, key: list[str] | None = None, name: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Return ``(entity_name, entity_config_dict)`` inferred from catalogs and relations."""
    catalog = sources.catalog(source)
    rinfo = catalog.table(root)
    if key:
        missing = [c for c in key if c not in {col.name for col in rinfo.columns}]
        if missing:
            raise SchemaError(f"{source}.{root} has no column {missing[0]!r} (given as --key)")
    elif not rinfo.primary_key:
        raise SchemaError(f"root table {source}.{root} has no primary key: pass --key COLUMN")
    involved = sorted({source} | {e.split(".")[0] for r in cfg.relations for e in (r.child, r.parent)})
    edges = _edges(cfg, sources, involved)
    root_q = f"{source}.{root}"
    tree: dict[str, Edge | None] = {root_q: None}
    frontier = [root_q]
    while frontier:
        node = frontier.pop(0)
        for e in edges:
            if e.parent == node and e.child not in tree and e.child != e.parent:
                tree[e.child] = e
                frontier.append(e.child)
    refs: list[str] = []
    pending = list(tree)
    while pending:
        node = pending.pop(0)
        for e in edges:
            if e.child == node and e.parent not in tree and e.parent not in refs and e.parent != e.child:
                refs.append(e.parent)
                pending.append(e.parent)
    # local names: the table name, prefixed with the source where two sources share it
    all_nodes = list(tree) + refs
    bare = [n.split(".", 1)[1] for n in all_nodes]
    local = {n: (n.replace(".", "_") if bare.count(n.split(".", 1)[1]) > 1 else n.split(".", 1)[1]) for n in all_nodes}
    tables: dict[str, Any] = {}
    for node, edge in tree.items():
        src, tbl = node.split(".", 1)
        entry: dict[str, Any] = {"source": src, "table": tbl}
        if edge is not None:
            entry["parent"] = local[edge.parent]
            entry["join"] = dict(zip(edge.columns, edge.parent_columns))
        info = sources.catalog(src).tables.get(tbl)
        wm = next((c.name for c in info.columns if c.name.lower() in WATERMARK_NAMES), None) if info else None
        if wm:
            entry["watermark"] = wm
        tables[local[node]] = entry
    ent: dict[str, Any] = {"root": local[root_q]}
    if key:
        ent["key"] = list(key)
    ent["on_demand"] = "ttl"
    ent["ttl"] = "1h"
    ent["tables"] = tables
    if refs:
        ent["references"] = {local[r]: {"source": r.split(".", 1)[0], "table": r.split(".", 1)[1]} for r in refs}
    return name or _singular(root), ent


def to_toml(entity_name: str, ent: dict[str, Any]) -> str:
    """The ``[entities.NAME]`` section for review or appending to microdb.toml."""
    return tomli_w.dumps({"entities": {entity_name: ent}})


def _singular(table: str) -> str:
    if table.endswith("ies"):
        return table[:-3] + "y"
    if table.endswith("sses") or table.endswith("xes"):
        return table[:-2]
    if table.endswith("s") and not table.endswith("ss"):
        return table[:-1]
    return table
