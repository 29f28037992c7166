"""The weight-gradient half of a split backward (zero-bubble pipelines' W), computed from what
the input-gradient half (I) already produced, without a second pass through the graph.

During the forward, each weight layer's input X is kept and a hook on its output records the
output gradient dY when I runs ``autograd.grad`` w.r.t. the stage input (which computes no
weight gradient). W then needs one product per layer: ``dW = dY^T X`` for a bias-free Linear,
``dw = sum(dY * rms_norm(X))`` for RMSNorm. Stages with other parameters keep the autograd
graph from I and ask it for the weight gradients instead (``WeightGradCapture.supports``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.layers import RMSNorm


class WeightGradCapture:
    """Records, for one micro-batch of one stage, each weight layer's input and output
    gradient; ``apply()`` accumulates the weight gradients into ``.grad``."""

    def __init__(self) -> None:
        self.records: list[list] = []  # [module, X, dY]

    @staticmethod
    def supports(stage: nn.Module) -> bool:
        """True when every parameter of ``stage`` is a bias-free Linear's or an RMSNorm's
        weight, each used once per forward (the Transformer's blocks, norm and output)."""
        owned = set()
        for module in stage.modules():
            if isinstance(module, nn.Linear) and module.bias is None or isinstance(module,
                                                                                  RMSNorm):
                owned.add(id(module.weight))
        return all(id(p) in owned for p in stage.parameters())

    @contextmanager
    def recording(self, stage: nn.Module):
        """Hooks ``stage``'s weight layers for the forward run inside the block."""
        def hook(module, args, output):
            if not output.requires_grad:
                return
            record = [module, args[0].detach(), None]
            output.register_hook(lambda grad: record.__setitem__(2, grad))
            self.records.append(record)

        handles = [m.register_forward_hook(hook) for m in stage.modules()
                   if isinstance(m, (nn.Linear, RMSNorm))]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def apply(self) -> None:
        """Adds each recorded layer's weight gradient to its ``.grad``."""
        for module, x, dy in self.records:
            if dy is None:
                raise RuntimeError(f"no output gradient was recorded for {module}: run the "
                                   "input-gradient backward (I) before W")
            if isinstance(module, nn.Linear):
                grad = dy.reshape(-1, dy.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
            else:
                normed = F.rms_norm(x.float(), (x.shape[-1],), eps=module.eps).type_as(x)
                grad = (dy * normed).reshape(-1, dy.shape[-1]).sum(0)
            w = module.weight
            w.grad = grad if w.grad is None else w.grad.add_(grad)
        self.records.clear()


def autograd_weight_grads(output: torch.Tensor, grad_output: torch.Tensor | None,
                          stage: nn.Module) -> None:
    """W through the autograd graph that I kept (``retain_graph=True``): the general path."""
    params = [p for p in stage.parameters() if p.requires_grad]
    grads = torch.autograd.grad(output, params, grad_output, allow_unused=True)
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad.add_(g)
