"""Helpers for curation tests: tiny raw shards and job configs in a temp directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # plugin_steps.py is importable by workers (spawn copies sys.path)
    sys.path.insert(0, str(HERE))


def write_shard(path: Path, texts: list, ids: list | None = None, **extra) -> Path:
    """Writes a raw shard with ``id``/``text`` (and extra columns) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"text": pa.array(texts, pa.string())}
    if ids is not None:
        columns = {"id": pa.array(ids, pa.string()), **columns}
    columns.update({k: pa.array(v) for k, v in extra.items()})
    pq.write_table(pa.table(columns), path)
    return path


PROSE = ("The committee met on Tuesday to review the budget for the coming year. Members "
         "agreed that the library needs new shelves, and that the roof should be repaired "
         "before winter. The treasurer will report again next month.")


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """Three shards with duplicates across shards, empty rows and unique prose."""
    raw = tmp_path / "raw"
    for i in range(3):
        write_shard(raw / f"part-{i}.parquet",
                    [PROSE, PROSE.upper(), f"{PROSE} Shard {i} only.", "", f"Note {i}:  hi"],
                    ids=[f"p{i}-{j}" for j in range(5)],
                    source=[f"s{i}"] * 5)
    return raw


REPO = HERE.parents[1]


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory):
    """A small byte-level BPE (2,048 ids, with the chat tokens) trained on real text: part of
    the bundled sample corpus. Saved with ``save_tokenizer`` (so ``transformers`` loads the
    directory, chat template included); returns the loaded ``TokenizerInfo``."""
    from curation.tokens.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    shard = REPO / "data" / "sample" / "raw" / "shard-0000.parquet"
    texts = pq.read_table(shard, columns=["text"]).column("text").to_pylist()[:400]
    out = tmp_path_factory.mktemp("chat_tokenizer")
    save_tokenizer(train_tokenizer(texts, 2048), out)
    return load_tokenizer(out)
