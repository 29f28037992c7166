"""PPO/GRPO: the math against hand-computed cases, the invariants, and that the reward rises
while the KL stays bounded on a tiny model with a rule-based reward."""

from __future__ import annotations

import math

import pytest
import torch

from engine.model import Transformer, preset
from stages.ppo import PPOConfig, PPOTrainer, right_padded
from stages.rl_math import (gae, group_advantages, kl_controller_update, kl_penalty,
                            policy_loss, sequence_logprobs)

TARGET = 7  # the rule-based reward: the share of response tokens equal to this id


def reward_fn(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.stack([(row[:n][-8:] == TARGET).float().mean() for row, n in zip(ids, lengths)])


def tiny_policy(seed=0):
    torch.manual_seed(seed)
    return Transformer(preset("tiny", vocab_size=32, dim=32, n_layers=1, n_heads=2,
                              n_kv_heads=1), "sdpa")


def test_gae_matches_the_recursion_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.1
    d1 = 0.0 + 0.9 * 0.1 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2, a1 = d2, d1 + 0.45 * d2
    a0 = d0 + 0.45 * a1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2]]))
    torch.testing.assert_close(ret, adv + values)
    masked, _ = gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=1.0, lam=1.0)
    assert masked[0, 2] == 0 and masked[0, 1] == pytest.approx(0.0 - 0.2)


def test_group_advantages_kl_and_clipping():
    adv = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), group_size=2)
    assert adv[:2].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], rel=1e-4)
    assert adv[2:].tolist() == [0.0, 0.0]
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    loss, frac = policy_loss(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2),
                             torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2) and frac.item() == 1.0
    assert kl_controller_update(0.1, kl=2.0, target=1.0, horizon=100, steps=10) == \
        pytest.approx(0.1 * 1.02)


def test_zero_kl_and_zero_advantages_leave_the_policy_unchanged():
    policy = tiny_policy()
    trainer = PPOTrainer(policy, reward_fn, [[1, 2, 3], [4, 5]],
                         PPOConfig(algorithm="ppo", kl_coef=0.0, rollout_prompts=2,
                                   max_new_tokens=5, whiten=False))
    before = [p.detach().clone() for p in policy.parameters()]
    rollout = trainer.rollout([[1, 2, 3], [4, 5]])
    rollout.advantages.zero_()
    trainer.update(rollout)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_rollout_logprobs_are_the_policy_logprobs_of_the_sampled_tokens():
    policy = tiny_policy()
    trainer = PPOTrainer(policy, reward_fn, [[1, 2]], PPOConfig(temperature=1.0))
    r = trainer.rollout([[1, 2, 3], [4]])
    torch.testing.assert_close(r.old_logp * r.response_mask,
                               r.gen.logprobs * r.response_mask, atol=1e-4, rtol=1e-4)
    assert torch.allclose(r.ref_logp, r.old_logp)  # no update yet: policy == reference
    ids, lengths = right_padded(r.gen, pad_id=0)
    assert lengths.tolist() == [3 + int(r.response_mask[0].sum()),
                                1 + int(r.response_mask[1].sum())]
    lp, _ = sequence_logprobs(policy, r.gen.sequences, r.gen.attention_mask,
                              r.gen.prompt_length)
    torch.testing.assert_close(lp, r.old_logp)


def run(algorithm: str, kl_coef: float, updates: int = 25, **kw) -> list[dict[str, float]]:
    policy = tiny_policy(seed=1)
    prompts = [[i % 30 + 1, (3 * i) % 30 + 1] for i in range(16)]
    config = PPOConfig(algorithm=algorithm, updates=updates, rollout_prompts=8, group_size=4,
                       max_new_tokens=8, lr=3e-3, epochs=2, kl_coef=kl_coef, seed=0, **kw)
    return PPOTrainer(policy, reward_fn, prompts, config).train()


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_reward_rises_and_the_kl_coefficient_bounds_the_drift(algorithm):
    free = run(algorithm, kl_coef=0.02)
    first = sum(h["reward"] for h in free[:3]) / 3
    last = sum(h["reward"] for h in free[-3:]) / 3
    assert last > first + 0.3, (first, last)
    assert all(0 <= h["clip_fraction"] <= 1 for h in free)
    held = run(algorithm, kl_coef=1.0)
    # the same run with a strong KL term drifts far less from the reference
    assert held[-1]["kl"] < free[-1]["kl"] / 2, (held[-1]["kl"], free[-1]["kl"])


def test_adaptive_kl_coefficient_rises_when_kl_exceeds_the_target():
    history = run("ppo", kl_coef=0.02, updates=15, kl_target=0.5, kl_horizon=100)
    coefs = [h["kl_coef"] for h in history]  # the coefficient each update used
    moves = [(b > a) == (h["kl"] > 0.5) for a, b, h in zip(coefs, coefs[1:], history)]
    assert all(moves) and max(h["kl"] for h in history) > 0.5 > min(h["kl"] for h in history)


def test_held_out_evaluation_is_reproducible_and_starts_at_zero_kl():
    policy = tiny_policy()
    prompts = [[1, 2, 3], [4, 5], [6]]
    trainer = PPOTrainer(policy, reward_fn, prompts, PPOConfig(max_new_tokens=6))
    first, again = trainer.evaluate(prompts, seed=5), trainer.evaluate(prompts, seed=5)
    assert first == again and first["kl"] == 0.0 and 0 <= first["reward"] <= 1
