"""Creating workspaces: ``microdb init`` and appending discovered entity types."""

from __future__ import annotations

import os
import time
from pathlib import Path

from microdb.config import CONFIG_FILE, load_config
from microdb.errors import ConfigError
from microdb.keys import MASTER_KEY_ENV, generate_key_file

TEMPLATE = """\
# microdb workspace. Reference: README.md, section "Configuration".
version = 1

[workspace]
name = "{name}"
# key_file = ".microdb/master.key"   # or set MICRODB_MASTER_KEY

# [sources.crm]
# url = "postgresql://postgres@127.0.0.1:5432/test?schema=crm"

# Links the source catalogs do not declare (for example across sources):
# [[relations]]
# child = "core.accounts"
# columns = ["customer_id"]
# parent = "crm.customers"
# parent_columns = ["customer_id"]

# Entity types: run `microdb discover --source crm --root customers --write`.
"""


def _prepare(directory: Path, force: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cfg_path = directory / CONFIG_FILE
    if cfg_path.exists() and not force:
        raise ConfigError(f"{cfg_path} already exists (pass --force to replace it)")
    key_file = directory / ".microdb" / "master.key"
    if not os.environ.get(MASTER_KEY_ENV) and not key_file.exists():
        generate_key_file(key_file)
    gitignore = directory / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(".microdb/\n")
    return cfg_path


def init_workspace(directory: Path, *, demo: bool = False, customers: int = 2000, seed: int = 7, force: bool = False) -> list[str]:
    """Create a workspace (optionally the bank demo); return lines describing what was done."""
    directory = directory.expanduser().resolve()
    cfg_path = _prepare(directory, force)
    if force:
        store = directory / ".microdb" / "store.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(str(store) + suffix).unlink(missing_ok=True)
    lines = [f"workspace: {directory}"]
    if not demo:
        cfg_path.write_text(TEMPLATE.format(name=directory.name))
        lines.append(f"wrote {cfg_path} (edit its sources, then `microdb discover`)")
        return lines
    from fixtures.demo import build_demo

    started = time.perf_counter()
    text, counts = build_demo(directory, customers=customers, seed=seed)
    cfg_path.write_text(text)
    load_config(cfg_path)
    lines.append(
        f"generated the bank fixture ({customers} customers, seed {seed}) in {time.perf_counter() - started:.1f}s: "
        + ", ".join(f"{t} {n}" for t, n in counts.items())
    )
    lines.append(f"wrote {cfg_path}: sources crm (SQLite), core (SQLite), payments (Parquet) and entity type 'customer'")
    return lines


def append_entity(cfg_path: Path, name: str, text: str) -> None:
    """Append a discovered ``[entities.NAME]`` section, refusing to overwrite an existing one."""
    cfg = load_config(cfg_path)
    if name in cfg.entities:
        raise ConfigError(f"{cfg_path}: entity type {name!r} already exists; edit it or pass --name")
    with cfg_path.open("a", encoding="utf-8") as fh:
        fh.write("\n" + text)
    load_config(cfg_path)
