"""The model config: one typed dataclass, presets, and the parameter and FLOP counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass
class ModelConfig:
    """A Llama-style decoder: RMSNorm, RoPE, SwiGLU MLP, grouped-query attention."""

    vocab_size: int = 8192
    """Embedding rows and logits; round up to a multiple of 64 for fast matmuls."""
    dim: int = 256
    """Model width (residual stream)."""
    n_layers: int = 4
    """Transformer blocks."""
    n_heads: int = 4
    """Query heads; head dim = dim / n_heads."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None means n_heads (multi-head), 1 is MQA."""
    ffn_dim: int | None = None
    """SwiGLU hidden width; None gives Llama's 8/3 * dim rounded up to ``multiple_of``."""
    multiple_of: int = 64
    """Rounding of the default ffn_dim."""
    max_seq_len: int = 1024
    """Longest sequence the RoPE tables and exports are sized for."""
    rope_theta: float = 10000.0
    """RoPE base."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the input embedding and the output projection."""
    init_std: float = 0.02
    """Std of the normal init; output projections of each block are scaled by 1/sqrt(2 n_layers)."""
    window: int | None = None
    """Sliding-window attention size (keys per query), or None for full causal attention."""

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1 (got {getattr(self, name)})")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads "
                             f"{self.n_kv_heads} (grouped-query attention shares each KV head "
                             "among a whole number of query heads)")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for RoPE")
        if self.ffn_dim is None:
            hidden = int(8 * self.dim / 3)
            self.ffn_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 or None (got {self.window})")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        """Plain dict (JSON-able) of every field."""
        return asdict(self)


PRESETS: dict[str, ModelConfig] = {
    # CPU tests: a few hundred thousand parameters.
    "tiny": ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        max_seq_len=128),
    # nanoGPT's CPU "baby" Shakespeare config (4 layers, 4 heads, 128 wide, 64-token context).
    "baby": ModelConfig(vocab_size=65, dim=128, n_layers=4, n_heads=4, max_seq_len=64),
    # GPT-2 small's shape (124M with its 50257 vocabulary) in the Llama layout.
    "gpt2-124m": ModelConfig(vocab_size=50304, dim=768, n_layers=12, n_heads=12,
                             ffn_dim=2048, max_seq_len=1024, tie_embeddings=True),
    # Llama-3.2-1B's shape.
    "llama-1b": ModelConfig(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                            ffn_dim=8192, max_seq_len=8192, rope_theta=500000.0,
                            tie_embeddings=True),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A copy of preset ``name`` with fields overridden."""
    if name not in PRESETS:
        raise KeyError(f"no model preset {name!r} (presets: {', '.join(PRESETS)})")
    return replace(PRESETS[name], **overrides)


def count_params(config: ModelConfig, *, embeddings: bool = True) -> int:
    """Parameters of the model (the output projection counted once when tied)."""
    d, kv = config.dim, config.n_kv_heads * config.head_dim
    attn = d * d + 2 * d * kv + d * d
    mlp = 3 * d * config.ffn_dim
    per_layer = attn + mlp + 2 * d
    total = config.n_layers * per_layer + d
    emb = config.vocab_size * d
    if embeddings:
        total += emb if config.tie_embeddings else 2 * emb
    elif not config.tie_embeddings:
        total += emb  # the output projection is a matmul, not a lookup
    return total


def keys_per_query(seq_len: int, *, causal: bool = True, window: int | None = None) -> float:
    """Average number of keys one query attends to in a sequence of ``seq_len`` tokens."""
    t = seq_len
    if not causal:
        if window is None or window >= t:
            return float(t)
        # left window only: query i sees keys max(0, i - w + 1) .. t - 1
        return sum(t - max(0, i - window + 1) for i in range(t)) / t
    w = t if window is None else min(window, t)
    return (w * (w + 1) / 2 + (t - w) * w) / t


def flops_per_token(config: ModelConfig, seq_len: int, *, causal: bool = True,
                    training: bool = True) -> float:
    """FLOPs to process one token at context ``seq_len``: 2 per multiply-add of every matmul
    (the output projection included, the embedding lookup not) plus attention's ``q k^T`` and
    ``p v`` products over the keys each query really sees (causal: about half; sliding window:
    at most ``window``); x3 for forward + backward when ``training``."""
    d, kv = config.dim, config.n_kv_heads * config.head_dim
    matmul = config.n_layers * (2 * d * d + 2 * d * kv + 3 * d * config.ffn_dim)
    matmul += config.vocab_size * d
    keys = keys_per_query(seq_len, causal=causal, window=config.window)
    attention = config.n_layers * 2 * keys * d
    forward = 2 * (matmul + attention)
    return 3 * forward if training else forward
