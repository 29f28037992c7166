"""SFT runs: full fine-tuning and LoRA lower the response loss; mixtures follow their weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stage_models import tiny_model

from stages.examples import SFTExamples, read_sft
from stages.lora import LoRAConfig, lora_layers
from stages.loop import LoopConfig
from stages.sft import SFTConfig, mixture_batches, response_loss, train_sft


def test_full_fine_tuning_lowers_the_held_out_response_loss(sft_dir, chat_info):
    gsm8k = read_sft(sft_dir)
    train, held_out = gsm8k.subset(range(40)), gsm8k.subset(range(40, 48))
    model = tiny_model(vocab_size=chat_info.vocab_size)
    before = response_loss(model, held_out)
    history = train_sft(model, train, SFTConfig(
        batch_size=4, seq_len=512, loop=LoopConfig(steps=20, lr=1e-2, log_every=0)),
        eval_examples=held_out)
    after = response_loss(model, held_out)
    assert len(history) == 20 and after < before - 1.0
    assert [r["step"] for r in history if "eval/response_loss" in r] == [20]
    assert history[-1]["eval/response_loss"] == pytest.approx(after, rel=1e-6)
    assert history[0]["loss"] == pytest.approx(before, rel=0.05)   # loss is per trained token
    assert 0 <= history[0]["accuracy"] < history[-1]["accuracy"] <= 1


def copy_task(n: int = 8) -> SFTExamples:
    """Prompts of 5 tokens whose reply is a function of them, then an end token (7)."""
    rng = np.random.default_rng(0)
    ids, masks = [], []
    for _ in range(n):
        prompt = rng.integers(8, 64, 5)
        x = np.concatenate([[0], prompt, prompt[::-1] % 8 + 1, [7]])
        ids.append(x)
        masks.append((np.arange(len(x)) >= 6).astype(np.uint8))
    return SFTExamples(ids, masks, end_id=7)


def test_lora_trains_only_the_adapters():
    model = tiny_model()
    examples = copy_task()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    before = response_loss(model, examples)
    train_sft(model, examples, SFTConfig(
        batch_size=8, lora=LoRAConfig(r=4, alpha=8, targets=("wq", "wv", "up", "down")),
        loop=LoopConfig(steps=30, lr=3e-2, log_every=0)))
    after = response_loss(model, examples)
    assert after < before - 0.3
    state = model.state_dict()
    for name, tensor in frozen.items():
        for target in (".wq.", ".wv.", ".up.", ".down."):
            name = name.replace(target, f"{target}base.")
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)
    assert all(float(layer.lora_B.detach().abs().sum()) > 0
               for layer in lora_layers(model).values())


def test_mixture_draws_tasks_by_weight():
    a = SFTExamples([np.array([1, 2, 3])] * 4, [np.array([0, 1, 1])] * 4)
    b = SFTExamples([np.array([4, 5])] * 4, [np.array([0, 1])] * 4)
    config = SFTConfig(batch_size=10, seq_len=30)
    batches = mixture_batches({"a": a, "b": b}, {"a": 3.0, "b": 1.0}, config)
    firsts = [int(t) for batch, _ in zip(batches, range(40))
              for t, p in zip(batch.input_ids.flatten(), batch.position_ids.flatten())
              if int(p) == 0 and int(t) in (1, 4)]
    share = firsts.count(1) / len(firsts)
    assert len(firsts) == 400 and 0.70 < share < 0.80
    only_a = next(mixture_batches({"a": a, "b": b}, {"a": 1.0, "b": 0.0}, config))
    assert 4 not in only_a.input_ids.tolist()[0]
    with pytest.raises(ValueError, match="one weight per task"):
        next(mixture_batches({"a": a, "b": b}, {"a": 1.0}, config))
