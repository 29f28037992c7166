"""The driver side of ``minhash_dedup``: from band buckets to one decision per document.

Memory: the plan does one piece of work at a time, each within ``max_plan_memory_mb``
(``budget`` below). A band's keys are grouped in ``ceil(keys * GROUP_BYTES_PER_KEY / budget)``
sub-partitions by ``key % parts`` (:func:`~curation.dedup.clusters.band_edges`), one task each,
run by the job's executor (``run_tasks``: in-process, worker processes or Ray tasks) and merged
in task order; ids, priorities and texts are read by Parquet row group, only where a needed row
lies; signatures are streamed :data:`BATCH_ROWS` at a time; verification compares texts in
chunks of pairs that fit the budget; decisions and saved signatures are written shard by shard.
What grows with the corpus, all of it held by the driver:

- 8 bytes per document (16 from 2**31 documents on): the union-find forest and the cluster
  sizes, the one cost proportional to the corpus itself;
- ~40 bytes per cluster of two or more documents: its survivor (root, dense index, id); with a
  priority column, up to three candidates per cluster between reductions;
- with ``verify``, 16 bytes per distinct candidate pair.

Documents are numbered densely in survivor order: documents of earlier jobs (``against``) first,
then ours in (shard index, row) order, so the root of every union-find cluster is the document
that survives it when no priority column is set. Edges between two earlier documents are dropped:
both are kept whatever happens.

Verification (``verify``): the distinct candidate pairs of all bands are compared by the exact
Jaccard similarity of their shingle sets (``jaccard_pairs``); only pairs at or above the
threshold are merged. Our texts come from the signature files (``collect`` keeps them when
``verify`` is set); an earlier job's are looked up by id in its curated output, and a document
no longer there (a later step of that job removed it) is compared by its MinHash estimate (the
fraction of equal signature values).

The plan rewrites everything it owns on every run (resume after a crash mid-plan redoes it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curation.dedup.clusters import (GROUP_BYTES_PER_KEY, DocIndex, UnionFind, band_edges,
                                     doc_numbers)
from curation.dedup.minhash import MinHasher, jaccard_pairs
from curation.global_step import RunTasks, run_in_process

SIGNATURES, BUCKETS, AGAINST, DECISIONS = "signatures", "buckets", "against", "decisions"
BUCKET_SCHEMA = pa.schema([("key", pa.uint64()), ("doc", pa.uint64())])
DECISION_SCHEMA = pa.schema([("row", pa.int64()), ("cluster", pa.string()),
                             ("size", pa.int32()), ("is_duplicate", pa.bool_())])
META_KEY = b"crucible.minhash"
EARLIER = 1 << 23  # block numbers of earlier jobs' signature files: EARLIER | k
EMPTY_SIGNATURE = np.uint64(2**64 - 1)  # every value of a text without shingles
_COMPATIBLE = ("num_perm", "ngram", "mode", "seed", "hash")
BATCH_ROWS = 4096  # signatures read or written at a time (4 MB at 128 permutations)
TEXT_BYTES = 4096  # assumed mean text size when the signature files hold no text


def signature_schema(num_perm: int, priority: pa.DataType | None, text: bool) -> pa.Schema:
    """Schema of a signature file under ``_work/minhash_dedup/signatures/``."""
    fields = [("doc", pa.uint64()), ("id", pa.string()),
              ("signature", pa.list_(pa.uint64(), num_perm))]
    if priority is not None:
        fields.append(("priority", priority))
    if text:
        fields.append(("text", pa.string()))
    return pa.schema(fields)


def signature_metadata(config: Any, block: int | None = None) -> dict[bytes, bytes]:
    """What makes signatures comparable (and, in work files, the shard index)."""
    meta = {"num_perm": config.num_perm, "ngram": config.ngram, "mode": config.mode,
            "seed": config.seed, "hash": "xxh64"}
    if block is not None:
        meta["block"] = block
    return {META_KEY: json.dumps(meta).encode()}


@dataclass
class Block:
    """One file of signatures: a shard of ours, or a saved file of an earlier job."""

    number: int
    rows: int
    path: Path
    buckets: str
    """File name (without the band folder) of this block's bucket files."""
    shard: str | None = None
    source: Path | None = None
    """Output directory of the earlier job (None for our shards)."""

    def bucket_file(self, root: Path, band: int) -> Path:
        return root / (BUCKETS if self.source is None else AGAINST) / f"band={band}" / \
            self.buckets


def plan_minhash(config: Any, hasher: MinHasher, root: Path, shards: list[str],
                 saved_dir: Path, run_tasks: RunTasks = run_in_process) -> dict[str, Any]:
    """Plans ``minhash_dedup`` over ``shards`` (see the module docstring); returns the summary
    recorded in the manifest."""
    bands, rows = config.banding[:2]
    budget = config.max_plan_memory_mb << 20
    for folder in (root / DECISIONS, root / AGAINST, saved_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    ours = [_our_block(root, shard) for shard in shards]
    earlier = _earlier_blocks(config, hasher, root, bands, rows)
    blocks = earlier + ours
    index = DocIndex([b.number for b in blocks], [b.rows for b in blocks])
    n_earlier = sum(b.rows for b in earlier)
    keys = sum(pq.ParquetFile(b.bucket_file(root, 0)).metadata.num_rows for b in blocks)
    parts = max(1, math.ceil(keys * GROUP_BYTES_PER_KEY / budget))
    files = [[block.bucket_file(root, band) for block in blocks] for band in range(bands)]
    tasks = [(files[band], parts, part, index, n_earlier)
             for band in range(bands) for part in range(parts)]
    forest = UnionFind(index.size)
    pairs = pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64})
    edges = 0
    # In task order whatever runs them; at most twice the workers' results wait here.
    for a, b in run_tasks(band_pairs, tasks):
        edges += len(a)
        if config.verify:
            pairs = pl.concat([pairs, pl.DataFrame({"a": np.minimum(a, b),
                                                    "b": np.maximum(a, b)})]).unique()
        else:
            forest.union(a, b)
    summary: dict[str, Any] = {"candidate_edges": edges, "key_partitions": parts}
    if config.verify:
        pairs = pairs.sort(["a", "b"])
        a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
        del pairs
        similar = _verify(config, blocks, index, a, b, budget)
        forest.union(a[similar], b[similar])
        summary.update(candidate_pairs=len(a), verified_pairs=int(similar.sum()))
        del a, b, similar
    labels = forest.labels()  # (n,) root of every document
    sizes = _cluster_sizes(labels)  # (n,) size of the cluster rooted at every document
    survivors = _survivors(config, blocks, index, n_earlier, labels, sizes)
    duplicates = 0
    for pos, block in enumerate(blocks):
        if block.shard is not None:
            duplicate = _write_decisions(root, block, index.offsets[pos], labels, sizes,
                                         survivors)
            _save_signatures(config, block, duplicate, saved_dir)
            duplicates += int(duplicate.sum())
    return {"documents": index.size - n_earlier, "earlier_documents": n_earlier, **summary,
            "clusters": len(survivors.root), "duplicates": duplicates}


def band_pairs(files: list[Path], parts: int, part: int, index: DocIndex,
               n_earlier: int) -> tuple[np.ndarray, np.ndarray]:
    """One plan task: the candidate edges of one band's sub-partition ``part`` of ``parts``,
    as dense indices, without the edges between two earlier documents."""
    doc, anchor = band_edges(files, parts, part)
    a, b = index.dense(doc), index.dense(anchor)
    ours = np.maximum(a, b) >= n_earlier
    return a[ours], b[ours]


def _our_block(root: Path, shard: str) -> Block:
    path = root / SIGNATURES / f"{shard}.parquet"
    parquet = pq.ParquetFile(path)
    number = json.loads(parquet.schema_arrow.metadata[META_KEY])["block"]
    return Block(number, parquet.metadata.num_rows, path, f"{shard}.parquet", shard=shard)


def _earlier_blocks(config: Any, hasher: MinHasher, root: Path, bands: int,
                    rows: int) -> list[Block]:
    """Blocks of the earlier jobs' saved signatures, with their band buckets written."""
    expected = json.loads(signature_metadata(config)[META_KEY])
    blocks: list[Block] = []
    for source in map(Path, config.against):
        files = sorted((source / "dedup" / "minhash").glob("*.parquet"))
        if not files:
            raise ValueError(f"minhash_dedup: against {str(source)!r} has no saved signatures "
                             "(dedup/minhash/*.parquet); name the output directory of a "
                             "finished job that ran minhash_dedup")
        for path in files:
            parquet = pq.ParquetFile(path, pre_buffer=False)
            found = json.loads((parquet.schema_arrow.metadata or {}).get(META_KEY, b"{}"))
            if found != expected:
                raise ValueError(f"minhash_dedup: {path} holds signatures made with {found}, "
                                 f"this job makes {expected}; use the same num_perm, ngram, "
                                 "mode and seed as the earlier job")
            block = Block(EARLIER | len(blocks), parquet.metadata.num_rows, path,
                          f"{len(blocks)}.parquet", source=source)
            writers = [AtomicWriter(block.bucket_file(root, b), BUCKET_SCHEMA)
                       for b in range(bands)]
            first = 0
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=["signature"]):
                sig = _signatures(batch.column(0), config.num_perm)
                docs = doc_numbers(block.number, first, len(sig))
                first += len(sig)
                has_shingles = sig[:, 0] != EMPTY_SIGNATURE
                keys = hasher.band_keys(sig[has_shingles], bands, rows)
                for band, writer in enumerate(writers):
                    writer.write([pa.array(keys[:, band]), pa.array(docs[has_shingles])])
            for writer in writers:
                writer.close()
            blocks.append(block)
    return blocks


def _signatures(column: pa.Array | pa.ChunkedArray, num_perm: int) -> np.ndarray:
    """A ``signature`` column as a (n, num_perm) uint64 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy().reshape(-1, num_perm)


def _read_rows(path: Path, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` (those the file has) at ``rows`` (sorted) of a Parquet file, reading only
    the row groups that hold them."""
    parquet = pq.ParquetFile(path, pre_buffer=False)
    names = [c for c in columns if c in parquet.schema_arrow.names]
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (groups + 1,)
    cuts = np.searchsorted(rows, starts)  # rows[cuts[g]:cuts[g + 1]] lie in row group g
    parts = [parquet.read_row_group(g, columns=names).take(
                 pa.array(rows[cuts[g]:cuts[g + 1]] - starts[g]))
             for g in range(len(sizes)) if cuts[g + 1] > cuts[g]]
    return pa.concat_tables(parts) if parts else parquet.schema_arrow.empty_table().select(names)


def _gather(blocks: list[Block], index: DocIndex, dense: np.ndarray,
            columns: list[str]) -> pl.DataFrame:
    """``columns`` of the documents ``dense`` (sorted), read block by block; columns a block
    lacks are null."""
    where = index.block_of(dense)
    cuts = np.searchsorted(where, np.arange(len(blocks) + 1))  # dense[cuts[p]:cuts[p+1]] in p
    parts = [pl.from_arrow(_read_rows(block.path, dense[cuts[p]:cuts[p + 1]] - index.offsets[p],
                                      columns), rechunk=False)
             for p, block in enumerate(blocks) if cuts[p + 1] > cuts[p]]
    if not parts:
        return pl.DataFrame(schema={c: pl.String for c in columns if c != "priority"})
    return pl.concat(parts, how="diagonal_relaxed")


def _verify(config: Any, blocks: list[Block], index: DocIndex, a: np.ndarray, b: np.ndarray,
            budget: int) -> np.ndarray:
    """Whether each candidate pair ``(a, b)`` reaches the threshold, compared in chunks of
    pairs whose texts fit in ``budget`` bytes."""
    files = [pq.ParquetFile(block.path) for block in blocks if block.source is None]
    text_bytes = sum(f.metadata.row_group(g).column(f.schema_arrow.names.index("text"))
                     .total_uncompressed_size for f in files if "text" in f.schema_arrow.names
                     for g in range(f.num_row_groups))
    rows = sum(f.metadata.num_rows for f in files)
    mean = text_bytes / rows if text_bytes else TEXT_BYTES
    chunk = max(1, int(budget / (2 * (mean + 64))))  # two texts (and their ids) per pair
    similar = [_similar(config, blocks, index, a[i:i + chunk], b[i:i + chunk])
               for i in range(0, len(a), chunk)]
    return np.concatenate(similar) if similar else np.zeros(0, bool)


def _similar(config: Any, blocks: list[Block], index: DocIndex, a: np.ndarray,
             b: np.ndarray) -> np.ndarray:
    """Whether each candidate pair reaches the threshold (exact Jaccard where the texts are
    at hand, the MinHash estimate otherwise)."""
    needed = np.unique(np.concatenate([a, b]))
    found = _gather(blocks, index, needed, ["id", "text"])
    if len(needed) and "text" not in found.columns:
        found = found.with_columns(text=pl.lit(None, pl.String))
    missing = found["text"].is_null().to_numpy() if len(needed) else np.zeros(0, bool)
    if missing.any():  # earlier jobs' documents: look their text up in that job's output
        texts = _earlier_texts(blocks, found["id"].filter(missing).to_list())
        found = found.with_columns(text=pl.coalesce(
            "text", pl.col("id").replace_strict(texts, default=None, return_dtype=pl.String)))
        missing = found["text"].is_null().to_numpy()
    left, right = np.searchsorted(needed, a), np.searchsorted(needed, b)
    text = found["text"].fill_null("").to_arrow() if len(needed) else pa.array([], pa.string())
    similarity = jaccard_pairs(text, left, right, config.ngram, config.mode)
    unknown = missing[left] | missing[right]
    if unknown.any():
        rows = np.unique(np.concatenate([a[unknown], b[unknown]]))
        sig = _signatures(_gather(blocks, index, rows, ["signature"])["signature"].to_arrow(),
                          config.num_perm)
        sa, sb = sig[np.searchsorted(rows, a[unknown])], sig[np.searchsorted(rows, b[unknown])]
        similarity[unknown] = (sa == sb).mean(axis=1)
    return similarity >= config.threshold


def _earlier_texts(blocks: list[Block], ids: list[str]) -> dict[str, str]:
    """Texts of earlier jobs' documents, by id, from those jobs' curated shards."""
    sources = sorted({str(b.source) for b in blocks if b.source is not None})
    files = [p for s in sources for p in sorted(Path(s).glob("*.parquet"))]
    if not files or not ids:
        return {}
    found = (pl.scan_parquet(files).select("id", "text")
             .filter(pl.col("id").is_in(pl.Series(ids, dtype=pl.String).implode()))
             .unique("id", keep="first", maintain_order=True)
             .collect(engine="streaming"))
    return dict(zip(found["id"].to_list(), found["text"].to_list()))


def _cluster_sizes(labels: np.ndarray) -> np.ndarray:
    """The size of the cluster rooted at every document (0 for non-roots), in the labels' dtype
    and counted in slices, so that no int64 array of all documents is made."""
    sizes = np.zeros_like(labels)
    for lo in range(0, len(labels), 1 << 20):
        np.add.at(sizes, labels[lo:lo + (1 << 20)], 1)
    return sizes


@dataclass
class Survivors:
    """The survivor of every cluster of two or more documents, sorted by ``root``."""

    root: np.ndarray  # (c,) smallest dense index of the cluster
    dense: np.ndarray  # (c,) dense index of the survivor
    cluster: pa.Array  # (c,) the survivor's id


def _survivors(config: Any, blocks: list[Block], index: DocIndex, n_earlier: int,
               labels: np.ndarray, sizes: np.ndarray) -> Survivors:
    """Chooses every cluster's survivor: its root without a priority column; otherwise
    documents of earlier jobs first, then the highest priority, the smallest id, the first
    document. Reads ids (and priorities) block by block."""
    priority = config.priority_column is not None
    held: list[pl.DataFrame] = []
    reduced = rows_held = 0
    for pos, block in enumerate(blocks):
        lo, hi = index.offsets[pos], index.offsets[pos + 1]
        roots = labels[lo:hi]
        candidate = sizes[roots] > 1
        if not priority:
            candidate &= roots == np.arange(lo, hi)
        rows = np.flatnonzero(candidate)
        if not len(rows):
            continue
        info = pl.from_arrow(_read_rows(block.path, rows, ["id", "priority"] if priority
                                        else ["id"]), rechunk=False)
        frame = pl.DataFrame({"root": roots[rows].astype(np.int64),
                              "dense": rows + lo}).hstack(info)
        held.append(_best_per_root(frame, n_earlier) if priority else frame)
        rows_held += len(held[-1])
        if priority and rows_held > 2 * reduced + BATCH_ROWS:  # keep ~one candidate per root
            held = [_best_per_root(pl.concat(held, how="diagonal_relaxed"), n_earlier)]
            reduced = rows_held = len(held[0])
    if not held:
        return Survivors(np.zeros(0, np.int64), np.zeros(0, np.int64), pa.array([], pa.string()))
    frame = pl.concat(held, how="diagonal_relaxed")
    frame = (_best_per_root(frame, n_earlier) if priority else frame).sort("root")
    return Survivors(frame["root"].to_numpy(), frame["dense"].to_numpy(),
                     frame["id"].to_arrow().cast(pa.string()))


def _best_per_root(frame: pl.DataFrame, n_earlier: int) -> pl.DataFrame:
    """The best candidate of every root in ``frame`` (columns root, dense, id, priority)."""
    if "priority" not in frame.columns:
        frame = frame.with_columns(priority=pl.lit(None))
    return (frame.with_columns(earlier=pl.col("dense") < n_earlier)
            .sort(["root", "earlier", "priority", "id", "dense"],
                  descending=[False, True, True, False, False], nulls_last=True)
            .group_by("root", maintain_order=True).first().drop("earlier"))


def _write_decisions(root: Path, block: Block, offset: int, labels: np.ndarray,
                     sizes: np.ndarray, survivors: Survivors) -> np.ndarray:
    """Writes ``decisions/<shard>.parquet`` of one of our blocks (rows of clusters of two or
    more; other rows are singletons); returns which rows are duplicates."""
    roots = labels[offset:offset + block.rows]
    size = sizes[roots]
    rows = np.flatnonzero(size > 1)  # (m,) sorted
    at = np.searchsorted(survivors.root, roots[rows])  # (m,) each row's cluster
    duplicate = np.zeros(block.rows, bool)
    duplicate[rows] = rows + offset != survivors.dense[at]
    table = pa.Table.from_arrays(
        [pa.array(rows, pa.int64()), survivors.cluster.take(pa.array(at)),
         pa.array(size[rows].astype(np.int32)), pa.array(duplicate[rows])],
        schema=DECISION_SCHEMA)
    _write_atomic(table, root / DECISIONS / f"{block.shard}.parquet")
    return duplicate


def _save_signatures(config: Any, block: Block, duplicate: np.ndarray, saved_dir: Path) -> None:
    """Writes the signatures of the block's documents kept by this step, with their ids, to
    ``saved_dir/<shard>.parquet``: what a later job's ``against`` reads."""
    parquet = pq.ParquetFile(block.path, pre_buffer=False)  # pre-buffering reads it all
    schema = pa.schema([parquet.schema_arrow.field("id"),
                        parquet.schema_arrow.field("signature")],
                       metadata=signature_metadata(config))
    writer = AtomicWriter(saved_dir / f"{block.shard}.parquet", schema)
    first = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=["id", "signature"]):
        keep = pa.array(~duplicate[first:first + batch.num_rows])
        first += batch.num_rows
        writer.write([batch.column(0).filter(keep), batch.column(1).filter(keep)])
    writer.close()


class AtomicWriter:
    """A Parquet file written batch by batch to ``<name>.tmp``, renamed when complete. Hashes,
    signatures and ids repeat too rarely for dictionary encoding, which would only cost time
    (3x the write time of signatures)."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd",
                                       use_dictionary=False)

    def write(self, columns: list[pa.Array]) -> None:
        self.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.writer.schema))

    def close(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
