"""MinHash signatures, LSH band keys, shingle hashes and exact shingle Jaccard over Arrow string
columns, computed by the compiled kernels in ``curation._kernels`` (CPU) or by CuPy kernels
(:mod:`curation.dedup.minhash_gpu`), bit for bit as :mod:`curation.dedup.reference` specifies.

The text column is read in place: the offsets and data buffers of an Arrow ``string`` or
``large_string`` array (sliced arrays included) go to the kernels without a copy. A null row is
treated as an empty document: no shingles, the all-maximum signature.

    hasher = MinHasher(num_perm=128, ngram=5)          # xxh64 mode, all cores
    sig = hasher.signatures(batch.column("text"))      # (n, 128) uint64
    keys = hasher.band_keys(sig, bands=16, rows=8)     # (n, 16) uint64
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import _kernels
from curation.dedup import reference

if TYPE_CHECKING:
    import datasketch

MODES = ("word", "char")
HASHES = ("xxh64", "sha1")
DEVICES = ("cpu", "cuda")

TextColumn = pa.Array | pa.ChunkedArray


class MinHasher:
    """MinHash signatures of documents, with the permutations of ``datasketch.MinHash(num_perm,
    seed)``.

    Args:
        num_perm: permutations per signature (signature length).
        ngram: shingle length, in words (``mode="word"``) or code points (``mode="char"``).
        mode: ``"word"`` shingles for space-separated languages, ``"char"`` for the others.
        seed: seed of the permutation coefficients (datasketch's ``seed``).
        hash: ``"xxh64"`` (fast; exact arithmetic mod 2^61 - 1) or ``"sha1"`` (datasketch's
            legacy scheme, so signatures equal ``datasketch.MinHash(..., scheme="legacy")``).
        threads: CPU threads; 0 means every core this process may use.
        device: ``"cpu"`` or ``"cuda"`` (CuPy kernels, same signatures bit for bit).
    """

    def __init__(self, num_perm: int = 128, ngram: int = 5, mode: str = "word", seed: int = 1,
                 hash: str = "xxh64", threads: int = 0, device: str = "cpu") -> None:
        if num_perm < 1:
            raise ValueError(f"MinHasher: num_perm must be >= 1 (got {num_perm})")
        _check_shingling(ngram, mode, "MinHasher")
        if hash not in HASHES:
            raise ValueError(f"MinHasher: hash must be one of {HASHES} (got {hash!r})")
        if threads < 0:
            raise ValueError(f"MinHasher: threads must be >= 0, 0 meaning every core "
                             f"(got {threads})")
        if device not in DEVICES:
            raise ValueError(f"MinHasher: device must be one of {DEVICES} (got {device!r})")
        self.num_perm, self.ngram, self.mode, self.seed = num_perm, ngram, mode, seed
        self.hash, self.threads, self.device = hash, threads, device
        self.a, self.b = reference.permutations(num_perm, seed)  # (num_perm,) uint64 each
        if device == "cuda":
            from curation.dedup import minhash_gpu
            minhash_gpu.require_gpu()

    def __repr__(self) -> str:
        return (f"MinHasher(num_perm={self.num_perm}, ngram={self.ngram}, mode={self.mode!r}, "
                f"seed={self.seed}, hash={self.hash!r}, threads={self.threads}, "
                f"device={self.device!r})")

    def signatures(self, text: TextColumn) -> np.ndarray:
        """The signatures of ``text``'s documents: uint64 ``(len(text), num_perm)``. Values are
        below 2^61 - 1 in xxh64 mode and below 2^32 in sha1 mode; a document without shingles
        (empty, only separators, or null) gets the all-maximum row (2^64 - 1, or 2^32 - 1)."""
        chunks = [self._chunk_signatures(c) for c in _chunks(text)]
        if not chunks:
            return np.empty((0, self.num_perm), np.uint64)
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def band_keys(self, sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
        """LSH band keys of signatures (see :func:`band_keys`)."""
        return band_keys(sig, bands, rows, self.threads)

    def _chunk_signatures(self, arr: pa.Array) -> np.ndarray:
        offsets, data = string_buffers(arr)
        char_mode, sha1 = self.mode == "char", self.hash == "sha1"
        if self.device == "cuda":
            from curation.dedup import minhash_gpu
            return minhash_gpu.signatures(offsets, data, self.a, self.b, self.ngram, char_mode,
                                          sha1)
        return _kernels.minhash(offsets, data, self.a, self.b, self.ngram, char_mode, sha1,
                                kernel_threads(self.threads))


def kernel_threads(threads: int) -> int:
    """``threads``, or when 0 the ``CRUCIBLE_THREADS`` environment variable (the curation
    executors set it to their share of the cores in every worker), or 0 = every core."""
    return threads or int(os.environ.get("CRUCIBLE_THREADS", "0") or 0)


def band_keys(sig: np.ndarray, bands: int, rows: int, threads: int = 0) -> np.ndarray:
    """LSH band keys uint64 ``(len(sig), bands)``: for band ``i``, xxh64 (seed ``i``) of
    signature values ``i*rows .. i*rows + rows - 1`` as little-endian bytes. Needs
    ``bands * rows <= sig.shape[1]``."""
    sig = np.ascontiguousarray(sig)
    return _kernels.band_keys(sig, bands, rows, kernel_threads(threads))


def shingle_hashes(text: TextColumn, ngram: int = 5, mode: str = "word",
                   threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """xxh64 of every shingle, in document order with duplicates kept: ``(doc_offsets, hashes)``
    where document ``i``'s hashes are ``hashes[doc_offsets[i]:doc_offsets[i + 1]]``
    (``doc_offsets`` int64 of length ``len(text) + 1``, ``hashes`` uint64)."""
    _check_shingling(ngram, mode, "shingle_hashes")
    offsets_parts, hash_parts, base = [np.zeros(1, np.int64)], [], 0
    for arr in _chunks(text):
        doc_offsets, hashes = _kernels.shingle_hashes(*string_buffers(arr), ngram, mode == "char",
                                                      kernel_threads(threads))
        offsets_parts.append(doc_offsets[1:] + base)
        hash_parts.append(hashes)
        base += len(hashes)
    hashes = np.concatenate(hash_parts) if hash_parts else np.empty(0, np.uint64)
    return np.concatenate(offsets_parts), hashes


def jaccard_pairs(text: TextColumn, left: Any, right: Any, ngram: int = 5, mode: str = "word",
                  threads: int = 0) -> np.ndarray:
    """Exact Jaccard similarity (float64) of the shingle sets of documents ``left[k]`` and
    ``right[k]`` (row indices into ``text``); 0.0 when neither has a shingle."""
    _check_shingling(ngram, mode, "jaccard_pairs")
    left = np.ascontiguousarray(left, dtype=np.int64)
    right = np.ascontiguousarray(right, dtype=np.int64)
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks() if text.num_chunks != 1 else text.chunk(0)
    [arr] = _chunks(text)
    return _kernels.jaccard_pairs(*string_buffers(arr), left, right, ngram, mode == "char",
                                  kernel_threads(threads))


def to_datasketch(sig_row: np.ndarray, seed: int = 1) -> datasketch.MinHash:
    """A ``datasketch.MinHash`` (legacy scheme) holding one signature row, for datasketch's
    LSH indexes and estimators. Signatures made with ``hash="sha1"`` are exactly datasketch's
    own; xxh64 ones compare and index correctly but must not be updated with datasketch's
    hashing."""
    from datasketch import MinHash

    values = np.ascontiguousarray(sig_row, dtype=np.uint64)
    if values.ndim != 1:
        raise ValueError(f"to_datasketch: sig_row must be one signature (1-D), got shape "
                         f"{values.shape}; pass sig[i]")
    return MinHash(num_perm=len(values), seed=seed, hashvalues=values.copy(), scheme="legacy")


def from_datasketch(m: datasketch.MinHash) -> np.ndarray:
    """The signature of a ``datasketch.MinHash`` as a uint64 row (a copy)."""
    return np.array(m.hashvalues, dtype=np.uint64)


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (int32 for ``string``, int64 for ``large_string``; ``len(arr) + 1`` of them,
    the array's own slice) and the UTF-8 data buffer (uint8) of a string array, without
    copying. Null rows come out as empty ranges (copying the array only in the rare case where
    a null slot still spans bytes)."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise TypeError(f"text must be an Arrow string or large_string array (got {arr.type}); "
                        f"cast it with .cast(pa.large_string())")
    offset_type = np.int32 if pa.types.is_string(arr.type) else np.int64
    offsets, data = _raw_buffers(arr, offset_type)
    if arr.null_count:
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        if np.any(np.diff(offsets)[nulls]):
            offsets, data = _raw_buffers(pc.fill_null(arr, ""), offset_type)
    return offsets, data


def _raw_buffers(arr: pa.Array, offset_type: type) -> tuple[np.ndarray, np.ndarray]:
    _, offset_buf, data_buf = arr.buffers()
    if offset_buf is None:  # an empty array may carry no offsets buffer at all
        return np.zeros(1, offset_type), np.empty(0, np.uint8)
    offsets = np.frombuffer(offset_buf, dtype=offset_type, count=len(arr) + 1,
                            offset=arr.offset * np.dtype(offset_type).itemsize)
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.empty(0, np.uint8))
    return offsets, data


def _chunks(text: Any) -> list[pa.Array]:
    """The string arrays of ``text`` (an Arrow array or chunked array; anything else is
    converted with ``pa.array``); ``string_view`` becomes ``large_string``."""
    if isinstance(text, pa.ChunkedArray):
        chunks = list(text.chunks)
    elif isinstance(text, pa.Array):
        chunks = [text]
    else:
        chunks = [pa.array(text, pa.large_string())]
    return [c.cast(pa.large_string()) if pa.types.is_string_view(c.type) else c for c in chunks]


def _check_shingling(ngram: int, mode: str, where: str) -> None:
    if ngram < 1:
        raise ValueError(f"{where}: ngram must be >= 1 (got {ngram})")
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {MODES} (got {mode!r})")
