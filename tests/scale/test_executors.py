"""Partitioned sync on every executor (in process, spawned processes, a local Ray): the
same bytes as a plain sync, retries when a worker is killed, and never half a partition."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import use_s3_store
from killers import dying, refuse, sample_stream

import microdb
from microdb.errors import SchemaError
from microdb.executors import (
    ExecutorError,
    LocalExecutor,
    ProcessExecutor,
    RayExecutor,
    get_executor,
)
from microdb.projection import Selection

CUSTOMERS = 120


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """ray.init(num_cpus=2) after the S3 credentials are in the environment (workers inherit
    it) and with this folder importable by workers (the tests ship wrappers defined here)."""
    try:
        import ray
    except ImportError:
        pytest.fail("the Ray executor tests need ray: pip install -e '.[scale]'", pytrace=False)
    here = Path(__file__).parent
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent), str(here.parents[1])] + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _ipc(t: pa.Table) -> bytes:
    """IPC bytes of the table, rebuilt by ``take`` so that the padding bits of a validity
    bitmap (which a byte-aligned slice inherits from its neighbours' rows) are zero."""
    t = t.take(pa.array(range(t.num_rows), pa.int64()))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t.combine_chunks())
    return sink.getvalue().to_pybytes()


def decrypted(ws: microdb.Workspace) -> dict[str, dict[str, bytes]]:
    """Every stored entity's unsealed tables, as Arrow IPC bytes."""
    ws.store.invalidate()
    return {k: {n: _ipc(t) for n, t in ws.store.get("customer", k).tables.items()} for k in ws.store.keys("customer")}


def _ws(path, s3_server=None, customers: int = CUSTOMERS) -> microdb.Workspace:
    from microdb.init import init_workspace

    init_workspace(path, demo=True, customers=customers, seed=9)
    if s3_server:
        use_s3_store(path, s3_server, partitions=4)
    else:
        with (path / "microdb.toml").open("a") as fh:
            fh.write("\n[store]\npartitions = 4\n")
    return microdb.open(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A plain one-pass sync into the local SQLite store."""
    with _ws(tmp_path_factory.mktemp("ref")) as ws:
        ws.sync("customer")
        return decrypted(ws)


def test_every_executor_gives_the_same_bytes(reference, tmp_path, s3_server, ray_local):
    with _ws(tmp_path / "s3", s3_server) as ws:
        for ex in (LocalExecutor(), ProcessExecutor(2), RayExecutor()):
            with ex:
                res = ws.sync("customer", executor=ex)
            assert res.entities == CUSTOMERS and len(res.partitions) == ws.store.partitions
            assert decrypted(ws) == reference, ex.name
        assert len({p.worker for p in res.partitions}) >= 1
    with _ws(tmp_path / "sqlite") as ws:  # the local backend under Ray workers too
        ws.sync("customer", executor=RayExecutor())
        assert decrypted(ws) == reference


def test_map_partitions_contract(ray_local):
    expected = [sample_stream(s) for s in range(6)]
    for ex in (LocalExecutor(), ProcessExecutor(2), RayExecutor()):
        done: list[tuple[int, int]] = []
        assert ex.map_partitions(sample_stream, list(range(6)), lambda n, t, done=done: done.append((n, t))) == expected
        assert done[-1] == (6, 6)
        with pytest.raises(SchemaError, match="shard 2: table 'x'"):  # terminal errors come back as they are
            ex.map_partitions(refuse, list(range(4)))
    with pytest.raises(microdb.ConfigError, match="unknown executor"):
        get_executor("threads")


def test_a_killed_ray_worker_is_retried(reference, tmp_path, s3_server, ray_local):
    marker = tmp_path / "killed"
    with _ws(tmp_path / "ws", s3_server) as ws:
        victim = ws.projector("customer").plan(Selection())[0][0]
        task = functools.partial(dying, marker=str(marker), victim=victim)
        result = ws.projector("customer").sync_partitioned(Selection(), RayExecutor(max_retries=2), ws.root, task=task)
        assert marker.read_text().count("\n") == 1  # one worker died …
        assert result.entities == CUSTOMERS  # … and its partition was retried
        assert decrypted(ws) == reference


def test_a_partition_that_keeps_dying_fails_clearly_and_shows_nothing(tmp_path, s3_server, ray_local):
    marker = tmp_path / "killed"
    with _ws(tmp_path / "ws", s3_server) as ws:
        ws.sync("customer")
        before = {k: ws.store.info("customer", k).version for k in ws.store.keys("customer")}
        plan = ws.projector("customer").plan(Selection())
        victim = plan[1][0]
        task = functools.partial(dying, marker=str(marker), victim=victim, always=True)
        with pytest.raises(ExecutorError, match=r"partition \d+ failed after 2 attempt\(s\).*worker died"):
            ws.projector("customer").sync_partitioned(Selection(), RayExecutor(max_retries=1), ws.root, task=task)
        assert marker.read_text().count("\n") == 2
        ws.store.invalidate()
        for part, keys in plan:
            changed = {k for k in keys if ws.store.info("customer", k).version != before[k]}
            assert changed in (set(), set(keys)), f"partition {part} is half published"
            if part == victim:
                assert changed == set()


def test_process_executor_retries_a_dead_worker(reference, tmp_path):
    marker = tmp_path / "killed"
    with _ws(tmp_path / "ws") as ws:
        victim = ws.projector("customer").plan(Selection())[2][0]
        task = functools.partial(dying, marker=str(marker), victim=victim)
        ws.projector("customer").sync_partitioned(Selection(), ProcessExecutor(2), ws.root, task=task)
        assert marker.exists()
        assert decrypted(ws) == reference


def test_cli_sync_with_an_executor(tmp_path, capsys, monkeypatch):
    from microdb.cli import main

    _ws(tmp_path / "ws", customers=60).close()
    monkeypatch.setattr(sys, "argv", ["microdb", "-w", str(tmp_path / "ws"), "sync", "customer", "--all",
                                      "--executor", "process", "--workers", "2"])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr().out
    assert exit_.value.code in (0, None), out
    assert "synced 60 customer entities" in out and "4 key partitions on the process executor" in out
