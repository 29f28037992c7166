"""Autoregressive generation with a KV cache, for left-padded batches of prompts.

The model's own ``forward`` serves training (packed sequences, fused attention); decoding one
token at a time against cached keys and values needs a different attention shape, so this
module walks the same layers with ``scaled_dot_product_attention`` over the cache. Left padding
is handled with per-row positions (RoPE sees each prompt from position 0) and a key mask, so a
padded row generates exactly what it would alone (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.model.layers import apply_rope, rope_tables
from engine.model.transformer import Transformer


@dataclass
class Generation:
    """Generated continuations of a batch of prompts."""

    sequences: torch.Tensor       # (B, P + N) left-padded prompt + generated tokens
    prompt_length: int            # P: generated tokens start here
    attention_mask: torch.Tensor  # (B, P + N) 1 for real tokens (prompt and generated)
    logprobs: torch.Tensor        # (B, N) log-prob of each generated token under the sampler


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (B, max prompt length), prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def _step(model: Transformer, ids: torch.Tensor, positions: torch.Tensor,
          key_mask: torch.Tensor, cache: list[list[torch.Tensor]]) -> torch.Tensor:
    """Runs ``ids`` (B, S) at ``positions`` through every layer, appending their keys and
    values to ``cache``; returns the last position's logits (B, vocab)."""
    return model.output(model.norm(_hidden(model, ids, positions, key_mask, cache)[:, -1]))


def _step_all(model: Transformer, ids: torch.Tensor, positions: torch.Tensor,
              key_mask: torch.Tensor) -> torch.Tensor:
    """Logits (B, S, vocab) of a whole left-padded batch, differentiable (PPO's forward)."""
    cache: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    return model.output(model.norm(_hidden(model, ids, positions, key_mask, cache)))


def _hidden(model: Transformer, ids: torch.Tensor, positions: torch.Tensor,
            key_mask: torch.Tensor, cache: list[list[torch.Tensor]]) -> torch.Tensor:
    """The final hidden states (B, S, dim) before the norm; fills ``cache``."""
    cfg = model.config
    B, S = ids.shape
    cos, sin = rope_tables(cfg.head_dim, positions, cfg.rope_theta)
    x = model.embed(ids)
    total = key_mask.shape[1]
    causal = torch.ones(S, total, dtype=torch.bool, device=ids.device).tril(total - S)
    mask = causal[None, None] & key_mask[:, None, None, :].bool()      # (B, 1, S, total)
    # a pad query would see no key at all (NaN in SDPA): let every query see itself
    own = torch.zeros(S, total, dtype=torch.bool, device=ids.device)
    own[torch.arange(S), torch.arange(total - S, total)] = True
    mask = mask | own[None, None]
    if cfg.window is not None:
        i = torch.arange(total - S, total, device=ids.device)[:, None]
        j = torch.arange(total, device=ids.device)[None, :]
        mask = mask & (j > i - cfg.window)[None, None]
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        h = block.attn_norm(x)
        q = apply_rope(attn.wq(h).view(B, S, attn.n_heads, attn.head_dim), cos, sin)
        k = apply_rope(attn.wk(h).view(B, S, attn.n_kv_heads, attn.head_dim), cos, sin)
        v = attn.wv(h).view(B, S, attn.n_kv_heads, attn.head_dim)
        if cache[layer]:
            k = torch.cat([cache[layer][0], k], dim=1)
            v = torch.cat([cache[layer][1], v], dim=1)
        cache[layer] = [k, v]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            enable_gqa=attn.n_heads != attn.n_kv_heads).transpose(1, 2)
        x = x + attn.wo(out.reshape(B, S, -1))
        x = x + block.mlp(block.mlp_norm(x))
    return x


@torch.no_grad()
def generate(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int,
             pad_id: int, eos_id: int | None = None, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None
             ) -> Generation:
    """Samples up to ``max_new_tokens`` per prompt (greedy when ``temperature`` is 0). Rows
    that emit ``eos_id`` stop: later positions hold ``pad_id`` with mask 0 and log-prob 0."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    B, P = ids.shape
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    logits = _step(model, ids, positions, mask, cache)
    next_pos = positions[:, -1:] + 1
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out_ids, out_mask, out_lp = [], [], []
    for _ in range(max_new_tokens):
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if temperature == 0:
            token = logprobs.argmax(-1)
        else:
            scaled = logits.float() / temperature
            if top_k is not None:
                kth = scaled.topk(top_k, dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            token = torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator)[:, 0]
            logprobs = torch.log_softmax(scaled, dim=-1)
        alive = ~done
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        out_ids.append(token)
        out_mask.append(alive.long())
        out_lp.append(torch.where(alive, logprobs.gather(1, token[:, None])[:, 0],
                                  torch.zeros_like(token, dtype=torch.float)))
        if eos_id is not None:
            done = done | (token == eos_id)
        if bool(done.all()):
            break
        mask = torch.cat([mask, alive.long()[:, None]], dim=1)
        logits = _step(model, token[:, None], next_pos, mask, cache)
        next_pos = next_pos + 1
    gen = torch.stack(out_ids, 1)
    return Generation(sequences=torch.cat([ids, gen], 1), prompt_length=P,
                      attention_mask=torch.cat([mask[:, :P], torch.stack(out_mask, 1)], 1),
                      logprobs=torch.stack(out_lp, 1))
