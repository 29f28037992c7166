"""``crucible plan CONFIG``: what a run will cost before it starts.

Parameters, FLOPs per token, the Chinchilla-optimal token count (~20 tokens per parameter) and
the loss the Chinchilla fit predicts, memory per rank for each parallelism choice, and the wall
time on a named device at an MFU (by default the one the engine measured, from a metrics file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.config import TrainConfig
from engine.metrics import PEAK_FLOPS
from engine.model import count_params, flops_per_token

# Hoffmann et al. (2022), approach 3: L(N, D) = E + A / N^alpha + B / D^beta
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TOKENS_PER_PARAM = 20


def chinchilla_loss(params: float, tokens: float) -> float:
    """The Chinchilla fit's predicted loss (nats/token on their data) for N params, D tokens."""
    c = CHINCHILLA
    return c["E"] + c["A"] / params ** c["alpha"] + c["B"] / tokens ** c["beta"]


@dataclass
class MemoryPlan:
    """Bytes per rank of one parallelism choice."""

    name: str
    weights: float
    grads: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        """Everything together."""
        return self.weights + self.grads + self.optimizer + self.activations


def memory_plans(config: TrainConfig, world: int) -> list[MemoryPlan]:
    """Per-rank memory for DDP and ZeRO-1/2/3 (= FSDP) at ``world`` ranks: fp32 weights and
    grads, Adam's two fp32 moments, and the activations a block keeps for its backward pass."""
    mc = config.model_config()
    n = count_params(mc)
    w, g, o = 4 * n, 4 * n, 8 * n
    B, T, d = config.data.batch_size, config.data.seq_len, mc.dim
    act_bytes = 2 if config.dtype == "bfloat16" else 4
    # per block: inputs of the norms, q/k/v/o, the MLP's gate/up/act/down inputs (~ 16 d wide)
    per_block = B * T * (10 * d + 4 * mc.ffn_dim) * act_bytes
    logits = B * T * mc.vocab_size * 4 * 2
    act = (mc.n_layers * per_block if not config.activation_checkpointing
           else mc.n_layers * B * T * d * act_bytes + per_block) + logits
    return [MemoryPlan("DDP", w, g, o, act),
            MemoryPlan("ZeRO-1", w, g, o / world, act),
            MemoryPlan("ZeRO-2", w, g / world, o / world, act),
            MemoryPlan("ZeRO-3 / FSDP", w / world, g / world, o / world, act)]


def measured_mfu(metrics: Path) -> float | None:
    """The median MFU logged in a run's metrics.jsonl (None if the file has none)."""
    if not metrics.exists():
        return None
    values = sorted(r["mfu"] for r in map(json.loads, metrics.read_text().splitlines())
                    if r.get("event", "train") == "train" and r.get("mfu"))
    return values[len(values) // 2] if values else None


def plan_text(config: TrainConfig, *, world: int, device: str, mfu: float | None,
              tokens: float | None) -> str:
    """The plan as printable text."""
    mc = config.model_config()
    n = count_params(mc)
    n_non_emb = count_params(mc, embeddings=False)
    fpt = flops_per_token(mc, config.data.seq_len)
    optimal = TOKENS_PER_PARAM * n
    run_tokens = tokens or (config.steps * config.grad_accum * config.data.batch_size
                            * config.data.seq_len * world)
    lines = [f"model {config.model} ({mc.n_layers} layers, dim {mc.dim}, {mc.n_heads} heads / "
             f"{mc.n_kv_heads} KV, vocab {mc.vocab_size})",
             f"  parameters           {n:,} ({n_non_emb:,} without the embedding table)",
             f"  FLOPs per token      {fpt / 1e9:.3f} GFLOP (training, context "
             f"{config.data.seq_len}, causal attention counted)",
             f"  Chinchilla-optimal   {optimal:,.0f} tokens (20 per parameter), predicted loss "
             f"{chinchilla_loss(n, optimal):.3f}",
             f"  this run             {run_tokens:,.0f} tokens, predicted loss "
             f"{chinchilla_loss(n, run_tokens):.3f} (the fit is for Chinchilla's data and "
             "tokenizer: compare trends, not absolute values)",
             f"memory per rank at {world} rank(s) (GiB: weights + grads + optimizer + "
             "activations)"]
    for p in memory_plans(config, world):
        lines.append(f"  {p.name:<14} {p.total / 2**30:8.2f}  = {p.weights / 2**30:.2f} + "
                     f"{p.grads / 2**30:.2f} + {p.optimizer / 2**30:.2f} + "
                     f"{p.activations / 2**30:.2f}")
    if device not in PEAK_FLOPS:
        raise KeyError(f"unknown device {device!r}; known: {', '.join(PEAK_FLOPS)}")
    if mfu is None:
        lines.append(f"wall time on {world} x {device}: give --mfu or a metrics.jsonl "
                     "with measured MFU")
    else:
        seconds = run_tokens * fpt / (PEAK_FLOPS[device] * world * mfu)
        lines.append(f"wall time on {world} x {device} at {100 * mfu:.1f}% MFU: "
                     f"{seconds / 3600:.2f} h ({run_tokens * fpt:.3e} FLOPs)")
    return "\n".join(lines)
