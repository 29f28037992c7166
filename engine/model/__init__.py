"""The Llama-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention through crucible's
fused attention op), its typed config and presets, and Hugging Face Llama export/import."""

from engine.model.config import (
    PRESETS,
    ModelConfig,
    count_params,
    flops_per_token,
    keys_per_query,
    preset,
)
from engine.model.transformer import Transformer

__all__ = ["PRESETS", "ModelConfig", "Transformer", "count_params", "flops_per_token",
           "keys_per_query", "preset"]
