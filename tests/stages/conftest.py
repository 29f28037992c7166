"""Stage test fixtures: a chat tokenizer trained on the bundled sample, and SFT
and preference examples tokenized from the bundled GSM8K and HH-RLHF samples."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAT = ROOT / "data" / "sample" / "chat"
VOCAB = 1024


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """One intra-op thread: the stage tests run tiny ops, where OpenMP threads contending for
    busy cores cost ~100x more than they save; the previous count is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _jsonl_head(src: Path, dst: Path, rows: int, max_chars: int | None = None) -> Path:
    opener = gzip.open if src.suffix == ".gz" else open
    kept = []
    with opener(src, "rt", encoding="utf-8") as f:
        for line in f:
            if max_chars is None or len(line) <= max_chars:
                kept.append(json.loads(line))
            if len(kept) == rows:
                break
    dst.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return dst


@pytest.fixture(scope="session")
def chat_info(tmp_path_factory):
    """A byte-level BPE of 1,024 ids with the chat tokens, trained on 400 sample documents."""
    from curation.tokens.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    texts = pq.read_table(ROOT / "data" / "sample" / "raw" / "shard-0000.parquet",
                          columns=["text"]).column("text").to_pylist()[:400]
    out = tmp_path_factory.mktemp("stage-tokenizer")
    save_tokenizer(train_tokenizer([t for t in texts if t], VOCAB), out)
    return load_tokenizer(out)


@pytest.fixture(scope="session")
def sft_dir(chat_info, tmp_path_factory) -> Path:
    """The first 48 GSM8K rows tokenized by ``write_examples("sft", ...)``."""
    from curation.tokens.examples import write_examples

    tmp = tmp_path_factory.mktemp("sft")
    src = _jsonl_head(CHAT / "gsm8k.jsonl", tmp / "gsm8k.jsonl", 48)
    write_examples("sft", [src], chat_info, tmp / "out", show_progress=False)
    return tmp / "out"


@pytest.fixture(scope="session")
def pref_dir(chat_info, tmp_path_factory) -> Path:
    """The first 24 short HH-RLHF pairs tokenized by ``write_examples("preference", ...)``."""
    from curation.tokens.examples import write_examples

    tmp = tmp_path_factory.mktemp("pref")
    src = _jsonl_head(CHAT / "hh-rlhf-harmless-base-test.jsonl.gz", tmp / "hh.jsonl", 24,
                      max_chars=700)
    write_examples("preference", [src], chat_info, tmp / "out", show_progress=False)
    return tmp / "out"


@pytest.fixture(scope="session")
def heldout_tokens(chat_info, tmp_path_factory) -> Path:
    """Token shards (``crucible tokenize``) of 40 documents of the second sample shard."""
    from curation.tokens.pretrain import Source, TokenizeConfig, run_tokenize

    tmp = tmp_path_factory.mktemp("heldout")
    table = pq.read_table(ROOT / "data" / "sample" / "raw" / "shard-0001.parquet",
                          columns=["id", "text"]).slice(0, 40)
    (tmp / "raw").mkdir()
    pq.write_table(table, tmp / "raw" / "part.parquet")
    run_tokenize(TokenizeConfig(sources=[Source("web", str(tmp / "raw"))],
                                output=str(tmp / "tokens"), tokenizer=str(chat_info.path),
                                workers=1), show_progress=False)
    return tmp / "tokens"
