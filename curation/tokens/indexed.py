"""Megatron-compatible indexed token datasets: ``PREFIX.bin`` + ``PREFIX.idx`` (the MMIDIDX layout).

``PREFIX.bin`` holds every document's token ids back to back in one dtype. ``PREFIX.idx`` is

    b"MMIDIDX\\x00\\x00"            9 bytes, magic
    version        <Q         1
    dtype code     <B         Megatron's codes: 8 = uint16, 4 = int32, ...
    sequence count <Q         N
    document count <Q         N + 1 (length of the document index below)
    sequence lengths  int32[N]    tokens per sequence
    sequence pointers int64[N]    byte offset of each sequence in .bin
    document index    int64[N+1]  sequence index where each document starts (0, 1, ..., N)

which is what Megatron-Core's ``IndexedDataset`` (and Megatron-LM's ``MMapIndexedDataset``) read.
We write one sequence per document. Megatron has no uint32 code, so vocabularies of 65,500 ids
or more are stored as int32, exactly as Megatron's own ``DType.optimal_dtype`` chooses.

Writers stream to ``*.tmp`` files and rename both into place on :meth:`IndexedWriter.finish`, so a
reader never sees a half-written dataset. Readers memory-map both files: opening a dataset reads
nothing but the header, and a document is a view into the mapped ``.bin``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
               6: np.float64, 7: np.float32, 8: np.uint16}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
_HEADER = struct.Struct("<9sQBQQ")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest token dtype Megatron accepts for ``vocab_size`` ids: uint16 below 65,500,
    int32 otherwise (Megatron has no uint32)."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive (got {vocab_size})")
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def dataset_paths(prefix: str | Path) -> tuple[Path, Path]:
    """``(PREFIX.bin, PREFIX.idx)``."""
    prefix = str(prefix)
    return Path(prefix + ".bin"), Path(prefix + ".idx")


class IndexedWriter:
    """Appends documents to a new indexed dataset at ``prefix``; call :meth:`finish` to publish.

    Used as a context manager, an exception removes the temporary files instead."""

    def __init__(self, prefix: str | Path, dtype: np.dtype | type) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"dtype {self.dtype} has no Megatron code; use uint16 or int32")
        self.bin_path, self.idx_path = dataset_paths(prefix)
        self.bin_path.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = self.bin_path.with_name(self.bin_path.name + ".tmp")
        self._bin = open(self._bin_tmp, "wb")
        self._lengths: list[np.ndarray] = []
        self.tokens = 0
        self._limit = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None

    def add(self, tokens: np.ndarray | list[int]) -> None:
        """Appends one document."""
        self.add_many([tokens])

    def add_many(self, documents: list[np.ndarray] | list[list[int]]) -> None:
        """Appends documents in order (one write for the batch)."""
        if not documents:
            return
        lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
        if lengths.size and lengths.max() > np.iinfo(np.int32).max:
            raise ValueError("a document has more than 2**31 - 1 tokens; split it first")
        flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in documents]) \
            if lengths.sum() else np.zeros(0, dtype=np.int64)
        if flat.size and self._limit is not None and (flat.max() > self._limit or flat.min() < 0):
            raise ValueError(f"token id {int(flat.max())} does not fit {self.dtype}; the "
                             "tokenizer's vocabulary is larger than the dtype chosen for it")
        self._bin.write(flat.astype(self.dtype, copy=False).tobytes())
        self._lengths.append(lengths.astype(np.int32))
        self.tokens += int(lengths.sum())

    def finish(self) -> tuple[int, int]:
        """Writes the index and moves both files into place; returns ``(documents, tokens)``."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        write_index(self.idx_path, lengths, self.dtype)
        os.replace(self._bin_tmp, self.bin_path)
        return int(lengths.size), self.tokens

    def abort(self) -> None:
        """Closes and removes the temporary data file."""
        self._bin.close()
        self._bin_tmp.unlink(missing_ok=True)

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_index(idx_path: Path, lengths: np.ndarray, dtype: np.dtype) -> None:
    """Writes ``idx_path`` atomically for documents of ``lengths`` tokens stored as ``dtype``."""
    n = int(lengths.size)
    pointers = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(dtype).itemsize, out=pointers[1:])
    tmp = idx_path.with_name(idx_path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, CODE_OF[np.dtype(dtype)], n, n + 1))
        f.write(lengths.astype("<i4", copy=False).tobytes())
        f.write(pointers.astype("<i8", copy=False).tobytes())
        f.write(np.arange(n + 1, dtype="<i8").tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, idx_path)


class IndexedDataset:
    """A memory-mapped indexed dataset: ``len(ds)`` documents, ``ds[i]`` a read-only token view.

    ``lengths`` (int32) and ``pointers`` (int64 byte offsets) are views into the mapped index, so
    opening even a very large dataset costs only the mapping."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = str(prefix)
        bin_path, idx_path = dataset_paths(prefix)
        for path in (bin_path, idx_path):
            if not path.exists():
                raise FileNotFoundError(f"indexed dataset {self.prefix!r}: {path} is missing "
                                        "(give the path prefix without .bin/.idx)")
        index = np.memmap(idx_path, dtype=np.uint8, mode="r")
        if index.size < _HEADER.size:
            raise ValueError(f"{idx_path}: {index.size} bytes, too short for an MMIDIDX header")
        magic, version, code, n, n_docs = _HEADER.unpack(bytes(index[:_HEADER.size]))
        if magic != MAGIC:
            raise ValueError(f"{idx_path}: not an MMIDIDX index (magic {magic!r})")
        if version != VERSION or code not in DTYPE_CODES:
            raise ValueError(f"{idx_path}: unsupported version {version} or dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        offset = _HEADER.size
        self.lengths = np.frombuffer(index, dtype="<i4", count=n, offset=offset)
        offset += 4 * n
        self.pointers = np.frombuffer(index, dtype="<i8", count=n, offset=offset)
        offset += 8 * n
        self.document_index = np.frombuffer(index, dtype="<i8", count=n_docs, offset=offset)
        expected = int(self.lengths.astype(np.int64).sum()) * self.dtype.itemsize
        size = bin_path.stat().st_size
        if size != expected:
            raise ValueError(f"{bin_path}: {size} bytes but the index describes {expected}; "
                             "the dataset is truncated or its files do not belong together")
        self._bin = np.memmap(bin_path, dtype=self.dtype, mode="r") if size else \
            np.zeros(0, dtype=self.dtype)

    def __len__(self) -> int:
        return int(self.lengths.size)

    @property
    def num_tokens(self) -> int:
        """Tokens in all documents."""
        return int(self.lengths.astype(np.int64).sum())

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for {n} documents in {self.prefix}")
        i %= n
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._bin[start:start + int(self.lengths[i])]

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``offset : offset + length`` of document ``i`` (to its end when ``length`` is
        None), without touching the rest of it."""
        doc = self[i]
        end = doc.size if length is None else min(doc.size, offset + length)
        return doc[offset:end]
