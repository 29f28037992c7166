"""Typed Python wrappers over crucible's compiled ops, with fake kernels and plain references.

Each op module holds three things side by side: the wrapper that calls ``torch.ops.crucible.*``,
its fake (meta) kernel so ``torch.compile`` traces through it, and a pure-PyTorch reference the
tests compare against.
"""

from engine.ops.attention import (
    attention_reference,
    flash_attention,
    flash_attention_with_lse,
)
from engine.ops.fused_adamw import (
    fused_adamw_,
    fused_adamw_reference_,
    total_norm,
    total_norm_reference,
)
from engine.ops.layers import (
    apply_rope,
    apply_rope_reference,
    rms_norm,
    rms_norm_reference,
    swiglu,
    swiglu_reference,
)

__all__ = [
    "apply_rope",
    "apply_rope_reference",
    "attention_reference",
    "flash_attention",
    "flash_attention_with_lse",
    "fused_adamw_",
    "fused_adamw_reference_",
    "rms_norm",
    "rms_norm_reference",
    "swiglu",
    "swiglu_reference",
    "total_norm",
    "total_norm_reference",
]
