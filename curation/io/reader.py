"""Reading raw Parquet shards as a stream of record batches with canonical ``id``/``text``.

Inputs may be files, folders (searched recursively for ``*.parquet``) or glob patterns. Each
shard is read batch by batch (``pyarrow.parquet.ParquetFile.iter_batches``), so memory stays
flat for any shard size. The user's text and id columns are renamed to ``text`` and ``id``;
when the id column is absent, ids are generated deterministically as ``<shard>:<row>``.
A text column stored as binary is decoded as UTF-8, row by row only when a batch holds invalid
bytes (those rows become null and are rejected by the input check as ``invalid_utf8``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ID, TEXT = "id", "text"


class ShardError(Exception):
    """A shard cannot be processed (corrupt file, wrong schema); the shard is quarantined."""


def discover_inputs(paths: list[str]) -> list[Path]:
    """Expands files, folders and globs into a sorted, de-duplicated list of Parquet files.

    Raises:
        FileNotFoundError: a path matches nothing, or nothing at all was found.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(os.path.expanduser(raw))
        if any(ch in raw for ch in "*?["):
            matches = [Path(m) for m in glob.glob(os.path.expanduser(raw), recursive=True)]
            matches = [m for m in matches if m.is_file()]
        elif path.is_dir():
            matches = [p for p in path.rglob("*.parquet") if p.is_file()]
        elif path.is_file():
            matches = [path]
        else:
            raise FileNotFoundError(f"input {raw!r} does not exist")
        if not matches:
            raise FileNotFoundError(f"input {raw!r} matched no Parquet files")
        found.extend(matches)
    unique = sorted({p.resolve() for p in found})
    if not unique:
        raise FileNotFoundError("no input Parquet files given; set input.paths or pass --input")
    return unique


@dataclass(frozen=True)
class ColumnMap:
    """Which of the user's columns hold the document id and text."""

    text: str = TEXT
    id: str = ID


def shard_rows(path: Path) -> int:
    """Row count from the Parquet footer (0 when the footer cannot be read)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - corrupt files are reported when the shard runs
        return 0


def read_batches(path: Path, columns: ColumnMap, batch_size: int,
                 shard_name: str) -> Iterator[pa.RecordBatch]:
    """Streams ``path`` as record batches with canonical ``id`` and ``text`` columns.

    Raises:
        ShardError: the file is not readable Parquet, or the text column is missing or not
            a string column. The message names the file, what was wrong and the fix.
    """
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ShardError(f"{path}: not a readable Parquet file ({exc}); re-export or remove it"
                         ) from exc
    names = parquet.schema_arrow.names
    if columns.text not in names:
        raise ShardError(f"{path}: column {columns.text!r} is missing (found: "
                         f"{', '.join(names)}); set input.text_column to the column holding "
                         "the documents")
    text_type = parquet.schema_arrow.field(columns.text).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
            or pa.types.is_binary(text_type) or pa.types.is_large_binary(text_type)):
        raise ShardError(f"{path}: column {columns.text!r} has type {text_type}; it must hold "
                         "strings (utf8)")
    has_id = columns.id in names
    first_row = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_size):
            yield _canonical(batch, columns, has_id, shard_name, first_row)
            first_row += batch.num_rows
    except pa.ArrowException as exc:
        raise ShardError(f"{path}: corrupt data after row {first_row} ({exc}); the rows before "
                         "it were read, the shard is quarantined") from exc


def _canonical(batch: pa.RecordBatch, columns: ColumnMap, has_id: bool, shard: str,
               first_row: int) -> pa.RecordBatch:
    names = list(batch.schema.names)
    arrays = list(batch.columns)
    text = _as_utf8(arrays[names.index(columns.text)])
    out_names, out_arrays = [ID, TEXT], [None, text]
    if has_id:
        out_arrays[0] = pc.cast(arrays[names.index(columns.id)], pa.string())
    else:
        rows = pa.array(range(first_row, first_row + batch.num_rows), pa.int64())
        out_arrays[0] = pc.binary_join_element_wise(f"{shard}:", pc.cast(rows, pa.string()), "")
    for name, arr in zip(names, arrays):
        if name in (columns.text, columns.id) or name in (ID, TEXT):
            continue
        out_names.append(name)
        out_arrays.append(arr)
    return pa.RecordBatch.from_arrays(out_arrays, names=out_names)


def _as_utf8(arr: pa.Array) -> pa.Array:
    """Casts string/binary to ``string``; invalid UTF-8 rows become null (flagged later)."""
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    if pa.types.is_string(arr.type):
        try:
            arr.validate(full=True)
            return arr
        except pa.ArrowInvalid:
            arr = arr.cast(pa.binary())
    if pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.binary())
    try:
        return arr.cast(pa.string())  # validates UTF-8
    except pa.ArrowInvalid:
        # Rare path: decode row by row so one bad row does not sink the batch.
        values = []
        for item in arr.to_pylist():
            if item is None:
                values.append(None)
                continue
            try:
                values.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(None)
        decoded = pa.array(values, pa.string())
        return _mark_invalid(decoded, arr)


INVALID_UTF8 = "\x00crucible:invalid-utf8\x00"


def _mark_invalid(decoded: pa.Array, raw: pa.Array) -> pa.Array:
    """Rows that were non-null bytes but failed to decode carry a sentinel the input check
    recognises (so they are rejected as invalid_utf8 rather than as null text)."""
    bad = pc.and_(pc.is_null(decoded), pc.is_valid(raw))
    return pc.if_else(bad, pa.scalar(INVALID_UTF8), decoded)
