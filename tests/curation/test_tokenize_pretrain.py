"""``crucible tokenize`` for pre-training: counts, content, groups, resume and atomicity."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import PROSE, write_shard

from crucible.cli import main
from curation.tokens import pretrain
from curation.tokens.indexed import IndexedDataset
from curation.tokens.layout import read_token_manifest
from curation.tokens.pretrain import Source, TokenizeConfig, run_tokenize
from curation.tokens.tokenizer import DEFAULT_SPECIAL_TOKENS, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    texts = pq.read_table("data/sample/raw/shard-0000.parquet").column("text").to_pylist()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(texts, 1024).save(str(path))
    return path


@pytest.fixture
def curated(tmp_path):
    """A curation-shaped output: two shards with a bucket column, plus rejected/ and _work/."""
    root = tmp_path / "curated"
    for i in range(2):
        write_shard(root / f"part-{i}.parquet",
                    [f"{PROSE} Shard {i}.", "", None, f"Short note {i}.", PROSE[: 40 + i]],
                    ids=[f"{i}-{j}" for j in range(5)],
                    ppl_bucket=["head", "tail", "tail", "middle", "head"])
    write_shard(root / "rejected" / "x.parquet", ["rejected text"])
    write_shard(root / "_work" / "seg0" / "y.parquet", ["work file"])
    return root


def config(src, out, tok, **kw):
    return TokenizeConfig(sources=[Source("web", str(src))], output=str(out),
                          tokenizer=str(tok), workers=1, **kw)


def test_documents_are_the_tokenizer_ids_plus_document_end(curated, tmp_path, tokenizer_file):
    summary = run_tokenize(config(curated, tmp_path / "out", tokenizer_file),
                           show_progress=False)
    info = load_tokenizer(tokenizer_file)
    assert info.eos_id == DEFAULT_SPECIAL_TOKENS.index("<|endoftext|>") == 0
    # rows in = documents written + empty rows (null or ""), per shard and in total
    assert summary.rows == 10 and summary.documents == 6
    manifest = read_token_manifest(tmp_path / "out")
    assert manifest.raw["complete"] and manifest.dtype == "uint16"
    assert manifest.tokenizer_sha256 == hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
    for shard in manifest.raw["shards"].values():
        assert shard["rows"] == shard["empty"] + sum(g["documents"]
                                                     for g in shard["groups"].values())
    assert list(manifest.groups) == ["web"]
    texts = [t for i in range(2)
             for t in pq.read_table(curated / f"part-{i}.parquet").column("text").to_pylist()
             if t]
    docs = [ds[j].tolist() for p in manifest.prefixes("web")
            for ds in [IndexedDataset(p)] for j in range(len(ds))]
    assert docs == [info.encode(t) + [info.eos_id] for t in texts]
    assert summary.tokens == sum(len(d) for d in docs) == manifest.groups["web"].tokens


def test_group_by_column_writes_one_dataset_per_value(curated, tmp_path, tokenizer_file):
    run_tokenize(config(curated, tmp_path / "out", tokenizer_file, group_by="ppl_bucket"),
                 show_progress=False)
    manifest = read_token_manifest(tmp_path / "out")
    assert {g: v.documents for g, v in manifest.groups.items()} == \
        {"head": 4, "middle": 2}  # the two "tail" rows are empty
    assert sorted(p.name for p in (tmp_path / "out" / "head").iterdir()) == [
        "web-part-0.bin", "web-part-0.idx", "web-part-1.bin", "web-part-1.idx"]


def test_resume_redoes_only_unfinished_shards_and_gives_the_same_bytes(
        curated, tmp_path, tokenizer_file, monkeypatch):
    run_tokenize(config(curated, tmp_path / "clean", tokenizer_file), show_progress=False)
    real = pretrain.tokenize_shard
    calls = []

    def dies_on_second(*args):
        calls.append(args[0])
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(pretrain, "tokenize_shard", dies_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        run_tokenize(config(curated, tmp_path / "out", tokenizer_file), show_progress=False)
    data = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not data["complete"] and list(data["shards"]) == ["web-part-0"]
    assert not list((tmp_path / "out" / "web").glob("web-part-1*"))  # nothing half-written
    with pytest.raises(ValueError, match="has not finished"):
        read_token_manifest(tmp_path / "out")
    monkeypatch.setattr(pretrain, "tokenize_shard", real)
    summary = run_tokenize(config(curated, tmp_path / "out", tokenizer_file),
                           show_progress=False)
    assert (summary.shards_done, summary.shards_skipped) == (1, 1)
    for name in ("web-part-0.bin", "web-part-0.idx", "web-part-1.bin", "web-part-1.idx"):
        assert (tmp_path / "out" / "web" / name).read_bytes() == \
            (tmp_path / "clean" / "web" / name).read_bytes()


def test_parallel_workers_and_cli(curated, tmp_path, tokenizer_file, capsys):
    assert main(["tokenize", "--input", f"books={curated}", "--tokenizer",
                 str(tokenizer_file.parent), "--output", str(tmp_path / "out"),
                 "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "10 rows, 6 documents" in out and "group books: 6 documents" in out
    single = tmp_path / "single"
    run_tokenize(TokenizeConfig(sources=[Source("books", str(curated))], output=str(single),
                                tokenizer=str(tokenizer_file), workers=1), show_progress=False)
    for p in sorted((single / "books").iterdir()):
        assert p.read_bytes() == (tmp_path / "out" / "books" / p.name).read_bytes()


def test_bad_inputs_have_clear_errors(curated, tmp_path, tokenizer_file, capsys):
    out = tmp_path / "out"
    run_tokenize(config(curated, out, tokenizer_file), show_progress=False)
    with pytest.raises(ValueError, match="different job"):
        run_tokenize(config(curated, out, tokenizer_file, group_by="ppl_bucket"),
                     show_progress=False)
    with pytest.raises(ValueError, match="column 'body' is missing"):
        run_tokenize(config(curated, tmp_path / "o2", tokenizer_file, text_column="body"),
                     show_progress=False)
    assert main(["tokenize", "--input", str(tmp_path / "nowhere"), "--tokenizer",
                 str(tokenizer_file), "--output", str(tmp_path / "o3")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="source names must be unique"):
        TokenizeConfig(sources=[Source("a", "x"), Source("a", "y")], output="o", tokenizer="t")
    assert np.dtype(read_token_manifest(out).dtype) == np.uint16


def test_a_curation_output_folder_contributes_exactly_its_curated_shards(raw_dir, tmp_path,
                                                                           tokenizer_file):
    from curation.config import load_config
    from curation.job import run_job

    out = tmp_path / "curated"
    job = load_config(None, inputs=[str(raw_dir)], output=str(out), workers=1)
    job.pipeline = [{"step": "normalize"}, {"step": "exact_dedup"}]
    kept = run_job(job, show_progress=False).rows_kept
    assert list((out / "rejected").rglob("*.parquet"))  # there is something to skip
    summary = run_tokenize(config(out, tmp_path / "tokens", tokenizer_file), show_progress=False)
    assert summary.rows == kept
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["status"] = "running"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="has not finished"):
        run_tokenize(config(out, tmp_path / "t2", tokenizer_file), show_progress=False)


def test_an_existing_tokenizer_with_other_special_tokens_is_accepted(curated, tmp_path):
    texts = pq.read_table("data/sample/raw/shard-0002.parquet").column("text").to_pylist()
    path = tmp_path / "foreign" / "tokenizer.json"
    path.parent.mkdir()
    train_tokenizer([t for t in texts if t], 700, special_tokens=["<s>", "</s>", "<unk>"]
                    ).save(str(path))
    info = load_tokenizer(path)
    assert info.eos_id == info.tokenizer.token_to_id("</s>") == 1
    run_tokenize(config(curated, tmp_path / "out", path), show_progress=False)
    manifest = read_token_manifest(tmp_path / "out")
    assert manifest.eos_id == 1 and manifest.vocab_size == 700
    first = IndexedDataset(manifest.prefixes("web")[0])[0].tolist()
    assert first[-1] == 1 and 1 not in first[:-1]
    with pytest.raises(ValueError, match="no document-end token"):
        load_tokenizer(path, eos_token="<|endoftext|>")
