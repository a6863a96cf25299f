"""The shape a generator learns: an entity tree of tables plus links to shared reference tables.

The tree is rooted at the entity's root table; every other table names its parent and
the foreign-key columns pointing to it. Reference links (a transaction's merchant, a
customer's country) point from tree tables to shared lookup tables, or to another
tree table of the same entity (a transaction's card): generators pick existing keys
for them, so referential integrity holds by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc

from microdb.errors import SchemaError


@dataclass(frozen=True)
class SynthTable:
    """One table of the entity tree.

    ``columns`` are this table's foreign-key columns pointing to ``parent_columns`` of the
    parent. ``order_by`` names a column (a timestamp) that orders siblings: such a table
    is a *sequence* and is generated row after row, each row seeing earlier siblings.
    """

    name: str
    parent: str | None
    columns: tuple[str, ...] = ()
    parent_columns: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    order_by: str | None = None


@dataclass(frozen=True)
class ReferenceLink:
    """``table.columns`` reference ``ref_table.ref_columns`` (a shared table or another tree table)."""

    table: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class SynthSchema:
    """The entity tree (parents before children), its reference links and excluded columns.

    ``exclude`` holds ``"table.column"`` names that are never learned (PII): generators
    fill them with realistic made-up values instead.
    """

    root: str
    key: tuple[str, ...]
    tables: tuple[SynthTable, ...]
    references: tuple[ReferenceLink, ...] = ()
    exclude: frozenset[str] = field(default_factory=frozenset)

    # ------------------------------------------------------------------ navigation

    def table(self, name: str) -> SynthTable:
        """The tree table called ``name``."""
        for table in self.tables:
            if table.name == name:
                return table
        raise SchemaError(f"synth schema: no table {name!r} in the entity tree (tables: {self.names()})")

    def names(self) -> list[str]:
        """Tree table names, parents before children."""
        return [t.name for t in self.tables]

    def children(self, name: str) -> list[SynthTable]:
        """Tables whose parent is ``name``."""
        return [t for t in self.tables if t.parent == name]

    def ancestors(self, name: str) -> list[str]:
        """``name`` and its ancestors up to the root, nearest first."""
        chain = [name]
        while (parent := self.table(chain[-1]).parent) is not None:
            chain.append(parent)
        return chain

    def is_tree_table(self, name: str) -> bool:
        """Whether ``name`` is a table of the entity tree (not a shared reference table)."""
        return any(t.name == name for t in self.tables)

    def key_columns(self, name: str) -> tuple[str, ...]:
        """Columns of ``name`` that generators assign by construction: primary key,
        columns referenced by children, and the foreign key to the parent."""
        table = self.table(name)
        cols = list(table.primary_key) + list(table.columns)
        for child in self.children(name):
            cols += list(child.parent_columns)
        cols += [c for link in self.references if link.ref_table == name for c in link.ref_columns]
        return tuple(dict.fromkeys(cols))

    def links_of(self, name: str) -> list[tuple[int, ReferenceLink]]:
        """(index, link) of the reference links leaving ``name``."""
        return [(i, link) for i, link in enumerate(self.references) if link.table == name]

    # ------------------------------------------------------------------ validation

    def validate(self, tables: Mapping[str, pa.Table], references: Mapping[str, pa.Table]) -> None:
        """Check the schema against training data; report every problem at once."""
        problems: list[str] = []
        seen: set[str] = set()
        roots = [t.name for t in self.tables if t.parent is None]
        if roots != [self.root]:
            problems.append(f"exactly one table without parent expected, the root {self.root!r}; found {roots}")
        for t in self.tables:
            if t.name in seen:
                problems.append(f"table {t.name!r} declared twice")
            if t.parent is not None and t.parent not in seen:
                problems.append(f"table {t.name!r}: parent {t.parent!r} must be declared before it")
            seen.add(t.name)
            if t.name not in tables:
                problems.append(f"table {t.name!r}: no training data given")
                continue
            have = set(tables[t.name].column_names)
            if t.parent is not None and (not t.columns or len(t.columns) != len(t.parent_columns)):
                problems.append(f"table {t.name!r}: columns {t.columns} and parent_columns {t.parent_columns} "
                                "must be non-empty and of equal length")
            wanted = list(t.columns) + list(t.primary_key) + ([t.order_by] if t.order_by else [])
            for col in wanted:
                if col not in have:
                    problems.append(f"table {t.name!r}: no column {col!r}")
            if t.parent in tables:
                for col in t.parent_columns:
                    if col not in tables[t.parent].column_names:
                        problems.append(f"table {t.parent!r}: no column {col!r} (referenced by {t.name!r})")
        if self.root in tables:
            for col in self.key:
                if col not in tables[self.root].column_names:
                    problems.append(f"root table {self.root!r}: no key column {col!r}")
        for link in self.references:
            holder = tables if self.is_tree_table(link.ref_table) else references
            target = holder.get(link.ref_table)
            if not self.is_tree_table(link.table):
                problems.append(f"reference {link.table}.{link.columns}: {link.table!r} is not a tree table")
            elif link.table in tables:
                for col in link.columns:
                    if col not in tables[link.table].column_names:
                        problems.append(f"reference: no column {link.table}.{col}")
            if target is None:
                problems.append(f"reference {link.table}.{','.join(link.columns)} -> {link.ref_table}: "
                                f"no table {link.ref_table!r} given")
            else:
                for col in link.ref_columns:
                    if col not in target.column_names:
                        problems.append(f"reference: no column {link.ref_table}.{col}")
            if len(link.columns) != len(link.ref_columns) or not link.columns:
                problems.append(f"reference {link.table}.{link.columns} -> {link.ref_table}.{link.ref_columns}: "
                                "column lists must be non-empty and of equal length")
        for item in sorted(self.exclude):
            table_name, _, col = item.partition(".")
            if table_name not in tables or col not in tables[table_name].column_names:
                problems.append(f"exclude: no column {item!r}")
        if problems:
            raise SchemaError("synth schema: " + "; ".join(problems))

    # ------------------------------------------------------------------ inference

    def infer_references(self, tables: Mapping[str, pa.Table],
                         references: Mapping[str, pa.Table]) -> SynthSchema:
        """A copy with links added for tree-table columns that share their name with a
        unique column of a reference table and whose values all exist there."""
        links = list(self.references)
        taken = {(link.table, c) for link in links for c in link.columns}
        for t in self.tables:
            data = tables[t.name]
            own_keys = set(self.key_columns(t.name))
            for col in data.column_names:
                if col in own_keys or (t.name, col) in taken or f"{t.name}.{col}" in self.exclude:
                    continue
                for ref_name, ref in sorted(references.items()):
                    if col not in ref.column_names:
                        continue
                    keys = ref.column(col)
                    if pc.count_distinct(keys).as_py() != len(keys):
                        continue
                    values = pc.drop_null(data.column(col))
                    if len(values) and pc.all(pc.is_in(values, value_set=keys.combine_chunks())).as_py():
                        links.append(ReferenceLink(t.name, (col,), ref_name, (col,)))
                        taken.add((t.name, col))
                        break
        return replace(self, references=tuple(links))

    def infer_order(self, tables: Mapping[str, pa.Table], min_mean_children: float = 3.0) -> SynthSchema:
        """A copy where child tables averaging at least ``min_mean_children`` rows per parent
        and holding a timestamp column become sequences ordered by it (the most distinct one)."""
        out = []
        for t in self.tables:
            if t.parent is None or t.order_by is not None:
                out.append(t)
                continue
            data, parent = tables[t.name], tables[t.parent]
            stamps = [f.name for f in data.schema if pa.types.is_timestamp(f.type)
                      and f"{t.name}.{f.name}" not in self.exclude]
            if stamps and parent.num_rows and data.num_rows / parent.num_rows >= min_mean_children:
                best = max(stamps, key=lambda c: pc.count_distinct(data.column(c)).as_py())
                out.append(replace(t, order_by=best))
            else:
                out.append(t)
        return replace(self, tables=tuple(out))

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        """A JSON-ready description (saved with every model)."""
        return {
            "root": self.root,
            "key": list(self.key),
            "tables": [{"name": t.name, "parent": t.parent, "columns": list(t.columns),
                        "parent_columns": list(t.parent_columns), "primary_key": list(t.primary_key),
                        "order_by": t.order_by} for t in self.tables],
            "references": [{"table": r.table, "columns": list(r.columns), "ref_table": r.ref_table,
                            "ref_columns": list(r.ref_columns)} for r in self.references],
            "exclude": sorted(self.exclude),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> SynthSchema:
        """Inverse of ``to_dict``."""
        try:
            return cls(
                root=data["root"],
                key=tuple(data["key"]),
                tables=tuple(SynthTable(t["name"], t["parent"], tuple(t["columns"]), tuple(t["parent_columns"]),
                                        tuple(t["primary_key"]), t.get("order_by")) for t in data["tables"]),
                references=tuple(ReferenceLink(r["table"], tuple(r["columns"]), r["ref_table"],
                                               tuple(r["ref_columns"])) for r in data["references"]),
                exclude=frozenset(data["exclude"]),
            )
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"synth schema: malformed description ({exc!r})") from exc
