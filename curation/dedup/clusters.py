"""From LSH band buckets to clusters: candidate edges per band, and vectorised union-find.

Documents are named by a 64-bit ``doc`` number, ``(block << 40) | row``, in the bucket files
(columns ``key`` uint64, ``doc`` uint64; one folder ``band=<b>`` per band). :func:`band_edges`
sorts one band's keys, or one sub-partition of them (``key % parts == part``: buckets never
straddle sub-partitions, so the edges of all parts are the edges of the band), and links every
member of a bucket of two or more documents to the bucket's smallest ``doc``. Its memory is
about :data:`GROUP_BYTES_PER_KEY` per key of the sub-partition, which is how the plan chooses
``parts``. :class:`DocIndex` maps ``doc`` numbers to dense indices ``0..n-1`` in the order that
decides survivors; :class:`UnionFind` merges edge arrays over those indices with numpy (hooking
the larger root under the smaller, pointer jumping to compress), so the root of every cluster is
its smallest index and there is no per-edge Python loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

ROW_BITS = 40
ROW_MASK = (1 << ROW_BITS) - 1
MAX_BLOCKS = 1 << (64 - ROW_BITS)
GROUP_BYTES_PER_KEY = 112
"""Peak memory of :func:`band_edges` per key of the sub-partition: the keys and docs read, their
sorted copy and the run arrays (measured 100-110 bytes from 250k to 1M keys, above ~20 MB of
Parquet reading)."""


def doc_numbers(block: int, first_row: int, n: int) -> np.ndarray:
    """The ``doc`` numbers of rows ``first_row .. first_row + n - 1`` of ``block`` (uint64)."""
    if not 0 <= block < MAX_BLOCKS:
        raise ValueError(f"block number {block} does not fit in {64 - ROW_BITS} bits")
    if first_row + n > ROW_MASK:
        raise ValueError(f"block {block} has more than 2**{ROW_BITS} rows")
    return (np.uint64(block) << np.uint64(ROW_BITS)) | np.arange(first_row, first_row + n,
                                                                 dtype=np.uint64)


def band_edges(files: list[Path], parts: int = 1, part: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate edges of one band: ``(doc, root)`` for every document that shares its key with
    another, ``root`` being the smallest ``doc`` of that key. Only keys with
    ``key % parts == part`` are read (the files are streamed and filtered)."""
    none = np.empty(0, np.uint64), np.empty(0, np.uint64)
    if not files:
        return none
    buckets = pl.scan_parquet(files).select("key", "doc")
    if parts > 1:
        buckets = buckets.filter(pl.col("key") % parts == part)
    frame = buckets.collect(engine="streaming").sort("key", "doc")
    if frame.is_empty():
        return none
    key, doc = frame["key"].to_numpy(), frame["doc"].to_numpy()  # (m,) sorted by (key, doc)
    del frame
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # (buckets,) start of each key
    root = np.repeat(doc[first], np.diff(np.r_[first, len(key)]))  # (m,) its smallest doc
    linked = doc != root
    return doc[linked], root[linked]


class DocIndex:
    """Dense indices for ``doc`` numbers: blocks are laid out one after another in the order
    given (the survivor order), rows in order within a block."""

    def __init__(self, blocks: list[int], rows: list[int]) -> None:
        self.blocks = np.asarray(blocks, dtype=np.uint64)  # (B,) in dense order
        self.rows = np.asarray(rows, dtype=np.int64)  # (B,)
        self.offsets = np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)  # (B+1,)
        self._order = np.argsort(self.blocks, kind="stable")
        if len(np.unique(self.blocks)) != len(self.blocks):
            raise ValueError("DocIndex: block numbers must be unique")

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def dense(self, docs: np.ndarray) -> np.ndarray:
        """Dense index of every ``doc`` number (int64)."""
        docs = np.asarray(docs, dtype=np.uint64)
        block = docs >> np.uint64(ROW_BITS)
        pos = self._order[np.searchsorted(self.blocks[self._order], block)]
        return self.offsets[pos] + (docs & np.uint64(ROW_MASK)).astype(np.int64)

    def block_of(self, dense: np.ndarray) -> np.ndarray:
        """Position (in the order given) of the block holding each dense index."""
        return np.searchsorted(self.offsets, dense, side="right") - 1


class UnionFind:
    """Disjoint sets over ``0..n-1``; every root is the smallest member of its set. 4 bytes
    per element (8 from 2**31 elements on)."""

    def __init__(self, n: int) -> None:
        dtype = np.int32 if n < 2**31 else np.int64
        self.parent = np.arange(n, dtype=dtype)  # (n,) parent[i] <= i

    def _compress(self) -> None:
        """Pointer jumping until every element points at its root (log depth passes)."""
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        self.parent = parent

    def union(self, left: np.ndarray, right: np.ndarray) -> None:
        """Merges the sets of ``left[i]`` and ``right[i]`` for every ``i``."""
        left = np.asarray(left, dtype=self.parent.dtype)
        right = np.asarray(right, dtype=self.parent.dtype)
        while len(left):
            self._compress()
            a, b = self.parent[left], self.parent[right]
            apart = a != b
            left, right, a, b = left[apart], right[apart], a[apart], b[apart]
            # Roots only: hook each larger root under the smallest root it meets this round;
            # edges whose root got another parent are retried after compression.
            np.minimum.at(self.parent, np.maximum(a, b), np.minimum(a, b))

    def labels(self) -> np.ndarray:
        """The root (smallest member) of every element's set."""
        self._compress()
        return self.parent
