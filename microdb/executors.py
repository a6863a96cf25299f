"""Executors: run one function over many partitions, in this process, in spawned processes,
or as Ray tasks on a cluster.

Every executor has the same contract, :meth:`Executor.map_partitions`: ``fn`` is applied to
each item of ``partitions`` and the results come back in input order. For the process and
Ray executors ``fn`` must be a module-level function and the items plain picklable data
(paths, keys, seeds) — each worker opens what it needs itself (a workspace from its folder,
a store from its config), nothing live is shipped. A partition whose worker dies, or that
raises a *transient* :class:`~microdb.errors.MicrodbError`, is retried up to
``max_retries`` times; a terminal error stops the whole map and is raised as it is.

>>> with get_executor("process", workers=2) as ex:
...     totals = ex.map_partitions(sample_shard, [(seed, 1000) for seed in range(8)])
"""

from __future__ import annotations

import multiprocessing
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ClassVar, Self, TypeVar

import pyarrow as pa

from microdb.errors import ConfigError, ExecutorError, MicrodbError
from microdb.store import StoreUnavailable  # noqa: F401 - registers a transient error class

T = TypeVar("T")
R = TypeVar("R")
Done = Callable[[int, int], None]
EXECUTORS = ("local", "process", "ray")


def transient_errors() -> list[type[BaseException]]:
    """Every MicrodbError class marked transient (retrying a partition may help)."""
    found: list[type[BaseException]] = []
    todo: list[type[MicrodbError]] = [MicrodbError]
    while todo:
        cls = todo.pop()
        if cls.transient and cls is not ExecutorError:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, MicrodbError) and exc.transient and not isinstance(exc, ExecutorError)


class Executor(ABC):
    """Runs ``fn`` over partitions; see the module docstring for the contract."""

    name: ClassVar[str]

    def __init__(self, workers: int | None = None, max_retries: int = 3) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.max_retries = max_retries

    @abstractmethod
    def map_partitions(self, fn: Callable[[T], R], partitions: Sequence[T], done: Done | None = None) -> list[R]:
        """``[fn(p) for p in partitions]``, run by this executor's workers; ``done(n, total)`` as they finish."""

    def close(self) -> None:
        """Release workers (and a Ray runtime this executor started)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _failed(self, index: int, attempts: int, why: str) -> ExecutorError:
        return ExecutorError(
            f"{self.name} executor: partition {index} failed after {attempts} attempt(s) "
            f"({self.max_retries} retries allowed): {why}; no partial partition was published"
        )


class LocalExecutor(Executor):
    """Partitions one after another in this process (the reference the others must match)."""

    name = "local"

    def map_partitions(self, fn: Callable[[T], R], partitions: Sequence[T], done: Done | None = None) -> list[R]:
        out: list[R] = []
        for i, part in enumerate(partitions):
            for attempt in range(self.max_retries + 1):
                try:
                    out.append(fn(part))
                    break
                except MicrodbError as exc:
                    if not _retryable(exc) or attempt == self.max_retries:
                        raise
            if done is not None:
                done(i + 1, len(partitions))
        return out


class ProcessExecutor(Executor):
    """Partitions in ``workers`` spawned processes (fork is unsafe with threads and fails here)."""

    name = "process"

    def map_partitions(self, fn: Callable[[T], R], partitions: Sequence[T], done: Done | None = None) -> list[R]:
        results: dict[int, R] = {}
        attempts = [0] * len(partitions)
        pending = list(range(len(partitions)))
        ctx = multiprocessing.get_context("spawn")
        while pending:
            broken: list[int] = []
            with ProcessPoolExecutor(min(self.workers, len(pending)), mp_context=ctx) as pool:
                futures: dict[Future, int] = {pool.submit(fn, partitions[i]): i for i in pending}
                for i in pending:
                    attempts[i] += 1
                waiting = set(futures)
                while waiting:
                    finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        i = futures[fut]
                        try:
                            results[i] = fut.result()
                        except BrokenProcessPool as exc:
                            if attempts[i] > self.max_retries:
                                raise self._failed(i, attempts[i], f"its worker process died ({exc})") from None
                            broken.append(i)
                            continue
                        except BaseException as exc:
                            if _retryable(exc) and attempts[i] <= self.max_retries:
                                broken.append(i)
                                continue
                            for other in waiting:
                                other.cancel()
                            raise
                        if done is not None:
                            done(len(results), len(partitions))
            pending = sorted(broken)
        return [results[i] for i in range(len(partitions))]


class RayExecutor(Executor):
    """One Ray task per partition, retried by Ray (``max_retries``) when its worker dies or a
    transient error is raised. ``address``: ``None``/``"local"`` starts a private local Ray,
    ``"auto"`` joins the running cluster, ``"ray://host:10001"`` a remote one."""

    name = "ray"

    def __init__(self, workers: int | None = None, max_retries: int = 3, address: str | None = None) -> None:
        super().__init__(workers, max_retries)
        try:
            import ray
        except ImportError:
            raise ConfigError("the ray executor needs Ray: pip install 'microdb[scale]'") from None
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            local = address in (None, "local")
            try:
                ray.init(address=None if local else address, num_cpus=workers if local else None,
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorError(f"ray executor: cannot start or reach Ray at {address or 'local'}: {exc}") from None
            self._owns = True
        self.workers = int(ray.cluster_resources().get("CPU", self.workers))

    def map_partitions(self, fn: Callable[[T], R], partitions: Sequence[T], done: Done | None = None) -> list[R]:
        ray = self._ray
        remote = ray.remote(max_retries=self.max_retries, retry_exceptions=transient_errors())(_apply)
        fn_ref = ray.put(fn)  # a function or a picklable callable (functools.partial), shipped once
        refs = [remote.remote(fn_ref, p) for p in partitions]
        index = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, R] = {}
        waiting = list(refs)
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                for ref in ready:
                    results[index[ref]] = self._get(ref, index[ref])
                    if done is not None:
                        done(len(results), len(partitions))
        except BaseException:
            for ref in waiting:
                ray.cancel(ref, force=True)
            raise
        return [results[i] for i in range(len(partitions))]

    def _get(self, ref: Any, i: int) -> Any:
        ex = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except ex.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, MicrodbError):
                raise cause from None
            raise self._failed(i, self.max_retries + 1, f"{type(cause).__name__}: {cause}") from None
        except (ex.WorkerCrashedError, ex.NodeDiedError, ex.ObjectLostError, ex.RaySystemError) as exc:
            text = " ".join(str(exc).split())[:300]
            raise self._failed(i, self.max_retries + 1, f"its worker died ({type(exc).__name__}: {text})") from None

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def _apply(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


def tables_to_ipc(tables: dict[str, pa.Table]) -> dict[str, bytes]:
    """Arrow tables as IPC streams: what a task returns across processes or Ray."""
    out = {}
    for name, table in tables.items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        out[name] = sink.getvalue().to_pybytes()
    return out


def tables_from_ipc(data: dict[str, bytes]) -> dict[str, pa.Table]:
    """Inverse of :func:`tables_to_ipc`."""
    return {name: pa.ipc.open_stream(blob).read_all() for name, blob in data.items()}


def get_executor(name: str, workers: int | None = None, address: str | None = None, max_retries: int = 3) -> Executor:
    """The executor called ``name`` (``local``, ``process`` or ``ray``)."""
    if name == "local":
        return LocalExecutor(1, max_retries)
    if name == "process":
        return ProcessExecutor(workers, max_retries)
    if name == "ray":
        return RayExecutor(workers, max_retries, address)
    raise ConfigError(f"unknown executor {name!r} (choose one of {', '.join(EXECUTORS)})")


__all__ = ["Executor", "ExecutorError", "LocalExecutor", "ProcessExecutor", "RayExecutor", "get_executor",
           "transient_errors"]
