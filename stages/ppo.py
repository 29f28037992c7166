"""PPO and GRPO: the policy samples, a reward model scores, the policy moves — not too far.

    trainer = PPOTrainer(policy, reward_fn, prompts, PPOConfig(algorithm="ppo", kl_coef=0.05))
    history = trainer.train()           # per update: reward, kl, clip fraction, entropy, ...

One update: sample ``rollout_prompts`` prompts (GRPO: ``group_size`` samples of each) with the
KV-cache generator (left padding); score each full sequence with ``reward_fn`` at its last real
token; then

* **PPO**: per-token rewards ``-kl_coef * (logp - ref_logp)`` plus the score on the last
  generated token; values from a critic (the policy's trunk with a scalar head); GAE; whitened
  advantages; ``epochs`` passes of the clipped surrogate and the clipped value loss. With
  ``kl_target`` the coefficient adapts (Ziegler et al. 2019).
* **GRPO**: no critic; each sample's advantage is its reward standardised within its group,
  applied to every token; the loss adds ``kl_coef *`` the k3 KL estimate to the reference.

``reward_fn(input_ids, lengths)`` takes right-padded sequences (prompt + response) and their
lengths and returns one reward per row: a :class:`stages.reward.RewardModel` fits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from engine.model.generate import Generation, generate
from engine.optim import FusedAdamW
from stages.packing import pad_right
from stages.rl_math import (entropy, forward_padded, gae, group_advantages, kl_controller_update,
                            kl_penalty, masked_mean, policy_loss, sequence_logprobs, value_loss)

RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PPOConfig:
    """A PPO or GRPO run."""

    algorithm: str = "ppo"
    """``ppo`` (critic + GAE) or ``grpo`` (group-normalised advantages, no critic)."""
    updates: int = 20
    """Rollout + optimisation rounds."""
    rollout_prompts: int = 8
    """Prompts per rollout."""
    group_size: int = 4
    """GRPO: samples per prompt."""
    max_new_tokens: int = 24
    """Longest response."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    epochs: int = 2
    """Optimisation passes over each rollout."""
    lr: float = 1e-4
    """Policy learning rate (the critic uses it too)."""
    clip: float = 0.2
    """Policy ratio clip."""
    value_clip: float = 0.2
    """Value clip (PPO)."""
    kl_coef: float = 0.05
    """KL coefficient (initial value when adaptive)."""
    kl_target: float | None = None
    """Target KL per sequence for the adaptive controller; None keeps kl_coef fixed."""
    kl_horizon: int = 10000
    """Adaptive controller horizon (samples)."""
    entropy_coef: float = 0.0
    """Entropy bonus."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten: bool = True
    """Standardise PPO advantages over the rollout."""
    max_grad_norm: float = 1.0
    """Gradient clip."""
    pad_id: int = 0
    """Padding token id."""
    eos_id: int | None = None
    """Responses end at this token (the end of turn)."""
    seed: int = 0
    """Seed of prompt order and sampling."""

    def __post_init__(self) -> None:
        if self.algorithm not in ("ppo", "grpo"):
            raise ValueError(f"algorithm must be ppo or grpo (got {self.algorithm!r})")
        if self.algorithm == "grpo" and self.group_size < 2:
            raise ValueError("grpo needs group_size >= 2 (advantages are within-group)")
        if self.updates < 1 or self.rollout_prompts < 1 or self.epochs < 1:
            raise ValueError("updates, rollout_prompts and epochs must be >= 1")


class ValueModel(nn.Module):
    """The critic: a copy of the policy's trunk with a scalar head (one value per token)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(policy)
        dim = self.trunk.config.dim
        self.trunk.output = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(self.trunk.output.weight)

    def forward(self, ids, positions, mask) -> torch.Tensor:
        """Values (B, S) of a left-padded batch."""
        return forward_padded(self.trunk, ids, positions, mask)[..., 0].float()


@dataclass
class Rollout:
    """One batch of samples with everything the update needs (all detached)."""

    gen: Generation
    response_mask: torch.Tensor   # (B, N)
    old_logp: torch.Tensor        # (B, N)
    ref_logp: torch.Tensor        # (B, N)
    advantages: torch.Tensor      # (B, N)
    returns: torch.Tensor | None  # (B, N), PPO
    old_values: torch.Tensor | None
    scores: torch.Tensor          # (B,) reward-model scores
    kl: torch.Tensor              # (B,) summed k1 KL per sequence


def right_padded(gen: Generation, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The real tokens of each row (prompt + response) right-padded, and their lengths."""
    return pad_right([seq[m.bool()] for seq, m in zip(gen.sequences, gen.attention_mask)],
                     pad_id)


class PPOTrainer:
    """Runs PPO or GRPO on ``policy`` (updated in place) against a frozen reference copy."""

    def __init__(self, policy: nn.Module, reward_fn: RewardFn, prompts: list[list[int]],
                 config: PPOConfig) -> None:
        if not prompts:
            raise ValueError("no prompts to sample from")
        self.policy, self.reward_fn, self.prompts, self.config = policy, reward_fn, prompts, config
        self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.critic = ValueModel(policy) if config.algorithm == "ppo" else None
        params = list(policy.parameters()) + (list(self.critic.parameters())
                                              if self.critic is not None else [])
        self.optimizer = FusedAdamW(params, lr=config.lr, weight_decay=0.0,
                                    max_grad_norm=config.max_grad_norm)
        self.kl_coef = config.kl_coef
        self.generator = torch.Generator().manual_seed(config.seed)

    def _prompt_batch(self, update: int) -> list[list[int]]:
        n = len(self.prompts)
        start = (update * self.config.rollout_prompts) % n
        batch = [self.prompts[(start + i) % n] for i in range(self.config.rollout_prompts)]
        if self.config.algorithm == "grpo":
            batch = [p for p in batch for _ in range(self.config.group_size)]
        return batch

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> Rollout:
        """Samples, scores and computes advantages for one batch of prompts."""
        cfg = self.config
        self.policy.eval()
        gen = generate(self.policy, prompts, max_new_tokens=cfg.max_new_tokens,
                       pad_id=cfg.pad_id, eos_id=cfg.eos_id, temperature=cfg.temperature,
                       generator=self.generator)
        self.policy.train()
        P = gen.prompt_length
        mask = gen.attention_mask[:, P:].float()
        old_logp, _ = sequence_logprobs(self.policy, gen.sequences, gen.attention_mask, P)
        ref_logp, _ = sequence_logprobs(self.reference, gen.sequences, gen.attention_mask, P)
        ids, lengths = right_padded(gen, cfg.pad_id)
        scores = self.reward_fn(ids, lengths).float()
        kl_tokens = kl_penalty(old_logp, ref_logp, "k1") * mask
        kl = kl_tokens.sum(1)
        returns = old_values = None
        if cfg.algorithm == "ppo":
            rewards = -self.kl_coef * kl_tokens
            last = (mask.sum(1).long() - 1).clamp(min=0)
            rewards[torch.arange(len(prompts)), last] += scores
            positions = (gen.attention_mask.cumsum(1) - 1).clamp(min=0)
            values = self.critic(gen.sequences, positions, gen.attention_mask)
            old_values = values[:, P - 1:-1] * mask     # the value of the state before token t
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten:
                mean = masked_mean(advantages, mask)
                std = masked_mean((advantages - mean) ** 2, mask).sqrt()
                advantages = (advantages - mean) / (std + 1e-8) * mask
        else:
            advantages = group_advantages(scores, cfg.group_size)[:, None] * mask
        return Rollout(gen, mask, old_logp, ref_logp, advantages, returns, old_values, scores,
                       kl)

    @torch.no_grad()
    def evaluate(self, prompts: list[list[int]], seed: int = 1234) -> dict[str, float]:
        """Mean reward-model score and KL to the reference (summed over the response, k1) of
        responses sampled with a fixed seed for ``prompts``: the same prompts and seed before
        and after training make a held-out comparison."""
        cfg = self.config
        self.policy.eval()
        gen = generate(self.policy, prompts, max_new_tokens=cfg.max_new_tokens,
                       pad_id=cfg.pad_id, eos_id=cfg.eos_id, temperature=cfg.temperature,
                       generator=torch.Generator().manual_seed(seed))
        self.policy.train()
        P = gen.prompt_length
        mask = gen.attention_mask[:, P:].float()
        logp, _ = sequence_logprobs(self.policy, gen.sequences, gen.attention_mask, P)
        ref_logp, _ = sequence_logprobs(self.reference, gen.sequences, gen.attention_mask, P)
        ids, lengths = right_padded(gen, cfg.pad_id)
        scores = self.reward_fn(ids, lengths).float()
        kl = (kl_penalty(logp, ref_logp, "k1") * mask).sum(1)
        return {"reward": float(scores.mean()), "kl": float(kl.mean()),
                "response_length": float(mask.sum(1).mean())}

    def update(self, rollout: Rollout) -> dict[str, float]:
        """``epochs`` optimisation passes over one rollout; returns its metrics."""
        cfg = self.config
        gen, mask, P = rollout.gen, rollout.response_mask, rollout.gen.prompt_length
        stats: dict[str, float] = {}
        for _ in range(cfg.epochs):
            logp, logits = sequence_logprobs(self.policy, gen.sequences, gen.attention_mask, P)
            loss, clip_frac = policy_loss(logp, rollout.old_logp, rollout.advantages, mask,
                                          cfg.clip)
            ent = masked_mean(entropy(logits), mask)
            loss = loss - cfg.entropy_coef * ent
            if cfg.algorithm == "grpo":
                loss = loss + cfg.kl_coef * masked_mean(
                    kl_penalty(logp, rollout.ref_logp, "k3"), mask)
            else:
                positions = (gen.attention_mask.cumsum(1) - 1).clamp(min=0)
                values = self.critic(gen.sequences, positions, gen.attention_mask)[:, P - 1:-1]
                v_loss = value_loss(values, rollout.old_values, rollout.returns, mask,
                                    cfg.value_clip)
                loss = loss + 0.5 * v_loss
                stats["value_loss"] = float(v_loss.detach())
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            stats.update(clip_fraction=float(clip_frac.detach()), entropy=float(ent.detach()))
        kl = float(rollout.kl.mean())
        stats.update(reward=float(rollout.scores.mean()), kl=kl, kl_coef=self.kl_coef,
                     response_length=float(mask.sum(1).mean()))
        if cfg.kl_target is not None and cfg.algorithm == "ppo":
            self.kl_coef = kl_controller_update(self.kl_coef, kl, cfg.kl_target,
                                                cfg.kl_horizon, len(rollout.scores))
        return stats

    def train(self, log: Callable[[int, dict[str, float]], None] | None = None
              ) -> list[dict[str, float]]:
        """Runs ``updates`` rounds; returns the metrics of each."""
        history = []
        for update in range(self.config.updates):
            stats = self.update(self.rollout(self._prompt_batch(update)))
            history.append(stats)
            if log is not None:
                log(update + 1, stats)
        return history
