"""Exact deduplication across all shards of a job.

Key: a 128-bit hash (two seeded 64-bit Polars hashes) of the text after lower-casing and
collapsing whitespace, so documents that differ only in case or spacing are duplicates. The
survivor of each group is the first occurrence in input order (shard order, then row), so the
result does not depend on worker count or executor.

Passes (see ``curation.global_step``): the segment before this step writes
``_work/exact_dedup/hashes/<shard>.parquet``; ``plan`` groups all hashes with Polars and writes
``_work/exact_dedup/clusters/<shard>.parquet`` (rows that belong to a group of two or more); the
filter then drops every non-survivor with reason ``exact_dedup:duplicate``. Every row gets
``exact_dup_cluster``: the survivor's id for members of a duplicate group, null otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curation.global_step import GlobalStep, RowDecisions, RunTasks, run_in_process
from curation.io.reader import ID, TEXT
from curation.registry import register
from curation.step import FilterResult

_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)
_HASH_SCHEMA = pa.schema([("shard_index", pa.int32()), ("row", pa.int64()),
                          ("h1", pa.uint64()), ("h2", pa.uint64()), ("id", pa.string())])


@dataclass
class ExactDedupConfig:
    """How documents are compared."""

    lowercase: bool = True
    """Compare case-insensitively."""
    collapse_whitespace: bool = True
    """Treat every run of whitespace as one space and ignore leading/trailing whitespace."""


def dedup_keys(text: pa.Array, lowercase: bool, collapse_whitespace: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit hash halves of every document's comparison key."""
    series = pl.Series(text)
    if lowercase:
        series = series.str.to_lowercase()
    if collapse_whitespace:
        series = series.str.replace_all(r"\s+", " ").str.strip_chars()
    return (series.hash(seed=_SEEDS[0]).to_numpy(), series.hash(seed=_SEEDS[1]).to_numpy())


@register
class ExactDedup(GlobalStep):
    """Drops exact duplicates across the whole job (see the module docstring)."""

    name: ClassVar[str] = "exact_dedup"
    Config: ClassVar[type] = ExactDedupConfig

    # -- collect (worker, previous segment) ------------------------------------------------
    def start_collect(self, work_dir: Path, shard: str, shard_index: int) -> None:
        self._hash_path = work_dir / "exact_dedup" / "hashes" / f"{shard}.parquet"
        self._hash_path.parent.mkdir(parents=True, exist_ok=True)
        self._hash_tmp = self._hash_path.with_name(self._hash_path.name + ".tmp")
        self._hash_writer = pq.ParquetWriter(self._hash_tmp, _HASH_SCHEMA, compression="zstd")
        self._shard_index = shard_index
        self._row = 0

    def collect(self, batch: pa.RecordBatch) -> None:
        h1, h2 = dedup_keys(batch.column(TEXT), self.config.lowercase,
                            self.config.collapse_whitespace)
        n = batch.num_rows
        self._hash_writer.write_batch(pa.RecordBatch.from_arrays(
            [pa.array(np.full(n, self._shard_index, np.int32)),
             pa.array(np.arange(self._row, self._row + n, dtype=np.int64)),
             pa.array(h1), pa.array(h2), batch.column(ID)], schema=_HASH_SCHEMA))
        self._row += n

    def finish_collect(self) -> None:
        self._hash_writer.close()
        os.replace(self._hash_tmp, self._hash_path)

    # -- plan (driver) ---------------------------------------------------------------------
    def plan(self, work_dir: Path, shards: list[str],
             run_tasks: RunTasks = run_in_process) -> dict:
        # One grouping of all hashes: nothing to fan out, ``run_tasks`` is not needed.
        hashes = [work_dir / "exact_dedup" / "hashes" / f"{s}.parquet" for s in shards]
        out = work_dir / "exact_dedup" / "clusters"
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("*.parquet"):
            stale.unlink()
        if not hashes:
            return {"documents": 0, "duplicates": 0, "groups": 0}
        frame = pl.scan_parquet(hashes).sort(["shard_index", "row"])
        grouped = frame.with_columns(
            rank=pl.int_range(pl.len()).over(["h1", "h2"]),
            size=pl.len().over(["h1", "h2"]),
            cluster=pl.col("id").first().over(["h1", "h2"]),
        ).filter(pl.col("size") > 1).collect()
        total = frame.select(pl.len()).collect().item()
        index_to_shard = {}
        for shard, path in zip(shards, hashes):
            first = pq.read_table(path, columns=["shard_index"]).column(0)
            if len(first):
                index_to_shard[first[0].as_py()] = shard
        for (shard_index,), part in grouped.group_by(["shard_index"]):
            shard = index_to_shard[shard_index]
            tmp = out / f"{shard}.parquet.tmp"
            part.sort("row").select(["row", "rank", "cluster"]).write_parquet(tmp)
            os.replace(tmp, out / f"{shard}.parquet")
        duplicates = int((grouped["rank"] > 0).sum()) if len(grouped) else 0
        groups = int((grouped["rank"] == 0).sum()) if len(grouped) else 0
        return {"documents": int(total), "duplicates": duplicates, "groups": groups}

    # -- filter (worker, this segment) -----------------------------------------------------
    def begin_shard(self, work_dir: Path, shard: str) -> None:
        path = work_dir / "exact_dedup" / "clusters" / f"{shard}.parquet"
        if not path.exists():
            self._decisions = RowDecisions.none()
            return
        table = pq.read_table(path)
        self._decisions = RowDecisions(table.column("row").to_numpy(),
                                       table.column("rank").to_numpy() > 0,
                                       table.column("cluster").combine_chunks())

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        keep, cluster, _ = self._decisions.next_batch(batch.num_rows)
        return FilterResult(keep=keep, reason="duplicate", columns={"exact_dup_cluster": cluster})
