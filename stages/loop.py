"""The stages' training loop: gradient accumulation, FusedAdamW with fused clipping, the engine's
warmup + cosine schedule, metrics. A stage supplies only an :class:`Objective` (data → summed
loss and summed metrics) and its micro-batches.

The loss of a step is normalised by the step's *units* (trained tokens for SFT, pairs for the
preference losses) counted over all its micro-batches before any forward pass, so ``k``
micro-batches of ``n`` units give the same gradient as one batch of ``k * n``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from engine.optim import FusedAdamW
from engine.schedule import lr_at


class Objective(Protocol):
    """What a stage trains: a model plus a loss over its micro-batches (each objective moves
    its batch to the model's device)."""

    model: torch.nn.Module

    def units(self, batch: Any) -> int:
        """What the loss is averaged over in ``batch`` (tokens, pairs), known before forward."""

    def __call__(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss *summed* over the batch's units, and metrics summed the same way."""


@dataclass
class LoopConfig:
    """Optimisation settings shared by every stage."""

    steps: int = 100
    """Optimizer steps (the loop also stops when the batches run out)."""
    lr: float = 1e-5
    """Peak learning rate."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine decay, as a fraction of ``lr``."""
    weight_decay: float = 0.0
    """Decoupled weight decay of matrices (never of norms or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment coefficients."""
    max_grad_norm: float | None = 1.0
    """Global gradient-norm clip (fused into the update), or None."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    log_every: int = 10
    """Print a line every this many steps (0: never)."""
    eval_every: int = 0
    """Run the stage's held-out evaluation every this many steps and after the last (0: only
    after the last; nothing without held-out data)."""
    out_dir: str | None = None
    """Where ``metrics.jsonl`` goes (one line per step), or None."""
    autocast: str | None = None
    """``bfloat16`` or ``float16``: forward passes under ``torch.autocast`` (the fused attention
    takes only those on CUDA); None: the model's own dtype."""

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be >= 1 (got {getattr(self, name)})")
        if not self.lr > 0:
            raise ValueError(f"LoopConfig.lr must be positive (got {self.lr})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"LoopConfig.min_lr_ratio must be in [0, 1] (got "
                             f"{self.min_lr_ratio})")
        if min(self.warmup_steps, self.log_every, self.eval_every) < 0:
            raise ValueError("LoopConfig.warmup_steps, log_every and eval_every must be >= 0")
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"LoopConfig.autocast must be None, 'bfloat16' or 'float16' (got "
                             f"{self.autocast!r})")


def autocast(model: torch.nn.Module, dtype: str | None):
    """``torch.autocast`` to ``dtype`` on the model's device, or a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def backward_step(objective: Objective, micro_batches: Sequence[Any],
                  autocast_dtype: str | None = None) -> dict[str, float]:
    """Forward + backward over one step's micro-batches, each loss divided by the step's total
    units; returns the step's mean loss and metrics (``loss`` and each metric's key)."""
    units = sum(objective.units(b) for b in micro_batches)
    if units < 1:
        raise ValueError("a training step has no units to average over (no trained token or "
                         "pair in any micro-batch); check the loss masks")
    totals: dict[str, float] = {"loss": 0.0}
    for batch in micro_batches:
        with autocast(objective.model, autocast_dtype):
            loss, metrics = objective(batch)
        (loss / units).backward()
        totals["loss"] += float(loss.detach())
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return {k: v / units for k, v in totals.items()}


def make_optimizer(model: torch.nn.Module, config: LoopConfig) -> FusedAdamW:
    """FusedAdamW over the parameters that require gradients (LoRA: the adapters only)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameter (requires_grad is False "
                         "everywhere); apply LoRA or unfreeze the model")
    return FusedAdamW([{"params": decay, "weight_decay": config.weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}], lr=config.lr,
                      betas=config.betas, max_grad_norm=config.max_grad_norm)


def train_loop(model: torch.nn.Module, objective: Objective, batches: Iterable[Any],
               config: LoopConfig, name: str = "train",
               evaluate: Callable[[], dict[str, float]] | None = None
               ) -> list[dict[str, float]]:
    """Runs ``config.steps`` optimizer steps of ``grad_accum`` micro-batches each; returns one
    record per step (``step``, ``loss``, ``lr``, ``grad_norm`` and the objective's metrics,
    plus ``eval/<key>`` of ``evaluate()`` at the steps ``config.eval_every`` picks)."""
    optimizer = make_optimizer(model, config)
    model.train()
    data = iter(batches)
    history: list[dict[str, float]] = []
    log = None
    if config.out_dir:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(config.out_dir) / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
    start = time.perf_counter()
    try:
        for step in range(config.steps):
            lr = lr_at(step, lr=config.lr, warmup_steps=config.warmup_steps,
                       total_steps=config.steps, min_lr_ratio=config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro = [b for _, b in zip(range(config.grad_accum), data)]
            if len(micro) < config.grad_accum:
                print(f"{name}: the data ended at step {step}", file=sys.stderr)
                break
            record = backward_step(objective, micro, config.autocast)
            norm = optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step + 1, **record, "lr": lr,
                      "grad_norm": float(norm) if norm is not None else 0.0}
            last = step + 1 == config.steps
            if evaluate is not None and (last or config.eval_every and
                                         (step + 1) % config.eval_every == 0):
                with autocast(model, config.autocast):
                    record.update({f"eval/{k}": v for k, v in evaluate().items()})
                model.train()
            history.append(record)
            if log is not None:
                log.write(json.dumps(record) + "\n")
            if config.log_every and ((step + 1) % config.log_every == 0 or step == 0):
                evals = "".join(f"  {k} {v:.4f}" for k, v in record.items()
                                if k.startswith("eval/"))
                print(f"{name}: step {step + 1}/{config.steps}  loss {record['loss']:.4f}  "
                      f"lr {lr:.2e}{evals}  {time.perf_counter() - start:.1f}s",
                      file=sys.stderr)
    finally:
        if log is not None:
            log.close()
    return history


def shuffled_batches(n: int, batch_size: int, seed: int = 0) -> Iterator[list[int]]:
    """Endless index batches over ``n`` items: a fresh permutation each epoch, the last short
    batch of an epoch dropped (when ``n >= batch_size``)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"shuffled_batches: need n >= 1 and batch_size >= 1 (got {n}, "
                         f"{batch_size})")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n).tolist()
        stop = max(1, n - n % batch_size) if n >= batch_size else n
        for i in range(0, stop, batch_size):
            yield order[i:i + batch_size]
