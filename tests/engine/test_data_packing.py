"""Packing: a hand-checked batch, then rows cut from random documents checked token by token
against the concatenated stream (coverage, one-token overlap, labels, positions, cu_seqlens)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.packing import IGNORE_INDEX, Document, RowPacker, pack_rows
from token_shards import document


def source_of(docs: list[np.ndarray], reads: list[int] | None = None):
    """A packer source over ``docs``, recording the size of every read in ``reads``."""
    it = iter(range(len(docs)))

    def read(i, offset, n):
        if reads is not None:
            reads.append(n)
        return docs[i][offset:offset + n]

    def source():
        i = next(it, None)
        return None if i is None else Document(len(docs[i]), lambda o, n, i=i: read(i, o, n), i)

    return source


def test_pack_rows_by_hand():
    # Row 0: doc A (3 tokens, last is EOS 0) then doc B; row 1: B continues, then C starts on
    # the last (target-only) token.
    tokens = np.array([[11, 12, 0, 21, 22, 23, 24],
                       [24, 25, 0, 31, 32, 0, 41]])
    segments = np.array([[0, 0, 0, 1, 1, 1, 1],
                         [0, 0, 0, 1, 1, 1, 2]])
    p = pack_rows(tokens, segments)
    x = IGNORE_INDEX
    assert p.input_ids.tolist() == [[11, 12, 0, 21, 22, 23], [24, 25, 0, 31, 32, 0]]
    assert p.labels.tolist() == [[12, 0, x, 22, 23, 24], [25, 0, x, 32, 0, x]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2]]
    assert p.cu_seqlens.tolist() == [0, 3, 6, 9, 12] and p.cu_seqlens.dtype == np.int32
    assert p.max_seqlen == 3
    with pytest.raises(ValueError, match="must both be"):
        pack_rows(tokens[:, :1], segments[:, :1])


@pytest.mark.parametrize("seq_len", [1, 7, 64, 1000])
def test_rows_cover_the_stream_once(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = [document(uid, int(n)) for uid, n in enumerate(rng.integers(1, 150, 60), start=1)]
    stream = np.concatenate(docs)
    doc_of = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    doc_start = np.concatenate([[0], np.cumsum([len(d) for d in docs])[:-1]])
    packer = RowPacker(seq_len, source_of(docs))
    rows = []
    while (row := packer.next_row()) is not None:
        rows.append(row)
    T = seq_len
    assert len(rows) == (len(stream) - 1) // T  # the partial last row is dropped
    for k, (tokens, segments, pieces) in enumerate(rows):
        assert np.array_equal(tokens, stream[k * T:k * T + T + 1])  # overlap of one token
        assert np.array_equal(doc_of[k * T:k * T + T + 1], [pieces[s].document.tag
                                                             for s in segments])
        p = pack_rows(tokens[None], segments[None])
        pos = np.arange(k * T, k * T + T)  # stream positions of the row's inputs
        starts_doc = doc_start[doc_of[pos + 1]] == pos + 1
        assert np.array_equal(p.labels[0] == IGNORE_INDEX, starts_doc)
        assert np.array_equal(p.labels[0][~starts_doc], stream[pos + 1][~starts_doc])
        assert np.array_equal(p.position_ids[0], pos - np.maximum(doc_start[doc_of[pos]], k * T))
        assert np.array_equal(p.cu_seqlens, np.flatnonzero(
            np.append(p.position_ids[0] == 0, True)))
    inputs = np.concatenate([r[0][:-1] for r in rows])
    assert np.array_equal(inputs, stream[:len(rows) * T])  # every input token exactly once


def test_long_document_is_read_in_slices():
    docs = [document(1, 10_000), document(2, 5)]
    reads: list[int] = []
    packer = RowPacker(16, source_of(docs, reads))
    for _ in range(3):
        packer.next_row()
    assert reads == [17, 17, 17]  # T + 1 tokens per row, never the whole document
    assert packer.head.tag == 0 and packer.offset == 48


def test_resume_offset_applies_to_the_first_document():
    docs = [document(1, 50), document(2, 30)]
    packer = RowPacker(8, source_of(docs), offset=45)
    tokens, segments, _ = packer.next_row()
    assert np.array_equal(tokens, np.concatenate(docs)[45:54])
    assert segments.tolist() == [0] * 5 + [1] * 4
