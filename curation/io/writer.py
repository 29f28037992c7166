"""Writing Parquet shards atomically, split into parts by size.

Every part is written to ``<name>.tmp`` and renamed to ``<name>`` when complete, so a reader
(or a resumed job) never sees a half-written file. Parts are ``<stem>-00000.parquet``,
``<stem>-00001.parquet``, ... opened on demand: a shard whose rows are all rejected writes
nothing. Batches whose schema differs from the first one are cast to it (a column that was all
null in the first batch and typed later is the usual case).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class PartWriter:
    """Writes record batches to size-bounded, atomically renamed Parquet parts."""

    def __init__(self, directory: Path, stem: str, *, max_part_bytes: int = 256 << 20,
                 row_group_rows: int = 64 * 1024, compression: str = "zstd",
                 compression_level: int | None = 3) -> None:
        self.directory = Path(directory)
        self.stem = stem
        self.max_part_bytes = max_part_bytes
        self.row_group_rows = row_group_rows
        self.compression = compression
        self.compression_level = compression_level
        self.rows = 0
        self.parts: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._schema: pa.Schema | None = None
        self._part_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Appends a batch, starting a new part when the current one is full."""
        if batch.num_rows == 0:
            return
        if self._schema is None:
            self._schema = batch.schema
        elif batch.schema != self._schema:
            batch = _conform(batch, self._schema)
        if self._writer is not None and self._part_bytes >= self.max_part_bytes:
            self._close_part()
        if self._writer is None:
            self._open_part()
        self._writer.write_batch(batch, row_group_size=self.row_group_rows)
        self._part_bytes += batch.nbytes
        self.rows += batch.num_rows

    def _open_part(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._final = self.directory / f"{self.stem}-{len(self.parts):05d}.parquet"
        self._tmp = self._final.with_name(self._final.name + ".tmp")
        self._writer = pq.ParquetWriter(self._tmp, self._schema, compression=self.compression,
                                        compression_level=self.compression_level,
                                        write_statistics=True)
        self._part_bytes = 0

    def _close_part(self) -> None:
        assert self._writer is not None and self._tmp is not None and self._final is not None
        self._writer.close()
        os.replace(self._tmp, self._final)
        self.parts.append(self._final)
        self._writer = None

    def close(self) -> list[Path]:
        """Finishes the open part; returns every part written, in order."""
        if self._writer is not None:
            self._close_part()
        return self.parts

    def abort(self) -> None:
        """Drops the open part's temporary file (completed parts are the caller's to remove)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - already failing; the temp file goes either way
                pass
            self._writer = None
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.names != schema.names:
        raise ValueError(f"batch columns {batch.schema.names} differ from the shard's first "
                         f"batch {schema.names}; a step must add the same columns to every batch")
    return batch.cast(schema)


def remove_parts(directory: Path, stem: str) -> None:
    """Deletes every part (and leftover temp file) of ``stem`` in ``directory``."""
    if not directory.exists():
        return
    pattern = re.compile(rf"{re.escape(stem)}-\d{{5}}\.parquet(\.tmp)?")
    for path in directory.iterdir():
        if pattern.fullmatch(path.name):
            path.unlink()
