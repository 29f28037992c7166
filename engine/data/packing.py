"""Packing documents into fixed-length training rows, with no attention or loss across documents.

The documents of one rank are concatenated into a packed token stream. Row ``k`` covers packed
tokens ``[k*T, k*T + T]`` (T + 1 tokens, so consecutive rows share one token, as in nanoGPT):

    input_ids    = tokens[:-1]
    labels       = tokens[1:], but -100 where the target is the first token of another document
                   than its input token (the next-document prediction after an EOS is not learned)
    position_ids = 0, 1, 2, ... restarting at every document start inside the row; a document
                   continued from the previous row restarts at 0 as well, since attention is
                   confined to the row and its earlier tokens are not visible
    cu_seqlens   = segment boundaries, flash-attn's varlen convention over the flattened batch

Every input token of the stream appears in exactly one row; only the target of a row's last
position is also the input of the next row's first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

IGNORE_INDEX = -100


class Document(NamedTuple):
    """A document offered to the packer: its size, how to read a slice of it, and an opaque tag
    (the loader keeps the group and the stream position there)."""

    length: int
    read: Callable[[int, int], np.ndarray]
    """``read(offset, n)`` returns tokens ``offset : offset + n`` of the document."""
    tag: Any


class Piece(NamedTuple):
    """A slice ``[start, start + count)`` of a document placed in a row."""

    document: Document
    start: int
    count: int


class RowPacker:
    """Cuts rows of ``seq_len + 1`` tokens from the documents returned by ``source``.

    ``source()`` returns the next :class:`Document`, or None when there are no more. The packer
    holds only the document the next row starts in (:attr:`head`, at token :attr:`offset`) and
    reads just the slices each row needs, so a long document is never loaded whole.
    """

    def __init__(self, seq_len: int, source: Callable[[], Document | None],
                 offset: int = 0) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len is {seq_len}; give a positive sequence length")
        self.seq_len = seq_len
        self._source = source
        self._pending: deque[Document] = deque()
        self.offset = offset
        """Token of :attr:`head` where the next row starts (applies to the first document
        ``source`` returns when nothing is pending yet, which is how a resume skips ahead)."""

    @property
    def head(self) -> Document | None:
        """The document the next row starts in, or None if it has not been fetched yet."""
        return self._pending[0] if self._pending else None

    def next_row(self) -> tuple[np.ndarray, np.ndarray, list[Piece]] | None:
        """``(tokens (T+1,), segments (T+1,), pieces)`` for the next row, or None when the source
        runs out before the row is full (the partial row is dropped). ``segments[j]`` is the
        index in ``pieces`` of the document token ``j`` comes from."""
        need = self.seq_len + 1
        pieces: list[Piece] = []
        i, offset = 0, self.offset
        while need > 0:
            if i == len(self._pending):
                doc = self._source()
                if doc is None:
                    return None
                self._pending.append(doc)
            doc = self._pending[i]
            count = min(doc.length - offset, need)
            if count > 0:
                pieces.append(Piece(doc, offset, count))
                need -= count
            i, offset = i + 1, 0
        last = pieces[-1]
        # The row's last token is the next row's first: keep only the document holding it.
        self._pending = deque([last.document])
        self.offset = last.start + last.count - 1
        tokens = np.concatenate([p.document.read(p.start, p.count) for p in pieces])
        counts = np.fromiter((p.count for p in pieces), dtype=np.int64, count=len(pieces))
        segments = np.repeat(np.arange(len(pieces), dtype=np.int64), counts)
        return tokens, segments, pieces


@dataclass
class PackedArrays:
    """A packed batch as numpy arrays (see the module docstring for what each holds)."""

    input_ids: np.ndarray  # (B, T) int64
    labels: np.ndarray  # (B, T) int64, IGNORE_INDEX across documents
    position_ids: np.ndarray  # (B, T) int64
    cu_seqlens: np.ndarray  # (S + 1,) int32 over the flattened B*T tokens
    max_seqlen: int


def pack_rows(tokens: np.ndarray, segments: np.ndarray) -> PackedArrays:
    """Builds inputs, labels, position ids and cu_seqlens from ``tokens`` (B, T+1) and the
    per-token document ids ``segments`` (B, T+1; any ids, equal within a row means same
    document). Row boundaries are always segment boundaries."""
    if tokens.ndim != 2 or tokens.shape != segments.shape or tokens.shape[1] < 2:
        raise ValueError(f"pack_rows: tokens {tokens.shape} and segments {segments.shape} must "
                         "both be (B, T+1) with T >= 1")
    B, T = tokens.shape[0], tokens.shape[1] - 1
    tokens = tokens.astype(np.int64, copy=False)
    input_ids = tokens[:, :-1]
    labels = np.where(segments[:, 1:] == segments[:, :-1], tokens[:, 1:], IGNORE_INDEX)
    seg_in = segments[:, :-1]  # (B, T)
    starts_mask = np.ones((B, T), dtype=bool)
    starts_mask[:, 1:] = seg_in[:, 1:] != seg_in[:, :-1]
    starts = np.flatnonzero(starts_mask.reshape(-1))  # segment starts in the flattened batch
    cu_seqlens = np.append(starts, B * T)
    seqlens = np.diff(cu_seqlens)
    position_ids = (np.arange(B * T, dtype=np.int64) - np.repeat(starts, seqlens)).reshape(B, T)
    return PackedArrays(input_ids=np.ascontiguousarray(input_ids), labels=labels,
                        position_ids=position_ids, cu_seqlens=cu_seqlens.astype(np.int32),
                        max_seqlen=int(seqlens.max()))
