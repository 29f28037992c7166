"""The Llama-style decoder: embeddings, blocks, final norm and the output projection."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig
from engine.model.layers import Block, RMSNorm, rope_tables


class Transformer(nn.Module):
    """Token ids (B, T) → logits (B, T, vocab), or the summed loss of ``labels``.

    ``attention`` picks the kernels, with identical parameters either way: ``crucible`` runs
    crucible's fused ops throughout (flash attention, and on the CPU the fused RMSNorm, RoPE,
    SwiGLU and linear cross-entropy); ``sdpa`` runs torch's own (scaled_dot_product_attention
    and the plain compositions) — the reference the engine is measured against. ``fused``
    overrides the choice for everything but attention."""

    def __init__(self, config: ModelConfig, attention: str = "crucible",
                 fused: bool | None = None) -> None:
        super().__init__()
        self.config = config
        self.fused = attention == "crucible" if fused is None else fused
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(Block(config, attention, self.fused)
                                    for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps, self.fused)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; each block's two residual projections scaled by
        1/sqrt(2 n_layers) (GPT-2); norms at one."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("attn.wo.weight", "mlp.down.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) in the compute dtype. Packed batches pass ``position_ids``
        (B, T) restarting at every document and ``cu_seqlens`` over the flattened B*T tokens;
        without them every row is one causal sequence.

        With ``labels`` (B, T) (-100 = no loss) it returns instead the summed token
        cross-entropy, a float32 scalar; the fused path computes it without materialising the
        logits (engine.ops.loss.linear_cross_entropy)."""
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = rope_tables(self.config.head_dim, position_ids, self.config.rope_theta)
        x = self.embed(input_ids)                                    # (B, T, dim)
        for block in self.blocks:
            x = block(x, cos, sin, cu_seqlens, max_seqlen)
        x = self.norm(x)
        if labels is None:
            return self.output(x)                                    # (B, T, vocab)
        if self.fused:
            from engine.ops.loss import linear_cross_entropy

            return linear_cross_entropy(x, self.output.weight, labels, reduction="sum")
        return F.cross_entropy(self.output(x).float().flatten(0, 1), labels.flatten(),
                               ignore_index=-100, reduction="sum")
