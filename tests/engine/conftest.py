"""Engine test fixtures: real token shards of the bundled sample with a small vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make_token_shards(out: Path, vocab_size: int = 512, shards=("shard-0000",)) -> Path:
    """Trains a byte-level BPE of ``vocab_size`` on sample shards and tokenizes them."""
    import pyarrow.parquet as pq

    from curation.tokens.pretrain import Source, TokenizeConfig, run_tokenize
    from curation.tokens.tokenizer import train_tokenizer

    raw = out / "raw"
    raw.mkdir(parents=True)
    texts = []
    for name in shards:
        table = pq.read_table(ROOT / "data" / "sample" / "raw" / f"{name}.parquet",
                              columns=["id", "text"])
        pq.write_table(table, raw / f"{name}.parquet")
        texts += table.column("text").to_pylist()
    tok = out / "tokenizer.json"
    train_tokenizer([t for t in texts if t], vocab_size).save(str(tok))
    run_tokenize(TokenizeConfig(sources=[Source("web", str(raw))], output=str(out / "tokens"),
                                tokenizer=str(tok), workers=1), show_progress=False)
    return out / "tokens"


@pytest.fixture(scope="session")
def sample_tokens(tmp_path_factory) -> Path:
    """Token shards (vocab 512) of the first sample shard: ~500 documents."""
    return make_token_shards(tmp_path_factory.mktemp("sample-tokens"))
