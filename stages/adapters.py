"""Bottleneck adapters and prefix tuning: the two parameter-efficient alternatives to LoRA.

* **Bottleneck** (Houlsby et al. 2019): after a block's attention and/or MLP, ``h + up(gelu(
  down(h)))`` with ``down`` (dim → r) and ``up`` (r → dim); ``up`` starts at zero, so a fresh
  adapter leaves the model's output unchanged.
* **Prefix tuning** (Li & Liang 2021): every layer gets ``length`` learned key/value vectors
  that every query attends to, before its own (causal, per-document) keys. With packed rows
  each document sees the prefix and nothing of the other documents.

Both freeze every base weight; only the adapters train. :func:`adapter_state` /
:func:`save_adapters` keep just the adapter tensors (safetensors + ``adapters.json``), and
:func:`remove_adapters` restores the plain model (so it exports to the HF layout unchanged).
Unlike LoRA these do not merge into the base weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.layers import apply_rope, segment_mask

ADAPTERS_CONFIG = "adapters.json"
ADAPTERS_WEIGHTS = "adapters.safetensors"


@dataclass
class BottleneckConfig:
    """Houlsby-style bottleneck adapters."""

    r: int = 16
    """Bottleneck width."""
    where: tuple[str, ...] = ("attn", "mlp")
    """After which sub-layers of every block: ``attn``, ``mlp`` or both."""

    def __post_init__(self) -> None:
        self.where = tuple(self.where)
        if self.r < 1 or not self.where or set(self.where) - {"attn", "mlp"}:
            raise ValueError("BottleneckConfig: r >= 1 and where a subset of (attn, mlp)")


@dataclass
class PrefixConfig:
    """Prefix tuning."""

    length: int = 8
    """Learned key/value vectors per layer."""
    init_std: float = 0.02
    """Std of their normal init."""

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"PrefixConfig.length must be >= 1 (got {self.length})")


class Bottleneck(nn.Module):
    """``inner``'s output plus a zero-initialised bottleneck of it."""

    def __init__(self, inner: nn.Module, dim: int, r: int) -> None:
        super().__init__()
        self.inner = inner
        self.down = nn.Linear(dim, r)
        self.up = nn.Linear(r, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.inner(x, *args, **kwargs)
        return h + self.up(F.gelu(self.down(h)))


class PrefixAttention(nn.Module):
    """The block's attention with learned prefix keys/values (SDPA with an explicit mask)."""

    def __init__(self, attn: nn.Module, config: PrefixConfig) -> None:
        super().__init__()
        self.attn = attn
        shape = (config.length, attn.n_kv_heads, attn.head_dim)
        self.prefix_k = nn.Parameter(torch.randn(shape) * config.init_std)
        self.prefix_v = nn.Parameter(torch.randn(shape) * config.init_std)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
                ) -> torch.Tensor:
        a = self.attn
        B, T, _ = x.shape
        P = self.prefix_k.shape[0]
        q = apply_rope(a.wq(x).view(B, T, a.n_heads, a.head_dim), cos, sin)
        k = apply_rope(a.wk(x).view(B, T, a.n_kv_heads, a.head_dim), cos, sin)
        v = a.wv(x).view(B, T, a.n_kv_heads, a.head_dim)
        k = torch.cat([self.prefix_k.to(k.dtype).expand(B, -1, -1, -1), k], dim=1)
        v = torch.cat([self.prefix_v.to(v.dtype).expand(B, -1, -1, -1), v], dim=1)
        cu = cu_seqlens if cu_seqlens is not None else torch.arange(
            0, B * T + 1, T, device=x.device, dtype=torch.int32)
        own = segment_mask(cu, B, T, True, a.window)                       # (B, 1, T, T)
        mask = torch.cat([own.new_ones(B, 1, T, P), own], dim=-1)           # prefix: visible
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            enable_gqa=a.n_heads != a.n_kv_heads).transpose(1, 2)
        return a.wo(out.reshape(B, T, -1))


def _freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def apply_bottleneck(model: nn.Module, config: BottleneckConfig) -> list[nn.Parameter]:
    """Freezes ``model`` and wraps each block's chosen sub-layers; returns the new parameters."""
    _freeze(model)
    dim = model.config.dim
    for block in model.blocks:
        for name in config.where:
            setattr(block, name, Bottleneck(getattr(block, name), dim, config.r).to(
                model.embed.weight.device))
    model.adapter_config = {"kind": "bottleneck", **asdict(config)}
    return [p for p in model.parameters() if p.requires_grad]


def apply_prefix(model: nn.Module, config: PrefixConfig) -> list[nn.Parameter]:
    """Freezes ``model`` and gives every block's attention a learned prefix."""
    _freeze(model)
    for block in model.blocks:
        block.attn = PrefixAttention(block.attn, config).to(model.embed.weight.device)
    model.adapter_config = {"kind": "prefix", **asdict(config)}
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only, by their names in the adapted model."""
    return {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}


def save_adapters(model: nn.Module, out_dir: str | Path) -> Path:
    """Writes ``adapters.safetensors`` and ``adapters.json`` (kind and config)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter_state(model).items()},
              str(out / ADAPTERS_WEIGHTS))
    (out / ADAPTERS_CONFIG).write_text(json.dumps(model.adapter_config, indent=1) + "\n")
    return out


def remove_adapters(model: nn.Module) -> nn.Module:
    """Unwraps every adapter: the model is the base model again (weights unfrozen)."""
    for block in model.blocks:
        for name in ("attn", "mlp"):
            module = getattr(block, name)
            if isinstance(module, Bottleneck):
                module = module.inner
            if isinstance(module, PrefixAttention):
                module = module.attn
            setattr(block, name, module)
    for p in model.parameters():
        p.requires_grad_(True)
    model.__dict__.pop("adapter_config", None)
    return model
