"""Fused decoder layers: RMSNorm, rotary embeddings, SwiGLU. Op wrappers, fake kernels, autograd,
and the plain PyTorch compositions they replace.

Why these exist: in eager mode each of these layers is 5-15 separate ATen ops per step (casts to
float32 and back, a reduction, several muls, a ``cat``, the activation and its backward), each
one a full read and write of the activations. The CPU kernels in ``csrc/layers/`` make one pass
over memory per forward and per backward (OpenMP over rows, SIMD over features, fp32 math for
bfloat16 storage); their autograd is registered in C++ (csrc/layers/fused_layers_autograd.cpp:
a Python autograd wrapper costs more than these kernels at small sizes). Only CPU kernels are
written: on any other device the public functions run the torch composition (``*_reference``),
which ``torch.compile``/inductor fuses on CUDA; no CUDA kernel is claimed.

Semantics, equal to ``engine.model.layers`` (the one exception: float64 inputs are computed in
float64 instead of being rounded through float32)::

    rms_norm(x, w, eps)    F.rms_norm(x.float(), (D,), eps=eps).type_as(x) * w
                           dtype torch.result_type(x, w); rstd per row kept for the backward
    apply_rope(x, cos, sin)
                           (x.float() * cos + rotate_half(x.float()) * sin).type_as(x),
                           x (B, T, H, D), cos/sin (B, T, 1, D) float32 (rotate-half layout)
    swiglu(gate, up)       F.silu(gate) * up, computed in float32 and rounded once
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.ops._library import load_library

load_library()

_rms_norm_forward_op = torch.ops.crucible.rms_norm_forward.default
_rope_forward_op = torch.ops.crucible.rope_forward.default
_swiglu_forward_op = torch.ops.crucible.swiglu_forward.default

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def _on_cpu(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


def _compute(x: torch.Tensor) -> torch.Tensor:
    """x in the dtype the layers compute in: float32, or float64 for float64 x."""
    return x if x.dtype == torch.float64 else x.float()


# ---- RMSNorm ----

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Root-mean-square norm over the last dimension with a learned scale (no bias).

    Normalises in float32 (float64 for float64 ``x``), rounds to ``x``'s dtype, then multiplies
    by ``weight``; the result has ``torch.result_type(x, weight)``. Differentiable in ``x`` and
    ``weight`` (``grad_weight`` is summed over all rows in fp32, deterministic for a given
    thread count).

    Args:
        x: (..., D), any strides.
        weight: (D,).
        eps: added to the mean square before the square root.

    On the CPU with float32/bfloat16 ``x`` and ``weight`` (any mix) or both float64 this is one
    fused kernel per pass; anywhere else it runs :func:`rms_norm_reference`.
    """
    kernel_dtypes = (x.dtype == torch.float64) == (weight.dtype == torch.float64)
    if (_on_cpu(x, weight) and x.dtype in _KERNEL_DTYPES and weight.dtype in _KERNEL_DTYPES
            and kernel_dtypes):
        return _rms_norm_forward_op(x, weight, float(eps))[0]
    return rms_norm_reference(x, weight, eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`rms_norm` as torch ops (``engine.model.layers.RMSNorm``'s composition)."""
    return F.rms_norm(_compute(x), (x.shape[-1],), eps=eps).type_as(x) * weight


@torch.library.register_fake("crucible::rms_norm_forward")
def _rms_norm_forward_fake(x, weight, eps):
    stat = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.new_empty(x.shape, dtype=torch.result_type(x, weight)),
            x.new_empty(x.shape[:-1], dtype=stat))


@torch.library.register_fake("crucible::rms_norm_backward")
def _rms_norm_backward_fake(grad_y, x, weight, rstd):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)



# ---- RoPE ----

def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding in the rotate-half layout (Llama, Hugging Face).

    ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])``,
    computed in float32 (float64 for float64 ``x``) and returned in ``x``'s dtype.
    Differentiable in ``x``.

    Args:
        x: (B, T, H, D) with D even, any strides.
        cos, sin: (B, T, 1, D) float32 tables as ``engine.model.layers.rope_tables`` returns them;
            size 1 (or an ``expand()``-ed view) in the first two dimensions broadcasts.

    On the CPU (float32/bfloat16/float64 ``x``, tables that do not require grad) this is one
    fused kernel per pass, bit-identical to the composition; anywhere else it runs
    :func:`apply_rope_reference`.
    """
    table_ok = cos.dtype == sin.dtype and (
        cos.dtype == torch.float32 or (cos.dtype == torch.float64 and x.dtype == torch.float64))
    if (_on_cpu(x, cos, sin) and x.dtype in _KERNEL_DTYPES and table_ok
            and not (cos.requires_grad or sin.requires_grad)):
        return _rope_forward_op(x, cos, sin)
    return apply_rope_reference(x, cos, sin)


def apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` as torch ops (``engine.model.layers.apply_rope``'s composition)."""
    xf = _compute(x)
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).type_as(x)


@torch.library.register_fake("crucible::rope_forward")
def _rope_forward_fake(x, cos, sin):
    return x.new_empty(x.shape)


@torch.library.register_fake("crucible::rope_backward")
def _rope_backward_fake(grad_y, cos, sin):
    return grad_y.new_empty(grad_y.shape)



# ---- SwiGLU ----

def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The SwiGLU gate ``silu(gate) * up`` of two projections of one shape and dtype.

    Computed in float32 (float64 for float64) and rounded once to the inputs' dtype.
    Differentiable in ``gate`` and ``up`` (which may be the same tensor, or views of one).

    On the CPU with float32/bfloat16/float64 inputs of one dtype this is one fused kernel per
    pass; anywhere else it runs :func:`swiglu_reference`.
    """
    if _on_cpu(gate, up) and gate.dtype in _KERNEL_DTYPES and gate.dtype == up.dtype:
        return _swiglu_forward_op(gate, up)
    return swiglu_reference(gate, up)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """:func:`swiglu` as torch ops (``engine.model.layers.SwiGLU``'s composition)."""
    return F.silu(gate) * up


@torch.library.register_fake("crucible::swiglu_forward")
def _swiglu_forward_fake(gate, up):
    return gate.new_empty(gate.shape)


@torch.library.register_fake("crucible::swiglu_backward")
def _swiglu_backward_fake(grad, gate, up):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)

