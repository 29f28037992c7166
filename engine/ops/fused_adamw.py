"""Fused AdamW step and global gradient norm: op wrappers, fake kernels, PyTorch references.

The kernels live in ``csrc/optim/`` (CPU: OpenMP threads + AVX-512/AVX2 SIMD; CUDA:
multi-tensor apply). One ``fused_adamw_`` call updates a whole list of parameters in one pass
over memory; ``grad_scale`` multiplies every gradient as it is read, which is how
``FusedAdamW`` folds gradient clipping into the update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from engine.ops._library import load_library

load_library()

_adamw_op = torch.ops.crucible.fused_adamw_.default
_norm_op = torch.ops.crucible.total_norm.default


def fused_adamw_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    max_exp_avg_sqs: Sequence[torch.Tensor] = (),
    master_params: Sequence[torch.Tensor] = (),
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool = False,
    maximize: bool = False,
    grad_scale: torch.Tensor | None = None,
) -> None:
    """One AdamW step, in place, over lists of tensors on one device.

    Args:
        params: float32 or bfloat16 parameters, updated in place.
        grads: their gradients (same dtype and layout as each parameter).
        exp_avgs, exp_avg_sqs: float32 first and second moments, updated in place.
        state_steps: one-element float32 CPU step counters, one per parameter (the tensors of
            ``torch.optim.AdamW``'s ``state["step"]``); each is incremented, then used for its
            tensor's bias correction.
        max_exp_avg_sqs: float32 running maxima of the second moment (only when ``amsgrad``).
        master_params: optional float32 master copies of bfloat16 params; when given they are
            the source of truth and each param receives the bf16 rounding of its master.
        lr, beta1, beta2, weight_decay, eps: AdamW hyper-parameters (decoupled weight decay).
        amsgrad, maximize: as in ``torch.optim.AdamW``.
        grad_scale: optional one-element float32 tensor on the params' device multiplying every
            gradient (the clip coefficient); read on the device, so no host sync on CUDA.
    """
    _adamw_op(
        list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(max_exp_avg_sqs),
        list(master_params), list(state_steps), float(lr), float(beta1), float(beta2),
        float(weight_decay), float(eps), bool(amsgrad), bool(maximize), grad_scale,
    )


def total_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of float32/bfloat16 tensors on one device, as a 0-dim float32 tensor.

    One reduction pass over memory (sums of squares accumulated in fp32 lanes, then double),
    deterministic for a given thread count. An empty list gives ``tensor(0.)`` on the CPU.
    """
    tensors = list(tensors)
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    return _norm_op(tensors)


@torch.library.register_fake("crucible::fused_adamw_")
def _fused_adamw_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params,
                      state_steps, lr, beta1, beta2, weight_decay, eps, amsgrad, maximize,
                      grad_scale):
    return None


@torch.library.register_fake("crucible::total_norm")
def _total_norm_fake(tensors):
    return tensors[0].new_empty((), dtype=torch.float32)


@torch.no_grad()
def fused_adamw_reference_(
    params, grads, exp_avgs, exp_avg_sqs, state_steps, *, max_exp_avg_sqs=(), master_params=(),
    lr, beta1, beta2, weight_decay, eps, amsgrad=False, maximize=False, grad_scale=None,
) -> None:
    """Plain PyTorch version of :func:`fused_adamw_`, op for op as ``torch.optim.AdamW``
    (foreach=False) with fp32 math and state; the kernels are tested against it."""
    for i, param in enumerate(params):
        state_steps[i] += 1
        step = state_steps[i].item()
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        step_size = lr / bias_correction1
        grad = grads[i].float()
        if grad_scale is not None:
            grad = grad * grad_scale
        if maximize:
            grad = -grad
        weights = master_params[i] if master_params else param.float()
        weights = weights * (1 - lr * weight_decay)
        exp_avgs[i].lerp_(grad, 1 - beta1)
        exp_avg_sqs[i].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        second = exp_avg_sqs[i]
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sqs[i], out=max_exp_avg_sqs[i])
            second = max_exp_avg_sqs[i]
        denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
        weights = weights.addcdiv(exp_avgs[i], denom, value=-step_size)
        if master_params:
            master_params[i].copy_(weights)
        param.copy_(weights)


def total_norm_reference(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm computed in float64 by plain PyTorch (the test oracle)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    squares = sum(t.double().square().sum() for t in tensors)
    return squares.sqrt().float()
