"""Flash attention: op wrappers, fake kernels, autograd, and a plain PyTorch reference.

The kernels live in ``csrc/attention/`` (CPU: packed fp32 tiles, AVX-512 GEMM and exp2, OpenMP
over (sequence, head, query tile); CUDA: bf16/fp16 tensor-core tiles with fp32 accumulation).
Both are tiled with an online softmax: the ``T x T`` score matrix is never stored, memory is
O(T), and the backward pass recomputes the scores from ``q``, ``k`` and the log-sum-exp the
forward pass returns.

Layouts (the flash-attn convention)::

    padded batch   q (B, T, Hq, D)   k, v (B, T, Hkv, D)   out like q   lse (B, Hq, T)
    packed varlen  q (N, Hq, D)      k, v (N, Hkv, D)      out like q   lse (Hq, N)
                   cu_seqlens int32 (n_seq + 1): sequence i is tokens cu_seqlens[i]:cu_seqlens[i+1]

``Hq`` must be a multiple of ``Hkv`` (grouped-query / multi-query attention: query head ``h``
reads key/value head ``h // (Hq // Hkv)``). In a packed batch no token attends across a
sequence boundary. ``lse`` is float32 (float64 for float64 inputs), natural log.

Masks, for query position ``i`` and key position ``j`` of one sequence: ``causal`` keeps
``j <= i``; ``window=w`` keeps ``j > i - w`` (at most ``w`` keys, the query's own position
included; it limits the left side only, so with ``causal=False`` every later key stays visible).
"""

from __future__ import annotations

import math

import torch

from engine.ops._library import load_library

load_library()

_forward_op = torch.ops.crucible.flash_attention_forward.default


def flash_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    window: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and the log-sum-exp of every query row (see the module docstring for
    layouts and masks). Differentiable in ``q``, ``k`` and ``v``; ``lse`` is not.

    Args:
        q, k, v: float32/bfloat16/float64 on the CPU (float16 too), bfloat16/float16 on CUDA;
            any strides.
        causal: keep only keys at or before each query's position.
        softmax_scale: multiplies ``q @ k^T`` before the softmax; default ``1 / sqrt(D)``.
        cu_seqlens: int32 offsets of the packed sequences (switches to the varlen layout), on
            the tensors' device.
        max_seqlen: the longest packed sequence; required with CUDA ``cu_seqlens`` (it sizes
            the launch without reading the offsets back), computed on the CPU when omitted.
        window: left window size (keys per query, itself included), or None.
    """
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None (got {window})")
    if softmax_scale is not None and not softmax_scale > 0:
        raise ValueError(f"softmax_scale must be positive (got {softmax_scale})")
    return _forward_op(q, k, v, cu_seqlens, int(max_seqlen or 0), float(softmax_scale or 0.0),
                       bool(causal), int(window or 0))


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Differentiable flash attention; returns ``out`` with ``q``'s shape and dtype.

    Padded batches: ``q (B, T, Hq, D)``, ``k/v (B, T, Hkv, D)``. Packed batches: ``q (N, Hq, D)``,
    ``k/v (N, Hkv, D)`` with ``cu_seqlens`` int32 ``(n_seq + 1)`` (pass ``max_seqlen`` on CUDA).
    See :func:`flash_attention_with_lse` for the arguments.
    """
    out, _ = flash_attention_with_lse(q, k, v, causal=causal, softmax_scale=softmax_scale,
                                      cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, window=window)
    return out


@torch.library.register_fake("crucible::flash_attention_forward")
def _forward_fake(q, k, v, cu_seqlens, max_seqlen, softmax_scale, causal, window):
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if cu_seqlens is None:
        lse_shape = (q.shape[0], q.shape[2], q.shape[1])
    else:
        lse_shape = (q.shape[1], q.shape[0])
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=lse_dtype)


@torch.library.register_fake("crucible::flash_attention_backward")
def _backward_fake(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, softmax_scale, causal,
                   window):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# Autograd (backward = flash_attention_backward) is registered in C++:
# csrc/attention/flash_attention_autograd.cpp.


def _visible(t: int, causal: bool, window: int | None, device: torch.device) -> torch.Tensor:
    """(T, T) boolean mask of the keys each query may attend to."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    keep = torch.ones(t, t, dtype=torch.bool, device=device)
    if causal:
        keep &= j <= i
    if window is not None:
        keep &= j > i - window
    return keep


def _reference_padded(q, k, v, causal, scale, window):
    group = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) * scale  # (B, H, T, T)
    keep = _visible(q.shape[1], causal, window, q.device)
    scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores.float() if scores.dtype != torch.float64 else scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhts,bshd->bthd", probs, v), lse


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    window: int | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch attention with :func:`flash_attention`'s signature and layouts: it builds
    the full score matrix in the inputs' dtype (the test oracle, not a fast path).

    With ``return_lse`` it also returns the log-sum-exp in :func:`flash_attention_with_lse`'s
    layout. ``max_seqlen`` is accepted for signature compatibility and unused.
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if cu_seqlens is None:
        out, lse = _reference_padded(q, k, v, causal, scale, window)
    else:
        bounds = cu_seqlens.tolist()
        outs, lses = [], []
        for start, end in zip(bounds[:-1], bounds[1:]):
            o, s = _reference_padded(q[None, start:end], k[None, start:end], v[None, start:end],
                                     causal, scale, window)
            outs.append(o[0])
            lses.append(s[0])
        out = torch.cat(outs) if outs else q.new_empty(q.shape)
        lse = torch.cat(lses, dim=-1) if lses else q.new_empty((q.shape[1], 0))
    return (out, lse) if return_lse else out
