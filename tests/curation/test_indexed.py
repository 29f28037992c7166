"""The Megatron indexed dataset writer/reader: layout, dtypes, atomicity, Megatron's own reader."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from curation.tokens.indexed import IndexedDataset, IndexedWriter, token_dtype


def write(prefix, docs, dtype=np.uint16):
    with IndexedWriter(prefix, dtype) as writer:
        writer.add_many(docs[:2])
        for doc in docs[2:]:
            writer.add(doc)
        return writer.finish()


def test_round_trip_and_header_layout(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, size=n) for n in (5, 1, 300, 17, 0, 2)]
    assert write(tmp_path / "d", docs) == (6, 325)
    ds = IndexedDataset(tmp_path / "d")
    assert len(ds) == 6 and ds.num_tokens == 325 and ds.dtype == np.uint16
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(ds[i], doc)
    np.testing.assert_array_equal(ds.get(2, 10, 5), docs[2][10:15])
    np.testing.assert_array_equal(ds[-1], docs[-1])
    raw = (tmp_path / "d.idx").read_bytes()
    magic, version, code, n, n_docs = struct.unpack("<9sQBQQ", raw[:34])
    assert (magic, version, code, n, n_docs) == (b"MMIDIDX\x00\x00", 1, 8, 6, 7)
    assert len(raw) == 34 + 4 * 6 + 8 * 6 + 8 * 7
    pointers = np.frombuffer(raw, "<i8", 6, 34 + 24)
    np.testing.assert_array_equal(pointers, [0, 10, 12, 612, 646, 646])
    assert (tmp_path / "d.bin").stat().st_size == 2 * 325
    with pytest.raises(IndexError, match="out of range"):
        ds[6]


def test_dtype_follows_megatron_choice_by_vocabulary_size(tmp_path):
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65500) == np.int32 and token_dtype(128256) == np.int32
    write(tmp_path / "big", [np.array([0, 70000, 128255])], dtype=token_dtype(128256))
    ds = IndexedDataset(tmp_path / "big")
    assert ds.dtype == np.int32 and ds[0].tolist() == [0, 70000, 128255]
    with pytest.raises(ValueError, match="does not fit uint16"):
        write(tmp_path / "small", [np.array([70000])])


def test_failed_write_leaves_nothing_and_truncation_is_detected(tmp_path):
    with pytest.raises(RuntimeError), IndexedWriter(tmp_path / "x", np.uint16) as writer:
        writer.add([1, 2, 3])
        raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []
    write(tmp_path / "y", [np.arange(10)])
    with open(tmp_path / "y.bin", "r+b") as f:
        f.truncate(8)
    with pytest.raises(ValueError, match="truncated"):
        IndexedDataset(tmp_path / "y")
    with pytest.raises(FileNotFoundError, match="without .bin/.idx"):
        IndexedDataset(tmp_path / "missing")


def test_megatron_core_reads_our_datasets(tmp_path):
    indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 50000, size=n) for n in (7, 1, 1000, 33)]
    write(tmp_path / "m", docs)
    theirs = indexed_dataset.IndexedDataset(str(tmp_path / "m"))
    assert len(theirs) == 4
    np.testing.assert_array_equal(theirs.sequence_lengths, [7, 1, 1000, 33])
    np.testing.assert_array_equal(theirs.document_indices, [0, 1, 2, 3, 4])
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(theirs[i], doc)
    np.testing.assert_array_equal(theirs.get(2, offset=100, length=10), docs[2][100:110])
