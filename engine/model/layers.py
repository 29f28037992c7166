"""The decoder's layers: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Attention runs through crucible's fused op (``engine.ops.attention.flash_attention``) or, for
comparison, through ``torch.nn.functional.scaled_dot_product_attention``; both take the packed
(varlen) form the data loader produces, where no token attends across a document boundary.
With ``fused=True`` RMSNorm, RoPE and the SwiGLU gate run crucible's one-pass kernels
(``engine.ops.layers``; CPU kernels, the same torch composition elsewhere), otherwise the torch
compositions below; the two compute the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (no bias), computed in float32."""

    def __init__(self, dim: int, eps: float, fused: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.fused = fused
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            from engine.ops.layers import rms_norm

            return rms_norm(x, self.weight, self.eps)
        out = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return out.type_as(x) * self.weight


def rope_tables(head_dim: int, positions: torch.Tensor, theta: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for ``positions`` (B, T), shaped (B, T, 1, head_dim) in float32, in the
    rotate-half layout Llama (and Hugging Face's LlamaForCausalLM) uses."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                            dtype=torch.float32) / head_dim)
    freqs = positions.float()[..., None] * inv_freq            # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]    # (B, T, 1, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates (B, T, H, hd) by the tables, in float32, back to x's dtype."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).type_as(x)


def segment_mask(cu_seqlens: torch.Tensor, batch: int, seq_len: int, causal: bool,
                 window: int | None) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask of the packed layout for SDPA (True = attend)."""
    n = batch * seq_len
    tokens = torch.arange(n, device=cu_seqlens.device)
    seg = torch.searchsorted(cu_seqlens[1:].long(), tokens, right=True).view(batch, seq_len)
    mask = seg[:, :, None] == seg[:, None, :]
    i = torch.arange(seq_len, device=cu_seqlens.device)
    if causal:
        mask &= i[None, :, None] >= i[None, None, :]
    if window is not None:
        mask &= i[None, None, :] > i[None, :, None] - window
    return mask[:, None]


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE."""

    def __init__(self, config: ModelConfig, impl: str = "crucible", fused: bool = False) -> None:
        super().__init__()
        if impl not in ("crucible", "sdpa"):
            raise ValueError(f"attention impl must be 'crucible' or 'sdpa' (got {impl!r})")
        self.impl = impl
        self.fused = fused
        self.n_heads, self.n_kv_heads, self.head_dim = (config.n_heads, config.n_kv_heads,
                                                         config.head_dim)
        self.window = config.window
        kv = config.n_kv_heads * config.head_dim
        self.wq = nn.Linear(config.dim, config.dim, bias=False)
        self.wk = nn.Linear(config.dim, kv, bias=False)
        self.wv = nn.Linear(config.dim, kv, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
                ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)       # (B, T, Hq, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)    # (B, T, Hkv, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.fused:
            from engine.ops.layers import apply_rope as fused_rope

            q, k = fused_rope(q, cos, sin), fused_rope(k, cos, sin)
        else:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.impl == "crucible":
            from engine.ops.attention import flash_attention

            if cu_seqlens is not None:
                out = flash_attention(q.reshape(B * T, self.n_heads, self.head_dim),
                                      k.reshape(B * T, self.n_kv_heads, self.head_dim),
                                      v.reshape(B * T, self.n_kv_heads, self.head_dim),
                                      causal=True, cu_seqlens=cu_seqlens,
                                      max_seqlen=max_seqlen, window=self.window)
            else:
                out = flash_attention(q, k, v, causal=True, window=self.window)
        else:
            mask = None
            if cu_seqlens is not None or self.window is not None:
                cu = cu_seqlens if cu_seqlens is not None else torch.arange(
                    0, B * T + 1, T, device=x.device, dtype=torch.int32)
                mask = segment_mask(cu, B, T, True, self.window)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                is_causal=mask is None, enable_gqa=self.n_heads != self.n_kv_heads,
            ).transpose(1, 2)                                          # (B, T, Hq, hd)
        return self.wo(out.reshape(B, T, -1))


class SwiGLU(nn.Module):
    """The gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            from engine.ops.layers import swiglu

            return self.down(swiglu(self.gate(x), self.up(x)))
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, attention: str, fused: bool = False) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps, fused)
        self.attn = Attention(config, attention, fused)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps, fused)
        self.mlp = SwiGLU(config.dim, config.ffn_dim, fused)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
                ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cu_seqlens, max_seqlen)
        return x + self.mlp(self.mlp_norm(x))
