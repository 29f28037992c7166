"""Supervised fine-tuning on the examples ``crucible tokenize --kind sft`` writes: packed rows
(varlen attention, no attention or loss across examples), the loss on the masked tokens only,
full fine-tuning, LoRA, bottleneck adapters or prefix tuning, and multi-task mixtures with per-task sampling weights.

    examples = read_sft("out/sft")
    history = train_sft(model, examples, SFTConfig(loop=LoopConfig(steps=200, lr=2e-5)))

The loss is the mean next-token NLL over the trained tokens of a step (labels ``input_ids[1:]``
weighted by ``loss_mask[1:]``), so packing and gradient accumulation do not change it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from stages.examples import SFTExamples
from stages.adapters import BottleneckConfig, PrefixConfig, apply_bottleneck, apply_prefix
from stages.lora import LoRAConfig, apply_lora
from stages.loop import LoopConfig, shuffled_batches, train_loop
from stages.packing import PackedExamples, pack_examples, token_logps


@dataclass
class SFTConfig:
    """An SFT run."""

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(lr=2e-5))
    """Optimisation (steps, lr, schedule, accumulation, clipping)."""
    batch_size: int = 8
    """Examples per micro-batch."""
    seq_len: int | None = None
    """Packed row length; None: the longest example of each micro-batch (examples longer than
    a set ``seq_len`` are an error, never cut)."""
    lora: LoRAConfig | None = None
    """Train LoRA adapters on a frozen model instead of every weight."""
    bottleneck: BottleneckConfig | None = None
    """Train bottleneck adapters instead (see stages/adapters.py)."""
    prefix: PrefixConfig | None = None
    """Train per-layer prefix keys/values instead (prefix tuning)."""
    pad_id: int = 0
    """Id written in the padding of a row (never attended to or trained)."""
    seed: int = 0
    """Shuffling seed."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"SFTConfig.batch_size must be >= 1 (got {self.batch_size})")
        chosen = [n for n in ("lora", "bottleneck", "prefix") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"SFTConfig: choose one of lora, bottleneck, prefix (got "
                             f"{', '.join(chosen)})")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"SFTConfig.seq_len must be >= 2 or None (got {self.seq_len})")


class SFTObjective:
    """Summed NLL of the trained tokens of a packed batch; units are trained tokens."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def units(self, batch: PackedExamples) -> int:
        """Trained tokens (targets with a non-zero weight)."""
        return int((batch.weights > 0).sum())

    def __call__(self, batch: PackedExamples) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = batch.to(next(self.model.parameters()).device)
        logits = self.model(batch.input_ids, batch.position_ids, batch.cu_seqlens,
                            batch.max_seqlen)                                 # (B, T, V)
        nll = -token_logps(logits, batch.targets)                            # (B, T)
        trained = batch.weights > 0
        correct = (logits.argmax(-1) == batch.targets) & trained
        return (nll * batch.weights).sum(), {"accuracy": correct.sum().float()}


def sft_batches(examples: SFTExamples, config: SFTConfig) -> Iterator[PackedExamples]:
    """Endless packed micro-batches of shuffled examples."""
    for index in shuffled_batches(len(examples), config.batch_size, config.seed):
        yield pack_examples([(examples.input_ids[i], examples.loss_mask[i]) for i in index],
                            config.seq_len, config.pad_id)


def mixture_batches(tasks: Mapping[str, SFTExamples], weights: Mapping[str, float],
                    config: SFTConfig) -> Iterator[PackedExamples]:
    """Endless packed micro-batches of a multi-task mixture: each example's task is drawn with
    probability proportional to its weight, then the task's next example (each task reshuffled
    every epoch of its own)."""
    names = list(tasks)
    if set(weights) != set(names):
        raise ValueError(f"mixture weights name {sorted(weights)} but the tasks are "
                         f"{sorted(names)}; give one weight per task")
    w = np.array([float(weights[n]) for n in names])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixture weights {dict(weights)} must be >= 0 with a positive sum")
    rng = np.random.default_rng(config.seed)
    streams = {n: shuffled_batches(len(tasks[n]), 1, config.seed + k)
               for k, n in enumerate(names)}
    while True:
        picks = rng.choice(len(names), size=config.batch_size, p=w / w.sum())
        chosen = []
        for p in picks:
            task = tasks[names[p]]
            i = next(streams[names[p]])[0]
            chosen.append((task.input_ids[i], task.loss_mask[i]))
        yield pack_examples(chosen, config.seq_len, config.pad_id)


def train_sft(model: torch.nn.Module, data: SFTExamples | Mapping[str, SFTExamples],
              config: SFTConfig, weights: Mapping[str, float] | None = None,
              eval_examples: SFTExamples | None = None) -> list[dict[str, float]]:
    """Fine-tunes ``model`` (LoRA adapters applied first when ``config.lora``) on ``data``, one
    set of examples or a mapping of tasks sampled by ``weights`` (default: equal); returns the
    per-step records of :func:`~stages.loop.train_loop`, with ``eval/response_loss`` on
    ``eval_examples`` when given."""
    if config.lora is not None:
        apply_lora(model, config.lora)
    if config.bottleneck is not None:
        apply_bottleneck(model, config.bottleneck)
    if config.prefix is not None:
        apply_prefix(model, config.prefix)
    if isinstance(data, SFTExamples):
        batches = sft_batches(data, config)
    else:
        batches = mixture_batches(data, weights or dict.fromkeys(data, 1.0), config)
    evaluate = None if eval_examples is None else (lambda: {"response_loss": response_loss(
        model, eval_examples, config.batch_size, config.seq_len)})
    return train_loop(model, SFTObjective(model), batches, config.loop, name="sft",
                      evaluate=evaluate)


@torch.no_grad()
def response_loss(model: torch.nn.Module, examples: SFTExamples, batch_size: int = 8,
                  seq_len: int | None = None) -> float:
    """Mean NLL per trained token of ``examples`` (held-out response loss)."""
    objective = SFTObjective(model)
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        index = range(start, min(start + batch_size, len(examples)))
        batch = pack_examples([(examples.input_ids[i], examples.loss_mask[i]) for i in index],
                              seq_len)
        loss, _ = objective(batch)
        total += float(loss)
        tokens += objective.units(batch)
    model.train(was_training)
    return total / max(tokens, 1)
