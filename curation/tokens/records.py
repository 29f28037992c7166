"""Rows of an SFT or preference input file as batches of dicts: Parquet, JSON lines (``.jsonl``,
``.jsonl.gz``) or JSON (``.json``: an array of objects, or JSON lines under that name).

Parquet is read one record batch at a time and only the columns asked for; JSON lines one chunk
of lines at a time. A JSON array has to be parsed whole (the format gives no other way). Rows are
numbered from 0 in file order; in a JSON lines file blank lines are skipped and not numbered.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

SUFFIXES = (".parquet", ".jsonl.gz", ".jsonl", ".json.gz", ".json")
SNIFF_ROWS = 1000   # JSON rows whose keys name a file's columns


def input_stem(path: Path) -> str:
    """The file name without its data suffix (``train.jsonl.gz`` → ``train``)."""
    name = path.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class RecordFile:
    """One input file, read as batches of row dicts."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"input {self.path} does not exist")
        suffix = next((s for s in SUFFIXES if self.path.name.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"input {self.path}: unsupported file type; give Parquet "
                             "(.parquet) or JSON lines (.jsonl, .jsonl.gz, .json)")
        self.kind = "parquet" if suffix == ".parquet" else "json"

    def columns(self) -> list[str]:
        """Column names: the Parquet schema, or the keys of the first JSON rows (in order)."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(self.path).schema_arrow.names)
        keys: dict[str, None] = {}
        for batch in self.batches(SNIFF_ROWS):
            for row in batch:
                keys.update(dict.fromkeys(row))
            break
        return list(keys)

    def num_rows(self) -> int | None:
        """The number of rows when it is cheap to know (Parquet metadata, plain JSON lines)."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        if self.path.name.endswith((".jsonl", ".json")) and not self._is_array():
            with open(self.path, "rb") as f:
                return sum(1 for line in f if line.strip())
        return None

    def batches(self, batch_size: int, columns: list[str] | None = None
                ) -> Iterator[list[dict]]:
        """Rows in batches of ``batch_size`` dicts; ``columns`` limits what Parquet reads."""
        if self.kind == "parquet":
            yield from self._parquet_batches(batch_size, columns)
        elif self._is_array():
            rows = self._json_array()
            for start in range(0, len(rows), batch_size):
                yield rows[start:start + batch_size]
        else:
            yield from self._jsonl_batches(batch_size)

    def _parquet_batches(self, batch_size: int, columns: list[str] | None
                         ) -> Iterator[list[dict]]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        if columns is not None:
            columns = [c for c in pf.schema_arrow.names if c in set(columns)]
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield batch.to_pylist()

    def _open(self):
        if self.path.name.endswith(".gz"):
            return io.TextIOWrapper(gzip.open(self.path, "rb"), encoding="utf-8")
        return open(self.path, encoding="utf-8")

    def _is_array(self) -> bool:
        """A ``.json`` file whose first character is ``[`` (``.jsonl`` is always lines)."""
        if not self.path.name.endswith((".json", ".json.gz")):
            return False
        with self._open() as f:
            while True:
                ch = f.read(1)
                if not ch or not ch.isspace():
                    return ch == "["

    def _json_array(self) -> list[dict]:
        with self._open() as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.path}: not valid JSON at line {exc.lineno} "
                                 f"({exc.msg})") from exc
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"{self.path}: row {i} is a {type(row).__name__}, not an "
                                 "object; each row must be a JSON object of columns")
        return rows

    def _jsonl_batches(self, batch_size: int) -> Iterator[list[dict]]:
        batch: list[dict] = []
        with self._open() as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{self.path}: line {lineno} is not valid JSON ({exc.msg});"
                                     " each line must hold one JSON object") from exc
                if not isinstance(row, dict):
                    raise ValueError(f"{self.path}: line {lineno} holds a "
                                     f"{type(row).__name__}, not an object; each line must "
                                     "hold one JSON object of columns")
                batch.append(row)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch
