"""Reading and writing shards: discovery, column mapping, generated ids, parts, atomicity."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_shard

from curation.io.reader import ColumnMap, ShardError, discover_inputs, read_batches
from curation.io.writer import PartWriter, remove_parts


def test_discover_files_folders_and_globs(tmp_path):
    a = write_shard(tmp_path / "a.parquet", ["x"])
    b = write_shard(tmp_path / "sub" / "deeper" / "b.parquet", ["y"])
    (tmp_path / "notes.txt").write_text("not parquet")
    assert discover_inputs([str(tmp_path)]) == sorted([a.resolve(), b.resolve()])
    assert discover_inputs([str(tmp_path / "*.parquet"), str(a)]) == [a.resolve()]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_inputs([str(tmp_path / "missing")])
    with pytest.raises(FileNotFoundError, match="matched no Parquet files"):
        discover_inputs([str(tmp_path / "*.json")])


def test_column_mapping_generated_ids_and_pass_through(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"body": ["one", "two", "three"], "url": ["u1", "u2", "u3"]}), path)
    batches = list(read_batches(path, ColumnMap(text="body", id="doc_id"), 2, "s"))
    assert [b.num_rows for b in batches] == [2, 1]
    table = pa.Table.from_batches(batches)
    assert table.column_names == ["id", "text", "url"]
    assert table.column("id").to_pylist() == ["s:0", "s:1", "s:2"]
    assert table.column("text").to_pylist() == ["one", "two", "three"]


def test_large_string_and_integer_ids_are_cast(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"id": [7, 8], "text": pa.array(["a", "b"], pa.large_string())}),
                   path)
    table = pa.Table.from_batches(list(read_batches(path, ColumnMap(), 10, "s")))
    assert table.schema.field("id").type == pa.string()
    assert table.column("id").to_pylist() == ["7", "8"]


def test_unreadable_shards_raise_shard_errors(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 nope")
    with pytest.raises(ShardError, match="bad.parquet: not a readable Parquet file"):
        list(read_batches(bad, ColumnMap(), 10, "bad"))


def test_parts_split_by_size_and_are_atomic(tmp_path):
    writer = PartWriter(tmp_path, "shard", max_part_bytes=1000, row_group_rows=100)
    batch = pa.RecordBatch.from_pydict({"id": [str(i) for i in range(50)],
                                        "text": ["x" * 40] * 50})
    for _ in range(3):
        writer.write(batch)
    # Full parts are renamed into place; the open one is only a temp file until close().
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == ["shard-00000.parquet",
                                                                  "shard-00001.parquet"]
    assert [p.name for p in tmp_path.glob("*.tmp")] == ["shard-00002.parquet.tmp"]
    parts = writer.close()
    assert [p.name for p in parts] == ["shard-00000.parquet", "shard-00001.parquet",
                                       "shard-00002.parquet"]
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 150
    assert not list(tmp_path.glob("*.tmp"))


def test_remove_parts_touches_only_its_shard(tmp_path):
    for name in ("a-00000.parquet", "a-00001.parquet.tmp", "a-b-00000.parquet", "ab-00000.parquet"):
        (tmp_path / name).write_text("x")
    remove_parts(tmp_path, "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-b-00000.parquet", "ab-00000.parquet"]


def test_nothing_written_for_an_empty_shard(tmp_path):
    writer = PartWriter(tmp_path, "empty")
    writer.write(pa.RecordBatch.from_pydict({"id": [], "text": []}))
    assert writer.close() == [] and not list(Path(tmp_path).iterdir())
