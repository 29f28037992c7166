"""crucible plan (counts, Chinchilla, memory), DeepSpeed config generation, profile train."""

from __future__ import annotations

import json

import pytest

from crucible.cli import main
from engine.config import load_train_config
from engine.distributed.deepspeed import deepspeed_config
from engine.model import count_params, preset
from engine.plan import chinchilla_loss, memory_plans, plan_text


def test_chinchilla_fit_and_optimal_tokens():
    # Chinchilla itself: 70B parameters on 1.4T tokens, predicted loss ~1.94 by this fit
    assert chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.94, abs=0.01)
    config = load_train_config(None, ["model=gpt2-124m", "data.tokens=x", "steps=10"])
    text = plan_text(config, world=1, device="H100", mfu=0.5, tokens=None)
    n = count_params(preset("gpt2-124m"))
    assert f"{20 * n:,}" in text and "123,587,328" in text


def test_memory_plans_shard_what_each_stage_shards():
    config = load_train_config(None, ["model=gpt2-124m", "data.tokens=x"])
    ddp, z1, z2, z3 = memory_plans(config, world=4)
    n = count_params(preset("gpt2-124m"))
    assert ddp.optimizer == 8 * n and z1.optimizer == 2 * n and z1.grads == 4 * n
    assert z2.grads == n and z3.weights == n and ddp.total > z1.total > z2.total > z3.total
    ckpt = load_train_config(None, ["model=gpt2-124m", "data.tokens=x",
                                    "activation_checkpointing=true"])
    assert memory_plans(ckpt, 4)[0].activations < ddp.activations / 2  # logits stay


def test_wall_time_uses_the_measured_mfu(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": i, "mfu": m, "loss": 1.0})
                                 for i, m in enumerate([0.1, 0.3, 0.2])))
    assert main(["plan", "model=tiny", "data.tokens=x", "--tokens", "1e9", "--device", "A100",
                 "--metrics", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert "at 20.0% MFU" in out and "A100" in out
    assert main(["plan", "model=nope", "data.tokens=x"]) == 2


def test_deepspeed_config_follows_ours():
    config = load_train_config(None, ["data.tokens=x", "data.batch_size=4", "grad_accum=8",
                                      "dtype=bfloat16", "deepspeed_stage=3",
                                      "optim.max_grad_norm=0.5", "parallel=deepspeed"])
    ds = deepspeed_config(config, world_size=16)
    assert ds["train_batch_size"] == 4 * 8 * 16
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 8
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5 and "optimizer" not in ds  # ours is passed in


def test_profile_train_writes_a_trace_and_names_our_kernels(sample_tokens, tmp_path, capsys):
    trace = tmp_path / "trace.json"
    assert main(["profile", "train", f"data.tokens={sample_tokens}", "data.seq_len=32",
                 "data.batch_size=4", f"out_dir={tmp_path / 'run'}", "tensorboard=false",
                 "--steps", "2", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "crucible::" in out and "<- crucible kernel" in out
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("crucible::flash_attention") for e in events)
    assert any(e.get("name") == "optimizer" for e in events)
