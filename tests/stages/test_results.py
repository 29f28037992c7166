"""Results on the bundled data, not only invariants: a reward model trained on the HH-RLHF
pairs ranks held-out pairs better than chance by a margin the test asserts."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_reward_model_beats_chance_on_300_held_out_hh_rlhf_pairs(tmp_path):
    from curation.tokens.examples import write_examples
    from curation.tokens.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
    from engine.model import Transformer, preset
    from engine.model.hf import export_hf
    from stages.commands import run_reward

    texts = pq.read_table(ROOT / "data" / "sample" / "raw", columns=["text"]).column(
        "text").to_pylist()
    save_tokenizer(train_tokenizer([t for t in texts if t], 8192), tmp_path / "tok")
    info = load_tokenizer(tmp_path / "tok")
    write_examples("preference",
                   [ROOT / "data" / "sample" / "chat" / "hh-rlhf-harmless-base-test.jsonl.gz"],
                   info, tmp_path / "pref", max_length=512, show_progress=False)
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=8192, dim=128, n_layers=4, n_heads=4,
                               n_kv_heads=2, max_seq_len=512))
    export_hf(model, tmp_path / "base")
    summary = run_reward(tmp_path / "base", tmp_path / "pref", tmp_path / "rm",
                         ROOT / "configs" / "stages" / "demo_reward.yaml",
                         {"data": {"eval_count": 300, "max_examples": 1800},
                          "loop": {"steps": 80, "lr": 5e-4, "warmup_steps": 5,
                                   "log_every": 20, "eval_every": 80}})
    assert summary["heldout"] == 300 and summary["pairs"] >= 1000
    # chance is 0.5 with a binomial std of 0.029 on 300 pairs: 0.56 is two std above it
    assert summary["after"]["accuracy"] >= 0.56, summary
    assert summary["after"]["accuracy"] > summary["before"]["accuracy"]
