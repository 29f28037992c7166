"""Steps that need the whole corpus before they can decide (exact dedup, later MinHash).

A global step splits the pipeline into segments. While the segment before it runs, every
worker passes its output batches through :meth:`GlobalStep.collect`, which writes side data
(hashes, signatures) under the job's work directory. When all shards are through, the driver
calls :meth:`GlobalStep.plan` once, which turns the side data into per-shard decisions. Then
the next segment runs the global step as an ordinary :class:`~curation.step.Filter` per shard,
after :meth:`GlobalStep.begin_shard` loaded that shard's decisions.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from curation.step import Filter


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

    def plan(self, work_dir: Path, shards: list[str]) -> dict:
        """Driver side: decides for every shard from the collected side data; returns a
        summary recorded in the manifest."""
        raise NotImplementedError

    def begin_shard(self, work_dir: Path, shard: str) -> None:
        """Loads the decisions for one shard before its batches arrive."""
        raise NotImplementedError
