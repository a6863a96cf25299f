"""The typed, versioned model of ``microdb.toml`` and its loader.

Validation collects every problem and raises one :class:`ConfigError` naming the file,
the dotted key and the reason, so a user fixes a config in one pass. Secrets never live
here: the master key comes from :mod:`microdb.keys`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from microdb.errors import ConfigError

CONFIG_FILE = "microdb.toml"
CONFIG_VERSION = 1
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1h"`` or ``"2d"``."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 1h, 2d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Model):
    url: str
    options: dict[str, Any] = Field(default_factory=dict)


class RelationConfig(_Model):
    """A parent/child link the source catalogs do not declare (e.g. across sources)."""

    child: str  # "source.table"
    columns: list[str]
    parent: str  # "source.table"
    parent_columns: list[str]

    @field_validator("child", "parent")
    @classmethod
    def _qualified(cls, v: str) -> str:
        if v.count(".") != 1:
            raise ValueError(f"must be 'source.table', got {v!r}")
        return v


class TableConfig(_Model):
    """One table of an entity type; the root has no ``parent``."""

    source: str
    table: str
    parent: str | None = None
    join: dict[str, str] = Field(default_factory=dict)  # child column -> parent column
    watermark: str | None = None
    columns: list[str] | None = None  # project only these (default: all)


class ReferenceConfig(_Model):
    source: str
    table: str
    columns: list[str] | None = None


class EntityConfig(_Model):
    root: str
    key: list[str] | None = None
    on_demand: Literal["always", "ttl", "never"] = "ttl"
    ttl: float = 3600.0
    serve_stale: bool = False  # a failed on-demand refresh serves the sealed copy, with a warning
    tables: dict[str, TableConfig]
    references: dict[str, ReferenceConfig] = Field(default_factory=dict)

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> float:
        return parse_duration(v)


class StoreConfig(_Model):
    """``[store]``: local SQLite at ``path`` (default), or S3-compatible object storage at ``url``.

    Object-store credentials come from the environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), never from this file.
    """

    path: str = ".microdb/store.sqlite"
    compression_level: int = Field(default=3, ge=1, le=19)
    batch_size: int = Field(default=2000, ge=1)
    url: str | None = None  # "s3://bucket/prefix"
    endpoint: str | None = None  # e.g. "http://127.0.0.1:9000" for MinIO; default: AWS
    region: str = "us-east-1"
    partitions: int = Field(default=16, ge=1, le=4096)  # key partitions: unit of parallel sync and S3 publish
    cache_seconds: float = Field(default=1.0, ge=0)  # how long a reader trusts a cached S3 partition index

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\s]*)?", v):
            raise ValueError(f"must be 's3://bucket/prefix' (a valid bucket name), got {v!r}")
        return v


class QueryConfig(_Model):
    timeout: float = 30.0
    max_rows: int = 100_000
    pool_size: int = 256
    pool_memory_mb: int = 512
    memory_limit: str = "2GB"  # DuckDB's cap per role database (queries beyond it fail, not the machine)
    fanout_workers: int = 4

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float:
        return parse_duration(v)


class AuditConfig(_Model):
    enabled: bool = True
    path: str = ".microdb/audit"
    max_bytes: int = 64 * 1024 * 1024
    fsync: bool = False  # True: every record reaches the disk before the action returns


class LineageConfig(_Model):
    enabled: bool = True
    namespace: str = "microdb"
    file: str = ".microdb/lineage.jsonl"
    http_url: str | None = None


class ServerUser(_Model):
    """A login of the Postgres-wire server: its role and how it authenticates."""

    role: str
    password_verifier: str | None = None  # SCRAM-SHA-256$…, from `microdb verifier`; never a password
    trusted_local: bool = False  # loopback connections need no password


class ServerToken(_Model):
    """A bearer token of the HTTP API: its role and the hash of the token (never the token)."""

    role: str
    token_hash: str  # "sha256:<64 hex>", from `microdb token NAME --role R`

    @field_validator("token_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", v):
            raise ValueError("must be 'sha256:' and 64 lowercase hex digits (see `microdb token`); never the token itself")
        return v


class ServerConfig(_Model):
    pg: str = "127.0.0.1:6543"
    http: str = "127.0.0.1:8642"
    users: dict[str, ServerUser] = Field(default_factory=dict)
    tokens: dict[str, ServerToken] = Field(default_factory=dict)
    tls_cert: str | None = None
    tls_key: str | None = None
    require_tls: bool = False


class SynthConfig(_Model):
    """``[synth]``: where models and bundles go, which masked view models learn from."""

    role: str | None = None  # default: workspace.default_role, else the implicit raw role
    holdout: float = Field(0.2, ge=0.0, lt=1.0)  # share of entities kept out of training, for reports
    models_dir: str = "models"
    bundles_dir: str = "bundles"
    exclude: list[str] = Field(default_factory=list)  # "table.column" never learned (besides masked ones)
    constraints: dict[str, list[str]] = Field(default_factory=dict)  # entity type -> constraints
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)  # generator -> default parameters
    retention_days: float | None = Field(None, gt=0)  # `microdb gc` retires older bundles
    shard_entities: int = Field(10_000, ge=1)  # sampling works in shards of this many entities (seed streams)


class CharterConfig(_Model):
    """``[charter]``: why synthetic data is made, for whom, and the thresholds a bundle must meet."""

    purpose: str = ""
    audience: str = ""
    approver: str = ""
    thresholds: dict[str, str] = Field(default_factory=dict)  # metric -> ">= 0.7"
    target: str | None = None  # "table.column" predicted in the utility (TSTR) check
    level: Literal["row", "entity"] = "row"  # predict the target per row, or per entity (any row has it)
    protected: list[str] = Field(default_factory=list)  # "table.column" subgroups for fairness
    quasi_identifiers: list[str] = Field(default_factory=list)
    sensitive: str | None = None  # "table.column" for attribute inference


class WorkspaceSection(_Model):
    name: str = "microdb"
    key_file: str = ".microdb/master.key"
    default_role: str | None = None


class Config(_Model):
    version: int = CONFIG_VERSION
    workspace: WorkspaceSection = Field(default_factory=WorkspaceSection)
    store: StoreConfig = Field(default_factory=StoreConfig)
    query: QueryConfig = Field(default_factory=QueryConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    lineage: LineageConfig = Field(default_factory=LineageConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    relations: list[RelationConfig] = Field(default_factory=list)
    entities: dict[str, EntityConfig] = Field(default_factory=dict)
    roles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    charter: CharterConfig = Field(default_factory=CharterConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)

    def entity(self, name: str) -> EntityConfig:
        try:
            return self.entities[name]
        except KeyError:
            known = ", ".join(sorted(self.entities)) or "none configured"
            raise ConfigError(f"unknown entity type {name!r} (known: {known})") from None


def _cross_check(cfg: Config) -> list[str]:
    """Problems pydantic cannot see: references between sections."""
    problems: list[str] = []
    if cfg.version != CONFIG_VERSION:
        problems.append(f"version: unsupported config version {cfg.version} (this microdb reads {CONFIG_VERSION})")
    for i, rel in enumerate(cfg.relations):
        for side in (rel.child, rel.parent):
            if side.split(".")[0] not in cfg.sources:
                problems.append(f"relations[{i}]: unknown source {side.split('.')[0]!r}")
        if len(rel.columns) != len(rel.parent_columns) or not rel.columns:
            problems.append(f"relations[{i}]: columns and parent_columns must be non-empty and the same length")
    for uname, user in cfg.server.users.items():
        if cfg.roles and user.role not in cfg.roles:
            problems.append(f"server.users.{uname}.role: unknown role {user.role!r} (known: {', '.join(sorted(cfg.roles))})")
        if not user.password_verifier and not user.trusted_local:
            problems.append(f"server.users.{uname}: set password_verifier (see `microdb verifier`) or trusted_local = true")
    seen_hashes: dict[str, str] = {}
    for tname, tok in cfg.server.tokens.items():
        if cfg.roles and tok.role not in cfg.roles:
            problems.append(f"server.tokens.{tname}.role: unknown role {tok.role!r} (known: {', '.join(sorted(cfg.roles))})")
        if tok.token_hash in seen_hashes:
            problems.append(f"server.tokens.{tname}.token_hash: same token as server.tokens.{seen_hashes[tok.token_hash]}")
        seen_hashes.setdefault(tok.token_hash, tname)
    if cfg.synth.role is not None and cfg.roles and cfg.synth.role not in cfg.roles:
        problems.append(f"synth.role: unknown role {cfg.synth.role!r} (known: {', '.join(sorted(cfg.roles))})")
    if cfg.charter.thresholds:
        from synth.evaluate.charter import parse_threshold

        for metric, rule in cfg.charter.thresholds.items():
            try:
                parse_threshold(metric, rule)
            except ConfigError as exc:
                problems.append(f"charter.thresholds.{metric}: {exc.message}")
    for etype in cfg.synth.constraints:
        if etype not in cfg.entities:
            problems.append(f"synth.constraints.{etype}: unknown entity type (known: {', '.join(sorted(cfg.entities))})")
    for name, ent in cfg.entities.items():
        where = f"entities.{name}"
        if ent.root not in ent.tables:
            problems.append(f"{where}.root: {ent.root!r} is not one of its tables ({', '.join(ent.tables)})")
        for tname, t in ent.tables.items():
            tw = f"{where}.tables.{tname}"
            if t.source not in cfg.sources:
                problems.append(f"{tw}.source: unknown source {t.source!r} (known: {', '.join(cfg.sources) or 'none'})")
            if tname == ent.root:
                if t.parent is not None:
                    problems.append(f"{tw}.parent: the root table cannot have a parent")
                continue
            if t.parent is None:
                problems.append(f"{tw}.parent: missing (every table but the root needs a parent)")
            elif t.parent not in ent.tables:
                problems.append(f"{tw}.parent: {t.parent!r} is not a table of entity {name!r}")
            if not t.join:
                problems.append(f"{tw}.join: missing (map child columns to parent columns)")
        for rname, r in ent.references.items():
            if r.source not in cfg.sources:
                problems.append(f"{where}.references.{rname}.source: unknown source {r.source!r}")
            if rname in ent.tables:
                problems.append(f"{where}.references.{rname}: name clashes with a table of the entity")
        # parent chains must reach the root without cycles
        for tname in ent.tables:
            seen, cur = set(), tname
            while cur is not None and cur in ent.tables and cur not in seen:
                seen.add(cur)
                cur = ent.tables[cur].parent
            if cur is not None and cur in seen:
                problems.append(f"{where}.tables.{tname}: parent chain has a cycle")
    return problems


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(data: dict[str, Any], origin: str) -> Config:
    """Validate a parsed TOML document; raise one ConfigError listing every problem."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {_format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{origin}: invalid configuration:\n" + "\n".join(lines)) from None
    problems = _cross_check(cfg)
    if problems:
        raise ConfigError(f"{origin}: invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
    return cfg


def load_config(path: Path) -> Config:
    """Read and validate ``microdb.toml`` at ``path``."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file (run `microdb init` to create a workspace)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    return parse_config(data, str(path))
