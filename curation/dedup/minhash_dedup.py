"""Near-duplicate removal with MinHash LSH across all shards of a job (step ``minhash_dedup``).

Passes (see ``curation.global_step``):

1. collect (workers of the segment before): per output batch, MinHash signatures and LSH band
   keys (``curation.dedup.minhash``). Written under ``_work/minhash_dedup/``:
   ``buckets/band=<b>/<shard>.parquet`` (``key``, ``doc`` = ``(shard_index << 40) | row``; rows
   without any shingle are left out: an empty text is no one's near duplicate) and
   ``signatures/<shard>.parquet`` (``doc``, ``id``, ``signature``, plus ``priority`` and, with
   ``verify``, ``text``).
2. plan (driver, :mod:`curation.dedup.minhash_plan`): candidate edges band by band (one task
   per band, or per sub-partition of its keys within ``max_plan_memory_mb``, run on the job's
   workers), union-find, optional exact-Jaccard verification, one survivor per cluster; writes
   ``decisions/<shard>.parquet`` and the survivors' signatures to ``<output>/dedup/minhash/``
   for later jobs' ``against``.
3. filter (workers of this segment): drops non-survivors with reason
   ``minhash_dedup:near_duplicate``; every row gets ``minhash_cluster`` (the survivor's id, null
   for a document without near duplicates) and ``minhash_cluster_size`` (1 for those).

Survivor: the highest ``priority_column`` value, then the smallest id; without a priority column
the first document in input order (shard order, then row). Documents of earlier jobs named in
``against`` always win. The result does not depend on worker count or executor.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.dedup.clusters import doc_numbers
from curation.dedup.lsh import banding_errors, optimal_bands
from curation.dedup.minhash import MinHasher
from curation.dedup.minhash_plan import (BUCKET_SCHEMA, BUCKETS, DECISIONS, EMPTY_SIGNATURE,
                                         SIGNATURES, AtomicWriter, plan_minhash,
                                         signature_metadata, signature_schema)
from curation.global_step import GlobalStep, RowDecisions, RunTasks, run_in_process
from curation.io.reader import ID, TEXT
from curation.registry import register
from curation.step import FilterResult

NAME = "minhash_dedup"


@dataclass
class MinHashDedupConfig:
    """What counts as a near duplicate, and how it is found."""

    threshold: float = 0.8
    """Jaccard similarity of shingle sets from which two documents are near duplicates."""
    num_perm: int = 128
    """MinHash permutations (signature length)."""
    ngram: int = 5
    """Shingle length: words in ``word`` mode, code points in ``char`` mode."""
    mode: str = "word"
    """``word`` shingles, or ``char`` for languages written without spaces (Chinese, Japanese)."""
    seed: int = 1
    """Seed of the permutations (drawn as datasketch draws them)."""
    bands: int | None = None
    """LSH bands; derived from the threshold and the error weights when unset."""
    rows: int | None = None
    """Signature values per band; derived when unset (``bands * rows <= num_perm``)."""
    false_positive_weight: float = 0.1
    """Weight of the false-positive probability when bands and rows are derived. Missing a
    duplicate costs more than an extra candidate (``verify`` removes false positives), so the
    default favours recall: at threshold 0.8 and 128 permutations this gives 14 bands x 9 rows,
    recall 0.99 at J >= 0.8 on bench/dedup_quality.py (0.5/0.5 gives 9 x 13 and 0.88)."""
    false_negative_weight: float = 0.9
    """Weight of the false-negative probability when bands and rows are derived."""
    verify: bool = False
    """Keep only candidate pairs whose exact Jaccard similarity reaches the threshold."""
    priority_column: str | None = None
    """Column whose highest value survives in each cluster (ties: smallest id)."""
    against: list[str] = field(default_factory=list)
    """Output directories of earlier jobs: their documents are never removed, ours are when
    they are near duplicates of them."""
    max_plan_memory_mb: int = 1024
    """Memory one piece of the plan may use, in the driver or in one worker: a band's keys are
    grouped in as many sub-partitions as it takes to stay under it (~110 bytes per key), and
    verification compares texts in chunks of this size. Beyond it the driver holds 8 bytes per
    document and ~40 per cluster of near duplicates (see ``curation.dedup.minhash_plan``)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1] (got {self.threshold})")
        for name in ("num_perm", "ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.mode not in ("word", "char"):
            raise ValueError(f"mode must be 'word' or 'char' (got {self.mode!r})")
        if self.false_positive_weight < 0 or self.false_negative_weight < 0 or (
                self.false_positive_weight + self.false_negative_weight == 0):
            raise ValueError("false_positive_weight and false_negative_weight must be "
                             "non-negative and not both zero")
        for name in ("bands", "rows"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= self.num_perm:
                raise ValueError(f"{name} must be between 1 and num_perm={self.num_perm} "
                                 f"(got {value})")
        if self.max_plan_memory_mb < 1:
            raise ValueError(f"max_plan_memory_mb must be at least 1 (got "
                             f"{self.max_plan_memory_mb})")
        if self.bands and self.rows and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands} x {self.rows} needs "
                             f"{self.bands * self.rows} signature values; num_perm is "
                             f"{self.num_perm}")

    @functools.cached_property
    def banding(self) -> tuple[int, int, float, float]:
        """``(bands, rows, false positive, false negative)`` (see ``curation.dedup.lsh``)."""
        if self.bands is None and self.rows is None:
            return optimal_bands(self.threshold, self.num_perm, self.false_positive_weight,
                                 self.false_negative_weight)
        bands = self.bands or self.num_perm // self.rows
        rows = self.rows or self.num_perm // bands
        fp, fn = banding_errors(self.threshold, np.array([bands]), np.array([rows]))
        return bands, rows, float(fp[0]), float(fn[0])


@register
class MinHashDedup(GlobalStep):
    """Drops near duplicates across the whole job (see the module docstring)."""

    name: ClassVar[str] = NAME
    Config: ClassVar[type] = MinHashDedupConfig

    @functools.cached_property
    def hasher(self) -> MinHasher:
        c = self.config
        return MinHasher(num_perm=c.num_perm, ngram=c.ngram, mode=c.mode, seed=c.seed)

    # -- collect (worker, previous segment) ------------------------------------------------
    def start_collect(self, work_dir: Path, shard: str, shard_index: int) -> None:
        root = work_dir / NAME
        self._block, self._row = shard_index, 0
        self._signatures: AtomicWriter | None = None
        self._signature_path = root / SIGNATURES / f"{shard}.parquet"
        self._buckets = [AtomicWriter(root / BUCKETS / f"band={b}" / f"{shard}.parquet",
                                      BUCKET_SCHEMA) for b in range(self.config.banding[0])]

    def collect(self, batch: pa.RecordBatch) -> None:
        bands, rows = self.config.banding[:2]
        sig = self.hasher.signatures(batch.column(TEXT))  # (n, num_perm)
        docs = doc_numbers(self._block, self._row, batch.num_rows)  # (n,)
        self._row += batch.num_rows
        has_shingles = sig[:, 0] != EMPTY_SIGNATURE
        keys = self.hasher.band_keys(sig[has_shingles], bands, rows)  # (m, bands)
        for band, writer in enumerate(self._buckets):
            writer.write([pa.array(keys[:, band]), pa.array(docs[has_shingles])])
        columns = [pa.array(docs), batch.column(ID).cast(pa.string()),
                   pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()), sig.shape[1])]
        priority = self._priority(batch)
        if self._signatures is None:
            self._signatures = self._open_signatures(priority.type if priority is not None
                                                     else None)
        if priority is not None:
            columns.append(priority.cast(self._signatures.writer.schema.field("priority").type))
        if self.config.verify:
            columns.append(batch.column(TEXT).cast(pa.string()))
        self._signatures.write(columns)

    def _priority(self, batch: pa.RecordBatch) -> pa.Array | None:
        name = self.config.priority_column
        if name is None:
            return None
        if name not in batch.schema.names:
            raise ValueError(f"minhash_dedup: priority_column {name!r} is not a column of the "
                             f"documents (found: {', '.join(batch.schema.names)}); set "
                             "priority_column to one of them")
        return batch.column(name)

    def _open_signatures(self, priority_type: pa.DataType | None) -> AtomicWriter:
        c = self.config
        schema = signature_schema(c.num_perm, priority_type if c.priority_column else None,
                                  c.verify).with_metadata(signature_metadata(c, self._block))
        return AtomicWriter(self._signature_path, schema)

    def finish_collect(self) -> None:
        if self._signatures is None:  # no rows: an empty file still marks the shard collected
            self._signatures = self._open_signatures(pa.null())
        self._signatures.close()
        for writer in self._buckets:
            writer.close()

    # -- plan (driver) ---------------------------------------------------------------------
    def plan(self, work_dir: Path, shards: list[str],
             run_tasks: RunTasks = run_in_process) -> dict:
        bands, rows, fp, fn = self.config.banding
        print(f"[{NAME}] threshold {self.config.threshold}: {bands} bands x {rows} rows, "
              f"false positive {fp:.3f}, false negative {fn:.3f}", file=sys.stderr)
        # The job driver hands us ``<output>/_work``; the saved signatures belong to the output.
        summary = plan_minhash(self.config, self.hasher, work_dir / NAME, shards,
                               work_dir.parent / "dedup" / "minhash", run_tasks)
        return {"bands": bands, "rows": rows, "false_positive": round(fp, 6),
                "false_negative": round(fn, 6), **summary}

    # -- filter (worker, this segment) -----------------------------------------------------
    def begin_shard(self, work_dir: Path, shard: str) -> None:
        table = pq.read_table(work_dir / NAME / DECISIONS / f"{shard}.parquet")
        self._decisions = RowDecisions(
            table.column("row").to_numpy(),
            table.column("is_duplicate").to_numpy(zero_copy_only=False),
            table.column("cluster").combine_chunks(), table.column("size").to_numpy())

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        keep, cluster, size = self._decisions.next_batch(batch.num_rows)
        return FilterResult(keep=keep, reason="near_duplicate",
                            columns={"minhash_cluster": cluster,
                                     "minhash_cluster_size": pa.array(size)})
