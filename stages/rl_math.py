"""The arithmetic of policy-gradient RLHF: per-token log-probs, KL estimates, GAE, group
advantages and the clipped PPO losses. Pure tensor functions, each checked against a
hand-computed case in tests/stages/test_ppo.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[:, t]) from ``logits`` (B, T, V) that predict them (B, T)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None])[..., 0]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy (B, T) of the categorical distributions ``logits`` define."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate from sampled tokens: ``k1`` = logp - ref
    (unbiased, can be negative), ``k3`` = exp(ref - logp) - (ref - logp) - 1 (>= 0, Schulman)."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        d = ref_logp - logp
        return d.exp() - d - 1
    raise ValueError(f"unknown KL estimator {kind!r}; use k1 or k3")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (B, T) response tokens (``mask`` 1 on real ones,
    a contiguous prefix per row); returns (advantages, returns = advantages + values)."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    m = mask.to(rewards.dtype)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] * m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last * (m[:, t + 1] if t + 1 < T else 0)) * m[:, t]
        adv[:, t] = last
    return adv, adv + values


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each sample's reward standardised within its group of ``group_size`` samples of the
    same prompt (rows ``[g * group_size, (g + 1) * group_size)``)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards are not whole groups of {group_size}")
    r = rewards.view(-1, group_size)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).view(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (to minimise) and the fraction of tokens where clipping acted."""
    ratio = (logp - old_logp).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    frac = masked_mean((clipped > unclipped).float(), mask)
    return loss, frac


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped value loss: 0.5 * max((v - R)^2, (clip(v) - R)^2)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2),
                             mask)


def sequence_logprobs(model, sequences: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, N) and logits of the generated part of left-padded
    ``sequences`` (B, P + N), with RoPE positions counted from each row's first real token."""
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    logits = forward_padded(model, sequences, positions, attention_mask)
    gen_logits = logits[:, prompt_length - 1:-1]
    return token_logprobs(gen_logits, sequences[:, prompt_length:]), gen_logits


def forward_padded(model, ids: torch.Tensor, positions: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits of a left-padded batch: pads neither attend nor are attended to (SDPA with a
    key mask); the same weights as ``model.forward``."""
    from engine.model.generate import _step_all

    return _step_all(model, ids, positions, attention_mask)


def kl_controller_update(coef: float, kl: float, target: float, horizon: int, steps: int
                         ) -> float:
    """Adaptive KL coefficient (Ziegler et al. 2019): move towards the target KL by at most
    20% per update, scaled by the batch's share of the horizon."""
    error = max(-0.2, min(0.2, kl / target - 1.0))
    return coef * (1.0 + error * steps / horizon)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error (for the value warm-up)."""
    return F.mse_loss(a, b)
