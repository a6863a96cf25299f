"""Partition tasks that kill their own worker process, for the retry tests (importable by
spawned and Ray workers, so kept free of test-only imports)."""

from __future__ import annotations

import os
import signal

import numpy as np

from microdb.projection import PartitionJob, PartitionResult, run_partition


def dying(job: PartitionJob, marker: str, victim: int, always: bool = False) -> PartitionResult:
    """``run_partition``, except that the worker running partition ``victim`` is SIGKILLed
    the first time (or every time, with ``always``) before it publishes anything."""
    if job.partition == victim and (always or not os.path.exists(marker)):
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return run_partition(job)


def sample_stream(seed: int) -> list[float]:
    """What a synthesizer shard does: draw from its own seed stream."""
    return np.random.default_rng(seed).normal(size=5).round(12).tolist()


def refuse(seed: int) -> int:
    from microdb.errors import SchemaError

    if seed == 2:
        raise SchemaError(f"shard {seed}: table 'x' has no column 'y'")
    return seed
