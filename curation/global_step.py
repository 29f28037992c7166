"""Steps that need the whole corpus before they can decide (exact dedup, later MinHash).

A global step splits the pipeline into segments. While the segment before it runs, every
worker passes its output batches through :meth:`GlobalStep.collect`, which writes side data
(hashes, signatures) under the job's work directory. When all shards are through, the driver
calls :meth:`GlobalStep.plan` once, which turns the side data into per-shard decisions. Then
the next segment runs the global step as an ordinary :class:`~curation.step.Filter` per shard,
after :meth:`GlobalStep.begin_shard` loaded that shard's decisions.

A plan whose work splits into independent tasks (MinHash: one per band of LSH buckets, or per
sub-partition of a band's keys) hands them to ``run_tasks(fn, args)``, which the job's executor
provides: it calls the module-level function ``fn(*a)`` for every tuple ``a`` of ``args``, in
worker processes or Ray tasks, and yields the results in the order of ``args`` (so a plan that
consumes them in that order does not depend on the executor or the worker count).
:func:`run_in_process` is the plain version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.step import Filter


RunTasks = Callable[[Callable[..., Any], list[tuple]], Iterator[Any]]


def run_in_process(fn: Callable[..., Any], args: Iterable[tuple]) -> Iterator[Any]:
    """``run_tasks`` without workers: ``fn(*a)`` for every ``a``, one after another."""
    for a in args:
        yield fn(*a)


class GlobalStep(Filter):
    """A filter whose decisions come from a corpus-wide pass (see the module docstring)."""

    def start_collect(self, work_dir: Path, shard: str, shard_index: int) -> None:
        """Prepares to receive the previous segment's output batches of one shard."""
        raise NotImplementedError

    def collect(self, batch: pa.RecordBatch) -> None:
        """Receives one output batch of the previous segment (in output row order)."""
        raise NotImplementedError

    def finish_collect(self) -> None:
        """Flushes the side data of the shard being collected (atomically)."""
        raise NotImplementedError

    def plan(self, work_dir: Path, shards: list[str],
             run_tasks: RunTasks = run_in_process) -> dict:
        """Driver side: decides for every shard from the collected side data; returns a
        summary recorded in the manifest. ``run_tasks`` fans independent pieces of the work
        out to the job's workers (see the module docstring)."""
        raise NotImplementedError

    def begin_shard(self, work_dir: Path, shard: str) -> None:
        """Loads the decisions for one shard before its batches arrive."""
        raise NotImplementedError


class RowDecisions:
    """One shard's decisions from a plan, consumed batch by batch in row order.

    ``rows`` (sorted) are the shard's rows that belong to a group of two or more; for each,
    whether it is a duplicate to drop, its group id (the survivor's id) and the group size.
    Rows not listed are singletons: kept, null group, size 1.
    """

    def __init__(self, rows: np.ndarray, is_duplicate: np.ndarray, cluster: pa.Array,
                 size: np.ndarray | None = None) -> None:
        self.rows, self.is_duplicate, self.cluster = rows, is_duplicate, cluster
        self.size = size if size is not None else np.ones(len(rows), np.int32)
        self.offset = 0

    @classmethod
    def none(cls) -> RowDecisions:
        """A shard without duplicates."""
        return cls(np.empty(0, np.int64), np.empty(0, bool), pa.array([], pa.string()))

    def next_batch(self, n: int) -> tuple[np.ndarray, pa.Array, np.ndarray]:
        """Keep mask, group id (null for singletons) and group size of the next ``n`` rows."""
        lo, hi = self.offset, self.offset + n
        self.offset = hi
        start, stop = np.searchsorted(self.rows, [lo, hi])
        local = self.rows[start:stop] - lo
        keep = np.ones(n, bool)
        keep[local[self.is_duplicate[start:stop]]] = False
        size = np.ones(n, np.int32)
        size[local] = self.size[start:stop]
        if stop == start:
            return keep, pa.nulls(n, pa.string()), size
        index = np.full(n, -1, np.int64)
        index[local] = np.arange(start, stop)
        taken = self.cluster.take(pa.array(np.maximum(index, 0)))
        cluster = pc.if_else(pa.array(index >= 0), taken, pa.scalar(None, pa.string()))
        return keep, cluster, size
