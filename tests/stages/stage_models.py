"""A tiny decoder for the stage tests (a module of its own, so test files can import it)."""

from __future__ import annotations

import torch

from engine.model import ModelConfig, Transformer


def tiny_model(vocab_size: int = 64, seed: int = 0, attention: str = "crucible",
               dim: int = 32, n_layers: int = 2) -> Transformer:
    """A two-block decoder with a few tens of thousands of parameters."""
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab_size, dim=dim, n_layers=n_layers, n_heads=4,
                                   n_kv_heads=2, max_seq_len=512), attention)
