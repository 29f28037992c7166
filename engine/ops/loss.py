"""Linear + cross-entropy without the logits: the output projection and the softmax loss fused
chunk by chunk.

A language model's last step, ``cross_entropy(hidden @ weight.T, target)``, normally writes a
``(tokens x vocab)`` logits tensor, a log-softmax of the same size, a zero-filled gradient of
the same size and the log-softmax backward — five passes over the largest tensor of the step
and, at a 128k vocabulary, most of its activation memory. Here the rows go through in chunks:
each chunk's logits are computed by one matmul, turned in place into the gradient of the loss
(``softmax - onehot``, by ``crucible::cross_entropy_rows_`` on the CPU) while still in cache,
and immediately multiplied into the gradients of ``hidden`` and ``weight``. The backward pass
only scales those by the incoming gradient. Memory beyond the inputs and their gradients is
one chunk of logits.

The per-chunk math runs in our C++ kernel on the CPU; on other devices the same chunked
algorithm runs with torch ops (the memory saving holds, the in-place kernel is CPU-only).
"""

from __future__ import annotations

import threading

import torch

from engine.ops._library import load_library

load_library()

_rows_op = torch.ops.crucible.cross_entropy_rows_.default

#: Target value whose row contributes no loss (torch's default ``ignore_index``).
IGNORE_INDEX = -100


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: about 16 MiB of float32 logits (at least 256 rows, so the matmuls stay
    efficient). Measured on the CPU bench shapes, time is flat from 512 to 2048 rows at an 8k
    vocabulary and grows below 256; memory is one chunk instead of all the logits."""
    return max(256, min(8192, (1 << 22) // max(1, vocab_size)))


def cross_entropy_rows_reference(logits: torch.Tensor, target: torch.Tensor,
                                 ignore_index: int, grad_scale: float, compute_grad: bool
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain PyTorch version of ``crucible::cross_entropy_rows_`` (not in place): per-row loss
    (float32, float64 for float64) and the gradient ``grad_scale * (softmax - onehot)`` in the
    logits' dtype (zero rows where ``target == ignore_index``), or None."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(acc)
    keep = target != ignore_index
    safe = torch.where(keep, target, torch.zeros_like(target))
    lse = torch.logsumexp(x, dim=-1)
    loss = torch.where(keep, lse - x.gather(1, safe[:, None]).squeeze(1), torch.zeros_like(lse))
    if not compute_grad:
        return loss, None
    grad = torch.softmax(x, dim=-1)
    grad[torch.arange(len(target), device=x.device), safe] -= 1.0
    grad = grad * (grad_scale * keep.to(acc))[:, None]
    return loss, grad.to(logits.dtype)


_scratch = threading.local()


def _chunk_buffer(rows: int, cols: int, dtype: torch.dtype, device: torch.device
                  ) -> torch.Tensor:
    """A (rows, cols) scratch matrix for one chunk's logits, kept per thread, dtype and device
    and reused across calls: a fresh multi-MiB buffer per step costs page faults on every
    call (measured: the logits matmul of the tiny config ran at half speed into new memory).
    The op is the only user and never returns a view of it."""
    cache = getattr(_scratch, "buffers", None)
    if cache is None:
        cache = _scratch.buffers = {}
    key = (dtype, device)
    buf = cache.get(key)
    if buf is None or buf.numel() < rows * cols:
        buf = cache[key] = torch.empty(rows * cols, dtype=dtype, device=device)
    return buf[:rows * cols].view(rows, cols)


@torch.library.register_fake("crucible::cross_entropy_rows_")
def _(logits, target, ignore_index, grad_scale, compute_grad):
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty(logits.shape[0], dtype=acc)


def _rows(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, grad_scale: float,
          compute_grad: bool) -> torch.Tensor:
    """Per-row loss of a chunk; with ``compute_grad`` the chunk holds its gradient after."""
    if logits.device.type == "cpu":
        return _rows_op(logits, target, ignore_index, grad_scale, compute_grad)
    loss, grad = cross_entropy_rows_reference(logits, target, ignore_index, grad_scale,
                                              compute_grad)
    if grad is not None:
        logits.copy_(grad)
    return loss


@torch.library.custom_op("crucible::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                          ignore_index: int, scale: float, chunk_rows: int, compute_grad: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_hidden, grad_weight) of ``scale * sum(cross_entropy(hidden @ weight.T,
    target))`` over the non-ignored rows; the gradients are empty without ``compute_grad``.
    hidden (N, D) and weight (V, D) share one dtype; loss is float32 (float64 for float64);
    the gradients come in the inputs' dtype."""
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    n = hidden.shape[0]
    total = torch.zeros((), dtype=acc, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if compute_grad else hidden.new_empty(0)
    grad_weight = (torch.zeros(weight.shape, dtype=acc, device=weight.device) if compute_grad
                   else weight.new_empty(0))
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, n, chunk_rows):
            h = hidden[start:start + chunk_rows]
            logits = _chunk_buffer(h.shape[0], weight.shape[0], h.dtype, h.device)
            torch.mm(h, weight.T, out=logits)                      # (rows, V)
            total += _rows(logits, target[start:start + chunk_rows], ignore_index, scale,
                           compute_grad).sum()
            if compute_grad:                                       # logits now hold dL/dlogits
                torch.mm(logits, weight, out=grad_hidden[start:start + chunk_rows])
                if grad_weight.dtype == logits.dtype:
                    grad_weight.addmm_(logits.T, h)
                else:                                              # low precision: sum in fp32
                    grad_weight += (logits.T @ h).to(acc)
    return total * scale, grad_hidden, grad_weight.to(weight.dtype)


@_linear_cross_entropy.register_fake
def _(hidden, weight, target, ignore_index, scale, chunk_rows, compute_grad):
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    loss = hidden.new_empty((), dtype=acc)
    if not compute_grad:
        return loss, hidden.new_empty(0), weight.new_empty(0)
    return loss, torch.empty_like(hidden), torch.empty_like(weight)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward returns the loss and keeps the gradients the op computed alongside it; backward
    scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, target, ignore_index, scale, chunk_rows, compute_grad):
        loss, grad_hidden, grad_weight = _linear_cross_entropy(
            hidden, weight, target, ignore_index, scale, chunk_rows, compute_grad)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        # Scaled into new tensors (not in place) so that a second backward through the same
        # graph (retain_graph, gradcheck, Jacobians) gets the same gradients.
        grad_hidden, grad_weight = ctx.saved_tensors
        g_h = grad_hidden * grad_loss.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        g_w = grad_weight * grad_loss.to(grad_weight.dtype) if ctx.needs_input_grad[1] else None
        return g_h, g_w, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *,
                         ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
                         chunk_rows: int | None = None) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, target)`` without materialising the logits.

    Args:
        hidden: (..., D) final hidden states (float32/bfloat16/float64).
        weight: (V, D) output projection (the tied embedding for tied models).
        target: (...) int64 token ids; rows equal to ``ignore_index`` add no loss.
        ignore_index: the label of positions without a loss (default -100).
        reduction: ``"mean"`` over the non-ignored rows (0 when there are none; counting them
            reads a value back to the host) or ``"sum"``.
        chunk_rows: rows per chunk; default about 16 MiB of float32 logits.

    Returns:
        The loss, a float32 scalar (float64 for float64 inputs). Under autocast the matmuls run
        in the autocast dtype (as ``nn.Linear`` would) and the softmax in float32.

    Raises:
        ValueError: on mismatched shapes or an unknown reduction.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' (got {reduction!r})")
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not "
                         "match: weight must be (vocab, hidden_dim)")
    if hidden.shape[:-1] != target.shape:
        raise ValueError(f"target {tuple(target.shape)} must have hidden's leading shape "
                         f"{tuple(hidden.shape[:-1])}")
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    target = target.reshape(-1).long()
    if reduction == "mean":
        scale = 1.0 / max(1, int((target != ignore_index).sum()))
    else:
        scale = 1.0
    chunk = chunk_rows or default_chunk_rows(weight.shape[0])
    compute_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, target, int(ignore_index), float(scale),
                                     int(chunk), bool(compute_grad))
