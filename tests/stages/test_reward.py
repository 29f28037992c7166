"""The Bradley–Terry reward model: read at the last real token, its loss, its training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stage_models import tiny_model

from stages.examples import PreferencePairs
from stages.loop import LoopConfig
from stages.packing import pad_right
from stages.reward import RewardConfig, RewardModel, RewardObjective, train_reward


def test_reward_is_read_at_the_last_real_token_whatever_the_padding():
    reward = RewardModel.from_policy(tiny_model())
    seqs = [np.array([3, 9, 4, 1, 7]), np.array([5, 2]), np.array([8, 8, 6, 1])]
    with torch.no_grad():
        alone = [float(reward(torch.as_tensor(s)[None], torch.tensor([len(s)]))) for s in seqs]
        for pad_id in (0, 63):
            ids, lengths = pad_right(seqs, pad_id)
            extra = torch.cat([ids, torch.full((3, 6), pad_id)], dim=1)   # more padding
            for batch in (ids, extra):
                got = reward(batch, lengths).tolist()
                assert got == pytest.approx(alone, rel=1e-5, abs=1e-6)
        # and it is the head's value at that token: not at the padding after it
        values = reward.backbone(ids).squeeze(-1)
        assert float(values[1, 1]) == pytest.approx(alone[1], rel=1e-5)
        assert float(values[1, 2]) != pytest.approx(alone[1], rel=1e-3)


def test_loss_is_minus_logsigmoid_of_the_margin_reduced_difference():
    reward = RewardModel.from_policy(tiny_model())
    pairs = PreferencePairs([np.array([1, 2])] * 2, [np.array([3, 4]), np.array([5])],
                            [np.array([6]), np.array([7, 8, 9])],
                            margin=np.array([0.5, 0.0], np.float32))
    objective = RewardObjective(reward, pairs, RewardConfig(margin=0.25))
    with torch.no_grad():
        loss, metrics = objective([0, 1])
        r = {k: float(reward(torch.as_tensor(np.concatenate([pairs.prompt_ids[i], s]))[None],
                             torch.tensor([2 + len(s)])))
             for i in range(2) for k, s in (((i, "c"), pairs.chosen_ids[i]),
                                            ((i, "r"), pairs.rejected_ids[i]))}
    d = [r[(0, "c")] - r[(0, "r")], r[(1, "c")] - r[(1, "r")]]
    expected = sum(math.log1p(math.exp(-(x - m))) for x, m in zip(d, (0.75, 0.25)))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["margin"]) == pytest.approx(sum(d), rel=1e-4, abs=1e-6)
    assert float(metrics["accuracy"]) == sum(x > 0 for x in d)


def test_training_ranks_the_chosen_replies_first():
    rng = np.random.default_rng(0)
    # chosen replies use tokens 0-31, rejected ones 32-63: learnable from the reply alone
    pairs = PreferencePairs([rng.integers(0, 64, 4) for _ in range(16)],
                            [rng.integers(0, 32, 3) for _ in range(16)],
                            [rng.integers(32, 64, 3) for _ in range(16)])
    train, held_out = pairs.subset(range(8)), pairs.subset(range(8, 16))
    reward = RewardModel.from_policy(tiny_model())
    history = train_reward(reward, train, RewardConfig(
        batch_size=8, loop=LoopConfig(steps=15, lr=3e-3, log_every=0, eval_every=5)), held_out)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["accuracy"] == 1.0 and history[-1]["margin"] > 1.0
    assert [r["step"] for r in history if "eval/accuracy" in r] == [5, 10, 15]
    assert history[-1]["eval/accuracy"] >= 0.875 and history[-1]["eval/margin"] > 0.5
