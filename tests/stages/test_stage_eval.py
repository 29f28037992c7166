"""Evaluations: perplexity on token shards, preference accuracy, GSM8K exact match."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stage_models import tiny_model

from stages.dpo import reference_logps
from stages.eval import (exact_match, extract_answer, implicit_reward_accuracy, perplexity,
                         preference_accuracy)
from stages.examples import PreferencePairs
from stages.reward import RewardModel


@pytest.mark.parametrize("text, answer", [
    ("Janet sells 9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("so the total is $1,234.50.", "1234.5"),
    ("It drops by 7, to -3.", "-3"),
    ("#### 5.0", "5"),
    ("First 12, then 30 apples.\n#### 42 apples", "42"),
    ("The answer is 3 and then 4", "4"),
    ("####", None),
    ("no numbers here", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_exact_match_scores_and_refuses_bad_references():
    refs = ["... #### 18", "#### 3", "#### 1,000"]
    assert exact_match(["So 18.", "#### 4", "it is 1000"], refs) == pytest.approx(2 / 3)
    assert exact_match(["", "", ""], refs) == 0.0
    with pytest.raises(ValueError, match="holds no number"):
        exact_match(["1"], ["none"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["1", "2"], ["#### 1"])


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(heldout_tokens, chat_info):
    vocab = chat_info.vocab_size
    model = tiny_model(vocab_size=vocab)
    with torch.no_grad():
        model.output.weight.zero_()          # logits 0: every token has probability 1 / V
    result = perplexity(model, heldout_tokens, seq_len=64, batch_size=2, max_batches=3)
    assert result["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-5)
    # 3 batches of 2 x 64 targets, less the -100 where a target starts another document
    assert 0.9 * 3 * 2 * 64 < result["tokens"] <= 3 * 2 * 64
    trained = perplexity(tiny_model(vocab_size=vocab), heldout_tokens, seq_len=64, batch_size=2,
                         max_batches=3)
    assert trained["tokens"] == result["tokens"]


def random_pairs(n: int, seed: int = 0) -> PreferencePairs:
    rng = np.random.default_rng(seed)
    return PreferencePairs([rng.integers(0, 64, 4) for _ in range(n)],
                           [rng.integers(0, 64, 3) for _ in range(n)],
                           [rng.integers(0, 64, 5) for _ in range(n)])


def test_preference_accuracy_flips_with_the_pairs():
    reward = RewardModel.from_policy(tiny_model())
    pairs = random_pairs(9)
    swapped = PreferencePairs(pairs.prompt_ids, pairs.rejected_ids, pairs.chosen_ids)
    a, b = preference_accuracy(reward, pairs, 4), preference_accuracy(reward, swapped, 4)
    assert a["accuracy"] + b["accuracy"] == pytest.approx(1.0)
    assert a["margin"] == pytest.approx(-b["margin"], abs=1e-6)
    assert 0 < a["accuracy"] < 1


def test_implicit_reward_of_the_reference_itself_is_zero():
    model = tiny_model()
    pairs = random_pairs(5)
    reference = reference_logps(model, pairs, "sum")
    result = implicit_reward_accuracy(model, pairs, "sigmoid", 0.1, reference, batch_size=2)
    assert result == {"accuracy": 0.0, "margin": pytest.approx(0.0, abs=1e-6)}
    with pytest.raises(ValueError, match="pass its reference log-probs"):
        implicit_reward_accuracy(model, pairs, "ipo", 0.1)
