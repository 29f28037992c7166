"""Other tools read what we write: Hugging Face `datasets` loads curated shards, `transformers`
loads our tokenizer. (Megatron-Core's reader is tested in test_indexed.py.)"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from curation.config import load_config
from curation.job import run_job
from curation.tokens.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer


def test_datasets_loads_curated_shards(raw_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "curated"
    config = load_config(None, inputs=[str(raw_dir)], output=str(out), workers=1)
    config.pipeline = [{"step": "normalize"}, {"step": "exact_dedup"}]
    summary = run_job(config, show_progress=False)
    ds = datasets.load_dataset("parquet", data_files=str(out / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == summary.rows_kept > 0
    ours = pq.read_table(sorted(out.glob("*.parquet")))
    assert ds.column_names == ours.column_names  # signals (e.g. exact_dup_cluster) included
    assert "exact_dup_cluster" in ds.column_names
    assert sorted(ds["id"]) == sorted(ours.column("id").to_pylist())
    assert sorted(ds["text"]) == sorted(ours.column("text").to_pylist())


def test_transformers_loads_our_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    texts = pq.read_table("data/sample/raw/shard-0001.parquet").column("text").to_pylist()
    path = save_tokenizer(train_tokenizer(texts, 1500), tmp_path / "tok")
    info = load_tokenizer(path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    sample = texts[:20] + ["naïve café — 東京 🙂 <|endoftext|> tail"]
    for text in sample:
        ids = info.encode(text)
        assert fast(text, add_special_tokens=False)["input_ids"] == ids
        assert auto(text, add_special_tokens=False)["input_ids"] == ids
        assert auto.decode(ids) == text
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == info.eos_id
    assert auto.pad_token == "<|pad|>" and auto.bos_token == "<|bos|>"
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert "chat_template" in config
