"""The driver side of ``minhash_dedup``: from band buckets to one decision per document.

Memory: band buckets are grouped one band at a time by Polars' streaming engine
(:func:`~curation.dedup.clusters.band_edges`); the corpus-wide state is a few integers per
document (the union-find forest) plus what concerns documents that have near duplicates (their
candidate pairs, ids and priorities; with ``verify``, their texts). Signatures are never loaded
all at once.

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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curation.dedup.clusters import DocIndex, UnionFind, band_edges, doc_numbers
from curation.dedup.minhash import MinHasher, jaccard_pairs

SIGNATURES, BUCKETS, AGAINST, DECISIONS = "signatures", "buckets", "against", "decisions"
BUCKET_SCHEMA = pa.schema([("key", pa.uint64()), ("doc", pa.uint64())])
DECISION_SCHEMA = pa.schema([("row", pa.int64()), ("cluster", pa.string()),
                             ("size", pa.int32()), ("is_duplicate", pa.bool_())])
META_KEY = b"crucible.minhash"
EARLIER = 1 << 23  # block numbers of earlier jobs' signature files: EARLIER | k
EMPTY_SIGNATURE = np.uint64(2**64 - 1)  # every value of a text without shingles
_COMPATIBLE = ("num_perm", "ngram", "mode", "seed", "hash")


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
                 saved_dir: Path) -> dict[str, Any]:
    """Plans ``minhash_dedup`` over ``shards`` (see the module docstring); returns the summary
    recorded in the manifest."""
    bands, rows = config.banding[:2]
    for folder in (root / DECISIONS, root / AGAINST, saved_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    ours = [_our_block(root, shard) for shard in shards]
    earlier = _earlier_blocks(config, hasher, root, bands, rows)
    blocks = earlier + ours
    index = DocIndex([b.number for b in blocks], [b.rows for b in blocks])
    n_earlier = sum(b.rows for b in earlier)
    forest = UnionFind(index.size)
    pairs = pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64})
    edges = 0
    for band in range(bands):
        doc, anchor = band_edges([block.bucket_file(root, band) for block in blocks])
        a, b = index.dense(doc), index.dense(anchor)
        ours_involved = np.maximum(a, b) >= n_earlier
        a, b = a[ours_involved], b[ours_involved]
        edges += len(a)
        if config.verify:
            pairs = pl.concat([pairs, pl.DataFrame({"a": np.minimum(a, b),
                                                    "b": np.maximum(a, b)})]).unique()
        else:
            forest.union(a, b)
    summary: dict[str, Any] = {"candidate_edges": edges}
    if config.verify:
        pairs = pairs.sort(["a", "b"])
        a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
        similar = _similar(config, blocks, index, a, b)
        forest.union(a[similar], b[similar])
        summary.update(candidate_pairs=len(a), verified_pairs=int(similar.sum()))
    decided = _write_decisions(config, root, blocks, index, n_earlier, forest.labels())
    _save_signatures(config, ours, decided, saved_dir)
    roots = [np.zeros(0, np.int64), *(d["root"].to_numpy() for d in decided.values())]
    return {"documents": index.size - n_earlier, "earlier_documents": n_earlier, **summary,
            "clusters": len(np.unique(np.concatenate(roots))),
            "duplicates": sum(int(d["is_duplicate"].sum()) for d in decided.values())}


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
            parquet = pq.ParquetFile(path)
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
            for batch in parquet.iter_batches(columns=["signature"]):
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


def _gather(blocks: list[Block], index: DocIndex, dense: np.ndarray,
            columns: list[str]) -> pl.DataFrame:
    """``columns`` of the documents ``dense`` (sorted), read block by block; columns a block
    lacks are null."""
    where = index.block_of(dense)
    parts = []
    for pos in np.unique(where):
        block = blocks[pos]
        names = pq.ParquetFile(block.path).schema_arrow.names
        table = pq.read_table(block.path, columns=[c for c in columns if c in names])
        local = dense[where == pos] - index.offsets[pos]
        parts.append(pl.from_arrow(table.take(pa.array(local)), rechunk=False))
    if not parts:
        return pl.DataFrame(schema={c: pl.String for c in columns if c != "priority"})
    return pl.concat(parts, how="diagonal_relaxed")


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


def _write_decisions(config: Any, root: Path, blocks: list[Block], index: DocIndex,
                     n_earlier: int, labels: np.ndarray) -> dict[str, pl.DataFrame]:
    """Chooses every cluster's survivor and writes ``decisions/<shard>.parquet`` (rows of
    clusters of two or more; other rows are singletons). Returns the decisions per shard."""
    sizes = np.bincount(labels, minlength=len(labels))
    members = np.flatnonzero(sizes[labels] > 1)  # (m,) dense, sorted
    roots = labels[members]
    priority = config.priority_column is not None
    info = _gather(blocks, index, members, ["id", "priority"] if priority else ["id"])
    frame = pl.DataFrame({"dense": members, "root": roots}).hstack(
        info.select("id", *(["priority"] if "priority" in info.columns else [])))
    if priority:
        if "priority" not in frame.columns:
            frame = frame.with_columns(priority=pl.lit(None))
        survivors = (frame.with_columns(earlier=pl.col("dense") < n_earlier)
                     .sort(["root", "earlier", "priority", "id", "dense"],
                           descending=[False, True, True, False, False], nulls_last=True)
                     .group_by("root", maintain_order=True)
                     .agg(survivor=pl.col("dense").first(), cluster=pl.col("id").first()))
    else:
        survivors = (frame.filter(pl.col("dense") == pl.col("root"))
                     .select("root", survivor="dense", cluster="id"))
    frame = frame.join(survivors, on="root", how="left", maintain_order="left")
    decided = {}
    for pos, block in enumerate(blocks):
        if block.shard is None:
            continue
        lo, hi = index.offsets[pos], index.offsets[pos + 1]
        part = frame.filter(pl.col("dense").is_between(lo, hi, closed="left"))
        rows = part["dense"].to_numpy() - lo
        table = pa.Table.from_arrays(
            [pa.array(rows, pa.int64()), part["cluster"].to_arrow().cast(pa.string()),
             pa.array(sizes[part["root"].to_numpy()].astype(np.int32)),
             pa.array((part["dense"] != part["survivor"]).to_numpy())], schema=DECISION_SCHEMA)
        _write_atomic(table, root / DECISIONS / f"{block.shard}.parquet")
        decided[block.shard] = pl.DataFrame({"row": rows, "root": part["root"],
                                             "is_duplicate": table.column(3).to_numpy()})
    return decided


def _save_signatures(config: Any, ours: list[Block], decided: dict[str, pl.DataFrame],
                     saved_dir: Path) -> None:
    """Writes the signatures of every document kept by this step, with its id, to
    ``saved_dir/<shard>.parquet``: what a later job's ``against`` reads."""
    meta = signature_metadata(config)
    for block in ours:
        table = pq.read_table(block.path, columns=["id", "signature"])
        decision = decided[block.shard]
        duplicate = decision["row"].filter(decision["is_duplicate"]).to_numpy()
        keep = np.ones(block.rows, bool)
        keep[duplicate] = False
        table = table.filter(pa.array(keep)).replace_schema_metadata(meta)
        _write_atomic(table, saved_dir / f"{block.shard}.parquet")


class AtomicWriter:
    """A Parquet file written batch by batch to ``<name>.tmp``, renamed when complete."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def write(self, columns: list[pa.Array]) -> None:
        self.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.writer.schema))

    def close(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
