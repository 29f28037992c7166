"""A Bradley–Terry reward model: the decoder with a scalar head, read at the last real token.

    reward = RewardModel.from_policy(model)        # the decoder's output layer → Linear(dim, 1)
    history = train_reward(reward, pairs, RewardConfig())

A pair's loss is ``-logsigmoid(r_chosen - r_rejected - margin)`` (Llama 2's margin, per pair
from a ``margin`` column or one constant). Sequences are ``prompt + reply``, right-padded; the
reward is the head's value at each sequence's last non-pad token, which causal attention makes
independent of the padding after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.examples import PreferencePairs
from stages.loop import LoopConfig, shuffled_batches, train_loop
from stages.packing import pad_right


class RewardModel(nn.Module):
    """A :class:`~engine.model.Transformer` whose output projection is a (dim → 1) head."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @classmethod
    def from_policy(cls, model: nn.Module, init_std: float | None = None) -> RewardModel:
        """Replaces ``model.output`` (untying it from the embedding) by a bias-free scalar head
        initialised normal(0, ``init_std``), by default 1 / sqrt(dim + 1) (the value head of
        OpenAI's lm-human-preferences)."""
        dim = model.config.dim
        head = nn.Linear(dim, 1, bias=False).to(model.embed.weight.device,
                                                model.embed.weight.dtype)
        nn.init.normal_(head.weight, 0.0, init_std or 1.0 / np.sqrt(dim + 1))
        model.output = head
        return cls(model)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of right-padded ``input_ids`` (B, T) with ``lengths`` (B,) real tokens."""
        values = self.backbone(input_ids).squeeze(-1).float()                # (B, T)
        return values.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)


@dataclass
class RewardConfig:
    """A reward-model run."""

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(lr=1e-5))
    """Optimisation settings."""
    batch_size: int = 8
    """Pairs per micro-batch."""
    margin: float = 0.0
    """Margin subtracted from every pair's reward difference (added to a ``margin`` column)."""
    pad_id: int = 0
    """Padding id (right padding; never read)."""
    seed: int = 0
    """Shuffling seed."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"RewardConfig.batch_size must be >= 1 (got {self.batch_size})")


def pair_rewards(model: RewardModel, pairs: PreferencePairs, index: Sequence[int],
                 pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected sequences of pairs ``index``: (n,) each, one
    right-padded forward of 2n rows."""
    seqs = [np.concatenate([pairs.prompt_ids[i], reply]) for i in index
            for reply in (pairs.chosen_ids[i], pairs.rejected_ids[i])]
    device = next(model.parameters()).device
    ids, lengths = pad_right(seqs, pad_id)
    rewards = model(ids.to(device), lengths.to(device))
    return rewards[0::2], rewards[1::2]


class RewardObjective:
    """Bradley–Terry loss summed over pairs; units are pairs."""

    def __init__(self, model: RewardModel, pairs: PreferencePairs, config: RewardConfig) -> None:
        self.model, self.pairs, self.config = model, pairs, config

    def units(self, batch: Sequence[int]) -> int:
        """Pairs in the batch."""
        return len(batch)

    def __call__(self, batch: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen, rejected = pair_rewards(self.model, self.pairs, batch, self.config.pad_id)
        margin = torch.full_like(chosen, self.config.margin)
        if self.pairs.margin is not None:
            margin = margin + torch.as_tensor(self.pairs.margin[list(batch)], device=margin.device)
        diff = chosen - rejected
        loss = -F.logsigmoid(diff - margin)
        return loss.sum(), {"accuracy": (diff > 0).float().sum(), "margin": diff.detach().sum()}


@torch.no_grad()
def preference_accuracy(model: RewardModel, pairs: PreferencePairs, batch_size: int = 8,
                        pad_id: int = 0) -> dict[str, float]:
    """How often the reward model scores the chosen reply above the rejected one, and the mean
    reward margin ``r_chosen - r_rejected``."""
    was_training = model.training
    model.eval()
    wins, margin = 0.0, 0.0
    for start in range(0, len(pairs), batch_size):
        index = range(start, min(start + batch_size, len(pairs)))
        chosen, rejected = pair_rewards(model, pairs, index, pad_id)
        wins += float((chosen > rejected).sum())
        margin += float((chosen - rejected).sum())
    model.train(was_training)
    return {"accuracy": wins / len(pairs), "margin": margin / len(pairs)}


def train_reward(model: RewardModel, pairs: PreferencePairs, config: RewardConfig,
                 eval_pairs: PreferencePairs | None = None) -> list[dict[str, float]]:
    """Trains the reward model on ``pairs``; returns the per-step records (``loss``,
    ``accuracy``, ``margin`` = mean ``r_chosen - r_rejected``, ...), with
    ``eval/accuracy`` and ``eval/margin`` on ``eval_pairs`` when given."""
    batches = shuffled_batches(len(pairs), config.batch_size, config.seed)
    evaluate = None if eval_pairs is None else (
        lambda: preference_accuracy(model, eval_pairs, config.batch_size, config.pad_id))
    return train_loop(model, RewardObjective(model, pairs, config), batches, config.loop,
                      name="reward", evaluate=evaluate)
