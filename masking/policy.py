"""Roles and masking policies: config models, compilation, and applying a role to tables.

A column of a masked role is resolved in this order:

1. an exact rule ``"table.column"``;
2. glob rules (``"*.customer_id"``, fnmatch syntax, matched against ``table.column``),
   the most specific first: most literal (non-wildcard) characters, then the longer
   pattern, then alphabetical order;
3. tag rules, for the column's tags from ``pii scan`` (in the order the tags are given).

A column no rule matches is **withheld** — dropped from what the role sees — so a new
source column never leaks before someone classifies it. Raw roles see everything.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from microdb.errors import AccessDenied, PolicyError
from masking.functions import MaskContext, MaskFunction, Params, get_function

FINGERPRINT_VERSION = "microdb.masking/1"
_GLOB_CHARS = set("*?[")


class RoleSpec(BaseModel):
    """``[roles.NAME]``: ``raw = true`` (sees raw data) or ``policy = "NAME"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    raw: bool = False
    policy: str | None = None
    detokenize: bool = False

    @model_validator(mode="after")
    def _raw_or_policy(self) -> RoleSpec:
        if self.raw and self.policy is not None:
            raise ValueError("set raw = true or policy = NAME, not both")
        if not self.raw and self.policy is None:
            raise ValueError("set raw = true or policy = NAME")
        return self


class RuleSpec(BaseModel):
    """One rule: ``{ fn = "hmac_token", domain = "customer" }`` or a bare function name."""

    model_config = ConfigDict(extra="allow", frozen=True)

    fn: str

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"fn": data} if isinstance(data, str) else data

    @property
    def params(self) -> dict[str, Any]:
        """Everything but ``fn``: the function's parameters."""
        return dict(self.model_extra or {})


class PolicySpec(BaseModel):
    """``[policies.NAME]``: optional ``extends``, rules by ``columns`` and by ``tags``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    extends: str | None = None
    description: str = ""
    columns: dict[str, RuleSpec] = {}
    tags: dict[str, RuleSpec] = {}


@dataclass(frozen=True)
class Rule:
    """A validated rule: the pattern or tag it is keyed by, the function and its params."""

    key: str
    fn: MaskFunction
    params: Params
    policy: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready form, used for fingerprints and display."""
        return {"fn": self.fn.name, "params": self.params.model_dump(mode="json")}


@dataclass
class MaskedTables:
    """What a role sees: masked tables, and what was withheld from it."""

    tables: dict[str, pa.Table]
    withheld: list[str] = field(default_factory=list)
    withheld_tables: list[str] = field(default_factory=list)


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def _specificity(pattern: str) -> tuple[int, int, str]:
    literal = sum(1 for c in pattern if c not in _GLOB_CHARS)
    return (-literal, -len(pattern), pattern)


@dataclass(frozen=True)
class Role:
    """A compiled role: resolves columns to rules and masks tables."""

    name: str
    raw: bool
    can_detokenize: bool
    policy: str | None
    exact: Mapping[str, Rule]
    globs: tuple[Rule, ...]
    tags: Mapping[str, Rule]

    def resolve(self, table: str, column: str, tags: Sequence[str] = ()) -> Rule | None:
        """The rule for ``table.column`` (exact, then globs, then tags), or None: withhold."""
        name = f"{table}.{column}"
        rule = self.exact.get(name)
        if rule is not None:
            return rule
        for g in self.globs:
            if fnmatch.fnmatchcase(name, g.key):
                return g
        for tag in tags:
            if tag in self.tags:
                return self.tags[tag]
        return None

    def _context(self, key: Callable[[str], bytes], table: str, column: str, entity_key: str | None) -> MaskContext:
        return MaskContext(key=key, table=table, column=column, entity_key=entity_key, role=self.name)

    def apply(
        self,
        tables: Mapping[str, pa.Table],
        key: Callable[[str], bytes],
        *,
        entity_key: str | None = None,
        tags: Mapping[str, Sequence[str]] | None = None,
    ) -> MaskedTables:
        """Mask every column of ``tables`` for this role, withholding unclassified ones.

        Args:
            tables: table name -> Arrow table (an entity instance's tables).
            key: ``Keyring.derive``: purpose -> 32-byte key.
            entity_key: the instance's key (``"customer/42"``), needed by ``date_shift``.
            tags: ``"table.column"`` -> tags from ``pii scan``.

        Returns:
            The masked tables (tables with every column withheld are left out) and the
            withheld ``table.column`` names, sorted.
        """
        if self.raw:
            return MaskedTables(dict(tables))
        tags = tags or {}
        out: dict[str, pa.Table] = {}
        withheld: list[str] = []
        withheld_tables: list[str] = []
        for tname, table in tables.items():
            arrays, fields = [], []
            for col_field, col in zip(table.schema, table.columns):
                rule = self.resolve(tname, col_field.name, tags.get(f"{tname}.{col_field.name}", ()))
                if rule is None:
                    withheld.append(f"{tname}.{col_field.name}")
                    continue
                ctx = self._context(key, tname, col_field.name, entity_key)
                masked = rule.fn.apply(col, rule.params, ctx)
                if len(masked) != table.num_rows:
                    raise PolicyError(
                        f"role {self.name!r}, column {tname}.{col_field.name}: {rule.fn.name} returned "
                        f"{len(masked)} values for {table.num_rows} rows"
                    )
                arrays.append(masked)
                fields.append(pa.field(col_field.name, masked.type, nullable=True, metadata=col_field.metadata))
            if not arrays:
                withheld_tables.append(tname)
                continue
            out[tname] = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))
        return MaskedTables(out, sorted(withheld), sorted(withheld_tables))

    def detokenize(
        self,
        table: str,
        column: str,
        values: pa.Array | pa.ChunkedArray,
        key: Callable[[str], bytes],
        *,
        entity_key: str | None = None,
        tags: Sequence[str] = (),
    ) -> pa.Array:
        """Original values of a column this role sees tokenized (the caller audits it).

        AccessDenied if the role may not detokenize; PolicyError if the column's
        function is not reversible.
        """
        if not self.can_detokenize:
            raise AccessDenied(f"role {self.name!r} may not detokenize (set detokenize = true on the role)")
        rule = self.resolve(table, column, tags)
        if rule is None or rule.fn.detokenize is None:
            what = "withheld" if rule is None else f"masked with {rule.fn.name}, which is not reversible"
            raise PolicyError(f"role {self.name!r}: column {table}.{column} is {what}")
        return rule.fn.detokenize(values, rule.params, self._context(key, table, column, entity_key))

    def validate_columns(
        self,
        table_columns: Mapping[str, Sequence[str]],
        *,
        all_tables: bool = True,
        tags: Mapping[str, Sequence[str]] | None = None,
    ) -> list[str]:
        """Check exact rules against the real schema; return the columns that would be withheld.

        An exact ``table.column`` rule naming a missing column fails closed (a typo
        would otherwise leave the real column withheld, or worse, unnoticed). With
        ``all_tables = False`` rules naming tables absent from ``table_columns`` are
        not errors (the mapping covers one entity type only).
        """
        if self.raw:
            return []
        problems = []
        for name, rule in sorted(self.exact.items()):
            table, _, column = name.rpartition(".")
            if table not in table_columns:
                if all_tables:
                    problems.append(f"{name}: no table {table!r}")
            elif column not in table_columns[table]:
                problems.append(f"{name}: table {table!r} has no column {column!r}")
        if problems:
            raise PolicyError(
                f"role {self.name!r} (policy {self.policy!r}): rules name missing columns: " + "; ".join(problems)
            )
        tags = tags or {}
        return sorted(
            f"{t}.{c}"
            for t, cols in table_columns.items()
            for c in cols
            if self.resolve(t, c, tags.get(f"{t}.{c}", ())) is None
        )

    def fingerprint(self) -> str:
        """SHA-256 of the effective policy (what is masked how), for bundle manifests."""
        doc = {
            "version": FINGERPRINT_VERSION,
            "raw": self.raw,
            "columns": {r.key: r.describe() for r in [*self.exact.values(), *self.globs]},
            "tags": {k: r.describe() for k, r in self.tags.items()},
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class PolicySet:
    """Every compiled role; built by :func:`compile_policy`."""

    roles: Mapping[str, Role]

    def role(self, name: str) -> Role:
        """The role ``name``; PolicyError listing the known roles otherwise."""
        try:
            return self.roles[name]
        except KeyError:
            raise PolicyError(f"unknown role {name!r} (known: {', '.join(sorted(self.roles)) or 'none'})") from None


def _errors(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors():
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{'.'.join(str(p) for p in e['loc'])}: {msg}" if e["loc"] else msg)
    return out


def _parse(model: type[BaseModel], raw: Any, where: str, problems: list[str]) -> Any:
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems.extend(f"{where}: {p}" for p in _errors(exc))
        return None


def _chain(name: str, specs: Mapping[str, PolicySpec], problems: list[str]) -> list[str] | None:
    """Policy names from the root ancestor down to ``name``; None after a problem (each
    problem is reported once, however many policies lead to it)."""
    chain = [name]
    while specs[chain[-1]].extends is not None:
        parent = specs[chain[-1]].extends
        if parent in chain:
            cycle = chain[chain.index(parent) :]
            start = min(cycle)
            loop = cycle[cycle.index(start) :] + cycle[: cycle.index(start)] + [start]
            problem = f"policy {start!r}: extends cycle {' -> '.join(loop)}"
        elif parent not in specs:
            problem = f"policy {chain[-1]!r}: extends unknown policy {parent!r}"
        else:
            chain.append(parent)
            continue
        if problem not in problems:
            problems.append(problem)
        return None
    return chain[::-1]


def compile_policy(roles: Mapping[str, Any], policies: Mapping[str, Any]) -> PolicySet:
    """Validate roles and policies once and compile them.

    Args:
        roles: role name -> :class:`RoleSpec` or its dict form (``[roles.*]``).
        policies: policy name -> :class:`PolicySpec` or its dict form (``[policies.*]``).

    Returns:
        A :class:`PolicySet`.

    Raises:
        PolicyError: listing every problem found (unknown policy or function, bad
        parameters, cycles in ``extends``, malformed column keys), each naming the
        role or policy and column concerned.
    """
    problems: list[str] = []
    role_specs = {n: _parse(RoleSpec, r, f"role {n!r}", problems) for n, r in roles.items()}
    pol_specs = {n: _parse(PolicySpec, p, f"policy {n!r}", problems) for n, p in policies.items()}
    pol_specs = {n: p for n, p in pol_specs.items() if p is not None}
    users: dict[str, list[str]] = {}
    for rname, spec in role_specs.items():
        if spec is not None and spec.policy is not None:
            users.setdefault(spec.policy, []).append(rname)

    compiled: dict[str, dict[tuple[str, str], Rule]] = {}
    for pname, spec in pol_specs.items():
        used_by = f" (role {', '.join(users[pname])})" if pname in users else ""
        own: dict[tuple[str, str], Rule] = {}
        for section, rules in (("columns", spec.columns), ("tags", spec.tags)):
            for key, rule_spec in rules.items():
                where = f"policy {pname!r}{used_by}, {'column' if section == 'columns' else 'tag'} {key!r}"
                if section == "columns" and not _is_glob(key) and not (
                    "." in key and all(key.rpartition(".")[::2])
                ):
                    problems.append(f"{where}: column keys are 'table.column' (globs allowed, e.g. '*.customer_id')")
                    continue
                try:
                    fn = get_function(rule_spec.fn)
                    own[(section, key)] = Rule(key, fn, fn.parse(rule_spec.params), pname)
                except PolicyError as exc:
                    problems.append(f"{where}: {exc.message}")
        compiled[pname] = own

    effective: dict[str, dict[tuple[str, str], Rule]] = {}
    for pname in pol_specs:
        chain = _chain(pname, pol_specs, problems)
        if chain is not None:
            merged: dict[tuple[str, str], Rule] = {}
            for link in chain:
                merged.update(compiled[link])
            effective[pname] = merged

    built: dict[str, Role] = {}
    for rname, spec in role_specs.items():
        if spec is None:
            continue
        if spec.raw:
            built[rname] = Role(rname, True, spec.detokenize, None, {}, (), {})
            continue
        if spec.policy not in pol_specs:
            known = ", ".join(sorted(pol_specs)) or "none"
            problems.append(f"role {rname!r}: unknown policy {spec.policy!r} (known: {known})")
            continue
        rules = effective.get(spec.policy)
        if rules is None:
            continue
        columns = {k: r for (s, k), r in rules.items() if s == "columns"}
        built[rname] = Role(
            name=rname,
            raw=False,
            can_detokenize=spec.detokenize,
            policy=spec.policy,
            exact={k: r for k, r in columns.items() if not _is_glob(k)},
            globs=tuple(sorted((r for k, r in columns.items() if _is_glob(k)), key=lambda r: _specificity(r.key))),
            tags={k: r for (s, k), r in rules.items() if s == "tags"},
        )
    if problems:
        err = PolicyError(f"{len(problems)} problem(s) in roles/policies: " + "; ".join(problems))
        err.problems = problems  # type: ignore[attr-defined]
        raise err
    return PolicySet(built)
