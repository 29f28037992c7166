"""The model cut into pipeline stages: contiguous slices of the Transformer's blocks that share
its parameters and keep its parameter names (so optimizers and checkpoints see the model's)."""

from __future__ import annotations

import torch
from torch import nn

from engine.model import Transformer
from engine.model.layers import rope_tables


def stage_layers(n_layers: int, num_stages: int) -> list[range]:
    """Contiguous block ranges per stage, as even as possible (earlier stages get the
    remainder). Every stage needs at least one block."""
    if num_stages > n_layers:
        raise ValueError(f"{num_stages} pipeline stages need at least as many blocks; the "
                         f"model has n_layers={n_layers}: use fewer stages or virtual stages, "
                         "or a deeper model")
    base, extra = divmod(n_layers, num_stages)
    bounds = [0]
    for s in range(num_stages):
        bounds.append(bounds[-1] + base + (1 if s < extra else 0))
    return [range(bounds[s], bounds[s + 1]) for s in range(num_stages)]


class PipelineStage(nn.Module):
    """One chunk of a Transformer: the embedding on the first stage, a contiguous slice of
    blocks, the final norm and output projection on the last. Parameters are the model's own
    (shared, not copied) and keep their names (``blocks.3.attn.wq.weight``), so a stage's
    state dict is a slice of the model's."""

    def __init__(self, model: Transformer, stage: int, num_stages: int) -> None:
        super().__init__()
        if model.config.tie_embeddings and num_stages > 1:
            raise ValueError("tied embeddings put one weight on the first and last stage; "
                             "pipeline a model with tie_embeddings=False")
        self.config = model.config
        self.index, self.is_first, self.is_last = stage, stage == 0, stage == num_stages - 1
        layers = stage_layers(model.config.n_layers, num_stages)[stage]
        self.embed = model.embed if self.is_first else None
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in layers})
        self.norm = model.norm if self.is_last else None
        self.output = model.output if self.is_last else None

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
                ) -> torch.Tensor:
        """Token ids (B, T) on the first stage, hidden states (B, T, dim) elsewhere; returns
        hidden states, or logits (B, T, vocab) on the last stage. Packed rows pass
        ``position_ids`` and ``cu_seqlens`` as for Transformer.forward."""
        cos, sin = rope_tables(self.config.head_dim, position_ids, self.config.rope_theta)
        if self.embed is not None:
            x = self.embed(x)                                        # (B, T, dim)
        for block in self.blocks.values():
            x = block(x, cos, sin, cu_seqlens, max_seqlen)
        if self.output is not None:
            x = self.output(self.norm(x))                            # (B, T, vocab)
        return x


class RankModule(nn.Module):
    """The stages of one rank as one module whose state dict keys are the model's
    (``embed.weight``, ``blocks.5.mlp.up.weight``, ``output.weight``)."""

    def __init__(self, stages) -> None:
        super().__init__()
        stages = list(stages)
        self.embed = next((s.embed for s in stages if s.embed is not None), None)
        self.blocks = nn.ModuleDict({k: b for s in stages for k, b in s.blocks.items()})
        self.norm = next((s.norm for s in stages if s.norm is not None), None)
        self.output = next((s.output for s in stages if s.output is not None), None)
