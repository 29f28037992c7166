"""Evaluations of the stages' models: perplexity on held-out token shards, preference accuracy
of a reward model or of DPO's implicit reward, and GSM8K-style exact match.

    perplexity(model, "out/tokens-val", seq_len=512)   # {"loss", "perplexity", "tokens"}
    preference_accuracy(reward, pairs)                 # {"accuracy", "margin"}
    exact_match(["... #### 1,234"], ["#### 1234"])     # 1.0

On CUDA the fused attention takes bf16/fp16 only: call these inside
``stages.loop.autocast(model, "bfloat16")`` (or build the model with ``attention="sdpa"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from stages.dpo import implicit_reward_accuracy
from stages.reward import preference_accuracy

__all__ = ["exact_match", "extract_answer", "implicit_reward_accuracy", "perplexity",
           "preference_accuracy"]

IGNORE = -100
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


@torch.no_grad()
def perplexity(model: torch.nn.Module, tokens: str | Path, seq_len: int, batch_size: int = 8,
               max_batches: int | None = None) -> dict[str, float]:
    """Mean next-token loss and its exponential over held-out token shards (a ``crucible
    tokenize`` directory), read as packed rows by the engine's loader; ``max_batches`` caps the
    batches read."""
    from engine.data import PackedLoader

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with PackedLoader(tokens, seq_len, batch_size, prefetch=0, rank=0, world_size=1) as loader:
        for i, batch in enumerate(loader):
            if max_batches is not None and i == max_batches:
                break
            batch = batch.to(device)
            logits = model(batch.input_ids, batch.position_ids, batch.cu_seqlens,
                           batch.max_seqlen)
            total += float(F.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten(),
                                           ignore_index=IGNORE, reduction="sum"))
            count += int((batch.labels != IGNORE).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError(f"{tokens}: no token to evaluate at seq_len {seq_len} and batch_size "
                         f"{batch_size}; give more held-out data or a smaller batch")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


def _normalize_number(text: str) -> str | None:
    """``"$1,234.50"`` → ``"1234.5"``; ``"-3."`` → ``"-3"``; None when it is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if math.isnan(value) or math.isinf(value):
        return None
    return str(int(value)) if value == int(value) else repr(value)


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a GSM8K-style solution: the number after the last ``####``
    when there is one, else the last number in the text; normalised (no commas, no ``$``, no
    trailing ``.0``). None when the text holds no number."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        found = _NUMBER.search(tail)
        if found:
            return _normalize_number(found.group())
    numbers = _NUMBER.findall(text)
    return _normalize_number(numbers[-1]) if numbers else None


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions whose :func:`extract_answer` equals the reference's (a
    prediction with no number never matches)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("exact_match: no example to score")
    hits = 0
    for pred, ref in zip(predictions, references):
        gold = extract_answer(ref)
        if gold is None:
            raise ValueError(f"reference {ref[-60:]!r} holds no number; is it a GSM8K answer?")
        hits += extract_answer(pred) == gold
    return hits / len(references)


@torch.no_grad()
def reward_win_rate(policy: torch.nn.Module, reference: torch.nn.Module, reward_fn,
                    prompts: list[list[int]], *, max_new_tokens: int, pad_id: int,
                    eos_id: int | None, batch_size: int = 16) -> dict[str, float]:
    """How often the reward model scores the policy's greedy response above the reference
    model's for the same prompt (ties count half). ``reward_fn(ids, lengths)`` scores
    right-padded prompt + response rows, as :class:`stages.reward.RewardModel` does."""
    from engine.model.generate import generate
    from stages.ppo import right_padded

    if not prompts:
        raise ValueError("win rate: no prompts")
    scores = {"policy": [], "reference": []}
    for name, model in (("policy", policy), ("reference", reference)):
        was = model.training
        model.eval()
        for start in range(0, len(prompts), batch_size):
            gen = generate(model, prompts[start:start + batch_size],
                           max_new_tokens=max_new_tokens, pad_id=pad_id, eos_id=eos_id,
                           temperature=0)
            ids, lengths = right_padded(gen, pad_id)
            scores[name].append(reward_fn(ids, lengths).float().cpu())
        model.train(was)
    ours, theirs = torch.cat(scores["policy"]), torch.cat(scores["reference"])
    wins = (ours > theirs).float() + 0.5 * (ours == theirs).float()
    return {"win_rate": float(wins.mean()), "policy_reward": float(ours.mean()),
            "reference_reward": float(theirs.mean()), "prompts": len(prompts)}
