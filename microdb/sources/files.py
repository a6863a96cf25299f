"""Folders of Parquet or CSV files: each file (or sub-folder of files) is one table named
by its stem. They declare no keys; relations come from the configuration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from microdb.errors import SourceError
from microdb.sources.base import Catalog, Column, KeyIn, Since, Source, TableInfo


class FileFolderSource(Source):
    scheme = "parquet"
    file_format = "parquet"

    def __init__(self, name: str, url: str, options: dict[str, Any] | None = None, path: Path | None = None) -> None:
        super().__init__(name, url, options)
        if path is None or not path.is_dir():
            raise SourceError(f"source {name!r}: folder {path} does not exist")
        self.path = path
        self._datasets: dict[str, ds.Dataset] = {}

    def _files(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        suffix = f".{self.file_format}"
        for p in sorted(self.path.iterdir()):
            if p.is_file() and p.suffix == suffix:
                out[p.stem] = p
            elif p.is_dir() and any(p.rglob(f"*{suffix}")):
                out[p.name] = p
        return out

    def _dataset(self, table: str, path: Path) -> ds.Dataset:
        d = self._datasets.get(table)
        if d is None:
            try:
                d = self._datasets[table] = ds.dataset(path, format=self.file_format)
            except (pa.ArrowInvalid, OSError) as exc:
                raise SourceError(f"source {self.name!r}: cannot read {path}: {exc}") from None
        return d

    def _introspect(self) -> Catalog:
        tables = {}
        for name, path in self._files().items():
            schema = self._dataset(name, path).schema
            tables[name] = TableInfo(name, tuple(Column(f.name, f.type, f.nullable) for f in schema), (), ())
        return Catalog(self.name, tables)

    def read(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        key_in: KeyIn | None = None,
        since: Since | None = None,
    ) -> pa.Table:
        info = self.catalog().table(table)
        target = self._target(table, columns)
        self._where(info, key_in, since)
        dataset = self._datasets[table]
        expr = None
        if since is not None:
            expr = pc.field(since.column) > pa.scalar(since.value, info.column(since.column).type)
        if key_in is not None and len(key_in.columns) == 1:
            c = key_in.columns[0]
            cond = pc.field(c).isin(key_in.values.column(c).cast(info.column(c).type))
            expr = cond if expr is None else expr & cond
        need = list(dict.fromkeys(target.names + (list(key_in.columns) if key_in else [])))
        self.queries += 1
        try:
            res = dataset.to_table(columns=need, filter=expr)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"source {self.name!r}: reading {table}: {exc}") from None
        if key_in is not None and len(key_in.columns) > 1:
            keys = key_in.values.select(list(key_in.columns)).group_by(list(key_in.columns)).aggregate([])
            res = res.join(keys, list(key_in.columns), join_type="left semi")
        return res.select(target.names).cast(target)


class CsvFolderSource(FileFolderSource):
    scheme = "csv"
    file_format = "csv"
