"""Folders of Parquet or CSV files: each file, or each subfolder of files (one partitioned
table, Hive-style ``key=value`` folders become columns), is a table named by its stem.

Files declare no keys: primary and foreign keys come from ``[[relations]]`` and the entity
configuration. Reads go through ``pyarrow.dataset`` with the filters pushed into the scan
(``is_in`` per key column; a composite key is then matched exactly with a join), and count
one query per table scan.

CSV types are inferred once per table, from its first file, and cached so every read of
the source sees the same schema (empty fields are NULL);
``options["column_types"] = {table: {column: "DECIMAL(12,2)"}}`` overrides the inference
with declared SQL types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from microdb.errors import ConfigError, SchemaError, SourceError
from microdb.sources.base import Column, Since, Source, TableInfo, file_path, normalize_type, sql_type_to_arrow


class FileFolderSource(Source):
    """``parquet:///abs/folder`` (or a folder relative to the workspace)."""

    scheme: ClassVar[str] = "parquet"
    key_chunk = None  # is_in takes any number of keys in one scan
    suffix: ClassVar[str] = ".parquet"

    def __init__(self, name: str, url: str, options: dict | None = None) -> None:
        super().__init__(name, url, options)
        self.path: Path = file_path(url)
        self._datasets: dict[str, ds.Dataset] = {}

    # layout -------------------------------------------------------------------------------
    def _folder(self) -> Path:
        if not self.path.is_dir():
            raise SourceError(
                f"{self.label}: folder {self.path} does not exist "
                "(relative paths are taken from the workspace folder)"
            )
        return self.path

    def _table_paths(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for entry in sorted(self._folder().iterdir()):
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_file() and entry.suffix.lower() == self.suffix:
                name = entry.stem
            elif entry.is_dir() and any(p.suffix.lower() == self.suffix for p in entry.rglob("*") if p.is_file()):
                name = entry.name
            else:
                continue
            if name in found:
                raise ConfigError(f"{self.label}: table {name!r} is both {found[name]} and {entry}; keep one")
            found[name] = entry
        return found

    def _open_dataset(self, path: Path, table: str) -> ds.Dataset:
        return ds.dataset(path, format="parquet", partitioning="hive" if path.is_dir() else None)

    def _dataset(self, table: str) -> ds.Dataset:
        dataset = self._datasets.get(table)
        if dataset is None:
            raise SchemaError(f"{self.label}: no table {table!r}")
        return dataset

    # Source -------------------------------------------------------------------------------
    def _load_catalog(self) -> dict[str, TableInfo]:
        tables: dict[str, TableInfo] = {}
        for name, path in self._table_paths().items():
            try:
                dataset = self._open_dataset(path, name)
            except (pa.ArrowInvalid, OSError) as exc:
                raise self.failed(f"reading the schema of {path}", exc) from exc
            self._datasets[name] = dataset
            columns = tuple(Column(f.name, normalize_type(f.type), f.nullable) for f in dataset.schema)
            tables[name] = TableInfo(name, columns, (), ())
        return tables

    def _read(self, info: TableInfo, names: list[str], keys: pa.Table | None, since: Since | None) -> pa.Table:
        dataset = self._dataset(info.name)
        physical = dataset.schema
        conditions = []
        if since is not None:
            conditions.append(ds.field(since.column) > pa.scalar(since.value, info.column(since.column).type))
        key_names = list(keys.column_names) if keys is not None else []
        exact = len(key_names) <= 1
        if keys is not None:
            for n in key_names:
                values = keys.column(n).combine_chunks()
                try:
                    values = values.cast(physical.field(n).type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    exact = False  # stored type narrower than some key: match after the scan
                else:
                    conditions.append(ds.field(n).isin(values))
        scan = list(dict.fromkeys(names + key_names))
        flt = None
        for c in conditions:
            flt = c if flt is None else flt & c
        self.queries += 1
        try:
            rows = dataset.to_table(columns=scan, filter=flt)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
            raise self.failed(f"read of {info.name!r}", exc) from exc
        if keys is not None and not exact:
            typed = self._conform(rows, pa.schema([pa.field(n, info.column(n).type) for n in scan]), info)
            rows = typed.join(keys, keys=key_names, join_type="inner", use_threads=False)
        return rows.select(names)

    def _ping(self) -> None:
        self._folder()

    def _close(self) -> None:
        self._datasets.clear()


class CsvFolderSource(FileFolderSource):
    """``csv:///abs/folder``: one table per ``*.csv`` file or subfolder of them."""

    scheme = "csv"
    suffix = ".csv"

    def _open_dataset(self, path: Path, table: str) -> ds.Dataset:
        first = path if path.is_file() else next(p for p in sorted(path.rglob("*.csv")) if p.is_file())
        convert = pacsv.ConvertOptions(strings_can_be_null=True)
        inferred = pacsv.read_csv(first, convert_options=convert).schema
        overrides: dict[str, Any] = dict(self.options.get("column_types", {}).get(table, {}))
        fields = []
        for f in inferred:
            declared = overrides.pop(f.name, None)
            if declared is not None:
                t = sql_type_to_arrow(str(declared))
                if t is None:
                    raise ConfigError(f"{self.label}: column_types.{table}.{f.name}: unknown type {declared!r}")
            else:
                t = normalize_type(f.type)
            fields.append(pa.field(f.name, t))
        if overrides:
            raise ConfigError(
                f"{self.label}: column_types.{table} names columns {sorted(overrides)} that {first.name} lacks"
            )
        schema = pa.schema(fields)
        fmt = ds.CsvFileFormat(convert_options=pacsv.ConvertOptions(column_types=schema, strings_can_be_null=True))
        return ds.dataset(path, format=fmt, schema=schema, partitioning="hive" if path.is_dir() else None)

