"""`crucible sft|reward|dpo|ppo|eval|constitutional` end to end on tiny inputs: each writes its
metrics, summary and model, and the models load back with the numbers the summary reports."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from crucible.cli import main
from engine.model.hf import export_hf, import_hf
from stages.commands import DataSelection, preference_data
from stages.model_io import load_policy, load_reward_model
from tests.stages.conftest import CHAT
from tests.stages.stage_models import tiny_model


@pytest.fixture(scope="module")
def base(chat_info, tmp_path_factory):
    """A tiny random model exported in HF layout."""
    return export_hf(tiny_model(vocab_size=chat_info.vocab_size),
                     tmp_path_factory.mktemp("base") / "hf")


@pytest.fixture(scope="module")
def reward_out(base, pref_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward") / "rm"
    assert main(["reward", "--model", str(base), "--examples", str(pref_dir), "--out", str(out),
                 "--steps", "4", "--lr", "3e-3", "--batch-size", "4", "--eval-count", "6"]) == 0
    return out


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_sft_trains_writes_metrics_and_exports(base, sft_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(base), "--examples", str(sft_dir), "--out", str(out),
                 "--steps", "4", "--lr", "1e-2", "--batch-size", "4", "--eval-count", "4"]) == 0
    records = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and "eval/response_loss" in records[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout"] == 4 and summary["examples"] == 44
    assert summary["after"]["response_loss"] < summary["before"]["response_loss"]
    assert "response_loss" in capsys.readouterr().out
    trained, start = import_hf(out / "hf"), import_hf(base)
    assert not torch.equal(trained.embed.weight, start.embed.weight)


def test_sft_lora_writes_a_peft_adapter_and_the_merged_model(base, sft_dir, tmp_path):
    out = tmp_path / "lora"
    assert main(["sft", "--model", str(base), "--examples", str(sft_dir), "--out", str(out),
                 "--steps", "2", "--lr", "1e-2", "--batch-size", "4", "--lora"]) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    merged, start = import_hf(out / "hf"), import_hf(base)
    # only the adapted attention projections moved; the MLP and embeddings are the base's
    assert torch.equal(merged.blocks[0].mlp.up.weight, start.blocks[0].mlp.up.weight)
    assert torch.equal(merged.embed.weight, start.embed.weight)
    assert not torch.equal(merged.blocks[0].attn.wq.weight, start.blocks[0].attn.wq.weight)


@pytest.mark.parametrize("adapter", ["bottleneck: {r: 4}", "prefix: {length: 4}"])
def test_sft_with_bottleneck_or_prefix_writes_the_adapters_and_the_base(adapter, base, sft_dir,
                                                                         tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(adapter + "\n")
    out = tmp_path / "adapted"
    assert main(["sft", "--model", str(base), "--examples", str(sft_dir), "--out", str(out),
                 "--config", str(config), "--steps", "2", "--lr", "1e-2",
                 "--batch-size", "4"]) == 0
    kind = adapter.split(":")[0]
    assert json.loads((out / "adapters" / "adapters.json").read_text())["kind"] == kind
    exported, start = import_hf(out / "hf"), import_hf(base)
    for a, b in zip(exported.state_dict().values(), start.state_dict().values()):
        assert torch.equal(a, b)  # the base is frozen; the adapters are separate


def test_reward_model_round_trips_with_its_reported_accuracy(reward_out, base, pref_dir):
    from stages.reward import preference_accuracy

    summary = json.loads((reward_out / "summary.json").read_text())
    config = json.loads((reward_out / "hf" / "config.json").read_text())
    assert config["num_labels"] == 1 and config["architectures"] == [
        "LlamaForSequenceClassification"]
    assert len(_lines(reward_out / "metrics.jsonl")) == 4
    reward = load_reward_model(reward_out)
    _, held = preference_data(pref_dir, reward.backbone, DataSelection(eval_count=6))
    assert preference_accuracy(reward, held)["accuracy"] == pytest.approx(
        summary["after"]["accuracy"])


def test_dpo_reports_implicit_reward_and_logp_accuracy(base, pref_dir, tmp_path):
    out = tmp_path / "dpo"
    assert main(["dpo", "--model", str(base), "--examples", str(pref_dir), "--out", str(out),
                 "--steps", "3", "--lr", "1e-3", "--batch-size", "4", "--eval-count", "4",
                 "--loss", "ipo", "--beta", "0.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss"] == "ipo" and summary["heldout"] == 4
    assert {"accuracy", "margin", "logp_accuracy"} <= set(summary["after"])
    assert 0 <= summary["before"]["logp_accuracy"] <= 1
    assert "rewards/margins" in _lines(out / "metrics.jsonl")[-1]
    assert (out / "hf" / "model.safetensors").exists()


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_ppo_and_grpo_run_against_the_reward_model(algorithm, base, reward_out, pref_dir,
                                                   tmp_path, capsys):
    out = tmp_path / algorithm
    config = tmp_path / "ppo.yaml"
    config.write_text("rollout_prompts: 2\ngroup_size: 2\nmax_new_tokens: 4\nepochs: 1\n")
    assert main(["ppo", "--model", str(base), "--reward-model", str(reward_out),
                 "--examples", str(pref_dir), "--out", str(out), "--config", str(config),
                 "--algorithm", algorithm, "--updates", "2"]) == 0
    records = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all("reward" in r and "kl" in r for r in records)
    assert json.loads((out / "summary.json").read_text())["stage"] == algorithm
    assert import_hf(out / "hf").config.vocab_size == import_hf(base).config.vocab_size
    assert f"crucible {algorithm}: 2 updates" in capsys.readouterr().out


def test_eval_writes_every_requested_metric(base, heldout_tokens, sft_dir, pref_dir, chat_info,
                                            reward_out, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(base), "--tokens", str(heldout_tokens), "--seq-len",
                 "64", "--max-batches", "2", "--sft", str(sft_dir), "--preference",
                 str(pref_dir), "--reward-model", str(reward_out), "--gsm8k",
                 str(CHAT / "gsm8k.jsonl"), "--gsm8k-count", "2", "--max-new-tokens", "4",
                 "--tokenizer", str(chat_info.path), "--out", str(out)]) == 0
    results = json.loads((out / "eval.json").read_text())
    vocab = chat_info.vocab_size
    # an untrained model is near uniform over the vocabulary
    assert vocab / 3 < results["perplexity"]["perplexity"] < vocab * 3
    assert 2 * 8 * 63 <= results["perplexity"]["tokens"] <= 2 * 8 * 64  # 2 batches of 8x64
    assert results["response_loss"] > 3
    assert 0 <= results["logp_accuracy"] <= 1 and 0 <= results["reward_accuracy"]["accuracy"] <= 1
    assert results["gsm8k"]["problems"] == 2 and results["gsm8k"]["exact_match"] == 0.0


def test_win_rate_against_itself_is_one_half_and_against_another_model_is_measured(
        base, pref_dir, reward_out, chat_info, tmp_path):
    out = tmp_path / "wr"
    args = ["eval", "--model", str(base), "--preference", str(pref_dir), "--reward-model",
            str(reward_out), "--win-rate-prompts", "6", "--max-new-tokens", "6"]
    assert main([*args, "--reference", str(base), "--out", str(out)]) == 0
    same = json.loads((out / "eval.json").read_text())["win_rate"]
    assert same["win_rate"] == 0.5 and same["prompts"] == 6
    assert same["policy_reward"] == pytest.approx(same["reference_reward"])
    other = export_hf(tiny_model(vocab_size=chat_info.vocab_size, seed=7), tmp_path / "other")
    assert main([*args, "--reference", str(other), "--out", str(out)]) == 0
    vs = json.loads((out / "eval.json").read_text())["win_rate"]
    assert vs["reference_reward"] != pytest.approx(vs["policy_reward"])
    assert 0 <= vs["win_rate"] <= 1


def test_constitutional_cli_writes_pairs(base, chat_info, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hello.\nWhat is rain?\n")
    out = tmp_path / "cai"
    assert main(["constitutional", "--model", str(base), "--tokenizer", str(chat_info.path),
                 "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "4",
                 "--temperature", "1.0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prompts"] == 2 and manifest["pairs"] + manifest["rejected"] == 2
    assert pq.read_table(out / "pairs.parquet").num_rows == manifest["pairs"]


def test_policy_loads_from_a_training_checkpoint(heldout_tokens, chat_info, tmp_path):
    from engine.config import load_train_config
    from engine.trainer import Trainer

    config = load_train_config(None, [
        "model=tiny", f"model_overrides={{vocab_size: {chat_info.vocab_size}, dim: 32, "
        "n_layers: 1, n_heads: 2, n_kv_heads: 1}", f"data.tokens={heldout_tokens}",
        "data.seq_len=32", "data.batch_size=2", "steps=2", "checkpoint.every=2",
        f"out_dir={tmp_path}", "tensorboard=false", "log_every=1"])
    trainer = Trainer(config)
    trainer.train()
    loaded = load_policy(tmp_path)
    for (name, a), b in zip(trainer.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_errors_name_the_input_and_the_fix(base, sft_dir, tmp_path, capsys):
    assert main(["sft", "--model", str(tmp_path / "nope"), "--examples", str(sft_dir),
                 "--out", str(tmp_path / "o")]) == 2
    assert "neither an HF export" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop: {stepz: 3}\n")
    assert main(["sft", "--model", str(base), "--examples", str(sft_dir), "--out",
                 str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "unknown key(s) ['stepz']" in capsys.readouterr().err
