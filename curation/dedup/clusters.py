"""From LSH band buckets to clusters: candidate edges per band, and vectorised union-find.

Documents are named by a 64-bit ``doc`` number, ``(block << 40) | row``, in the bucket files
(columns ``key`` uint64, ``doc`` uint64; one folder ``band=<b>`` per band). :func:`band_edges`
groups one band's keys with Polars' streaming engine, so the driver never holds more than one
band's keys, and links every member of a bucket of two or more documents to the bucket's smallest
``doc``. :class:`DocIndex` maps ``doc`` numbers to dense indices ``0..n-1`` in the order that
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


def doc_numbers(block: int, first_row: int, n: int) -> np.ndarray:
    """The ``doc`` numbers of rows ``first_row .. first_row + n - 1`` of ``block`` (uint64)."""
    if not 0 <= block < MAX_BLOCKS:
        raise ValueError(f"block number {block} does not fit in {64 - ROW_BITS} bits")
    if first_row + n > ROW_MASK:
        raise ValueError(f"block {block} has more than 2**{ROW_BITS} rows")
    return (np.uint64(block) << np.uint64(ROW_BITS)) | np.arange(first_row, first_row + n,
                                                                 dtype=np.uint64)


def band_edges(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Candidate edges of one band: ``(doc, root)`` for every document that shares its key with
    another, ``root`` being the smallest ``doc`` of that key. Streams the files."""
    if not files:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    buckets = pl.scan_parquet(files)
    shared = (buckets.group_by("key")
              .agg(root=pl.col("doc").min(), size=pl.len())
              .filter(pl.col("size") > 1)
              .select("key", "root"))
    edges = (buckets.join(shared, on="key")
             .filter(pl.col("doc") != pl.col("root"))
             .select("doc", "root")
             .collect(engine="streaming"))
    return edges["doc"].to_numpy(), edges["root"].to_numpy()


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
    """Disjoint sets over ``0..n-1``; every root is the smallest member of its set."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)  # (n,) parent[i] <= i

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
        left = np.asarray(left, dtype=np.int64)
        right = np.asarray(right, dtype=np.int64)
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
