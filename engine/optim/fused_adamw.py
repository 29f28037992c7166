"""FusedAdamW: torch.optim.AdamW's interface with a one-pass fused update and folded clipping.

A drop-in for ``torch.optim.AdamW``: same constructor, param-group keys and ``state_dict()``
layout, so a state dict saved by either optimizer loads into the other and training continues
identically. What changes is the step:

* the whole update (decay, moments, bias correction, parameter step) is one kernel over the
  list of tensors of each device (``engine.ops.fused_adamw_``);
* with ``max_grad_norm`` the global gradient norm is one reduction pass and the clip factor is
  applied as gradients are read by the update, instead of ``clip_grad_norm_``'s extra pass that
  rewrites every gradient; ``step()`` returns the pre-clip norm;
* bfloat16 parameters keep float32 moments (and, with ``master_weights=True``, a float32 master
  copy), which ``torch.optim.AdamW`` would keep in bfloat16.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from engine.ops.fused_adamw import fused_adamw_, total_norm

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
# Param-group keys of torch.optim.AdamW (torch 2.4 - 2.14), with their defaults.
_GROUP_DEFAULTS = {
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": True,
}


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2 parameters, gradients and states), else ``t``."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "device_mesh") else t


def _as_float(value: float | torch.Tensor) -> float:
    return value.item() if isinstance(value, torch.Tensor) else float(value)


class FusedAdamW(torch.optim.Optimizer):
    """AdamW with a fused one-pass update and optional fused gradient clipping.

    Args:
        params: iterable of parameters or of param-group dicts, as for any torch optimizer.
        lr: learning rate (float or 0-dim tensor).
        betas: coefficients of the running averages of the gradient and its square.
        eps: added to the denominator for numerical stability.
        weight_decay: decoupled weight decay coefficient.
        amsgrad: use the AMSGrad variant (running maximum of the second moment).
        maximize: maximise the objective instead of minimising it.
        foreach, capturable, fused: accepted and stored for compatibility with
            ``torch.optim.AdamW`` state dicts; the update is always the fused kernel.
        differentiable: must be False (the fused update is not differentiable).
        max_grad_norm: if set, gradients are clipped to this global L2 norm inside the update
            (as ``clip_grad_norm_`` over every parameter of every group would) and ``step()``
            returns the pre-clip norm.
        master_weights: keep a float32 master copy of every bfloat16 parameter in the state
            (``state[p]["master_param"]``); the parameter receives its bf16 rounding each step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        max_grad_norm: float | None = None,
        master_weights: bool = False,
    ) -> None:
        if not 0.0 <= _as_float(lr):
            raise ValueError(f"FusedAdamW: invalid learning rate {lr}; it must be >= 0")
        if not 0.0 <= eps:
            raise ValueError(f"FusedAdamW: invalid eps {eps}; it must be >= 0")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"FusedAdamW: invalid betas[{i}] = {beta}; it must be in [0, 1)")
        if not 0.0 <= weight_decay:
            raise ValueError(f"FusedAdamW: invalid weight_decay {weight_decay}; it must be >= 0")
        if differentiable:
            raise ValueError("FusedAdamW: differentiable=True is not supported (the fused "
                             "update has no autograd); use torch.optim.AdamW for that")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"FusedAdamW: invalid max_grad_norm {max_grad_norm}; "
                             "it must be > 0, or None to disable clipping")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused, decoupled_weight_decay=True)
        super().__init__(params, defaults)
        self.max_grad_norm = max_grad_norm
        self.master_weights = master_weights
        self.last_grad_norm: torch.Tensor | None = None
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                self._check_param(p, g, i)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _GROUP_DEFAULTS.items():
                group.setdefault(key, value)
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("master_weights", False)
        self.__dict__.setdefault("last_grad_norm", None)

    @staticmethod
    def _check_param(p: torch.Tensor, g: int, i: int) -> None:
        p = _local(p)
        where = f"param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)}, {p.dtype})"
        if p.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"FusedAdamW: {where} has dtype {p.dtype}; supported parameter "
                            "dtypes are float32 and bfloat16")
        if p.layout != torch.strided or not _is_dense(p):
            raise ValueError(f"FusedAdamW: {where} is not dense in memory (a view with gaps or "
                             "overlaps, strides " f"{p.stride()}); optimise the tensor it views, "
                             "or make it .contiguous() before creating the optimizer")

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32,
                                                memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32,
                                                   memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32,
                                                           memory_format=torch.preserve_format)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
        if self.master_weights and p.dtype != torch.float32 and "master_param" not in state:
            state["master_param"] = p.detach().to(torch.float32, copy=True)
        return state

    def _collect(self) -> list[tuple[dict[str, Any], list[torch.Tensor]]]:
        """Params with gradients, per group, after checking the gradients."""
        out = []
        for g, group in enumerate(self.param_groups):
            with_grad = []
            for i, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(
                        f"FusedAdamW: param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)}) "
                        "has a sparse gradient; use torch.optim.SparseAdam for sparse gradients")
                if grad.dtype != p.dtype:
                    raise TypeError(
                        f"FusedAdamW: param_groups[{g}]['params'][{i}] is {p.dtype} but its "
                        f"gradient is {grad.dtype}; gradients must have their parameter's dtype")
                with_grad.append(p)
            out.append((group, with_grad))
        return out

    def _clip_coefficients(self, grads: list[torch.Tensor]) -> dict[torch.device, torch.Tensor]:
        """Computes the global pre-clip norm (kept in ``last_grad_norm``) and, per device, the
        clip coefficient ``min(1, max_norm / (norm + 1e-6))`` as ``clip_grad_norm_`` does."""
        by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
        groups = {g.device_mesh.get_group() for g in grads if hasattr(g, "device_mesh")}
        for grad in grads:
            by_device[grad.device].append(_local(grad))
        norms = [total_norm(ts) for ts in by_device.values()]
        if len(norms) == 1:
            norm = norms[0]
        else:
            first = norms[0].device
            norm = torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]))
        if groups:  # sharded gradients (FSDP2): the global norm sums the shards' squares
            if len(groups) > 1:
                raise RuntimeError("FusedAdamW: gradients sharded over several process groups "
                                   "(e.g. 2-D meshes) are not supported by fused clipping")
            squared = norm.double() ** 2
            torch.distributed.all_reduce(squared, group=groups.pop())
            norm = squared.sqrt().float()
        self.last_grad_norm = norm
        coef = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)
        return {device: coef.to(device) for device in by_device}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one optimisation step.

        Returns:
            With ``max_grad_norm`` set: the global gradient norm before clipping (a 0-dim
            float32 tensor, also kept in ``last_grad_norm``). Otherwise the closure's loss, or
            None when no closure is given.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self._collect()
        coefs: dict[torch.device, torch.Tensor] = {}
        if self.max_grad_norm is not None:
            grads = [p.grad for _, ps in groups for p in ps]
            coefs = self._clip_coefficients(grads) if grads else {}
            if not grads:
                self.last_grad_norm = torch.zeros((), dtype=torch.float32)
        for group, ps in groups:
            if ps:
                self._step_group(group, ps, coefs)
        return self.last_grad_norm if self.max_grad_norm is not None else loss

    def _step_group(self, group: dict[str, Any], ps: list[torch.Tensor],
                    coefs: dict[torch.device, torch.Tensor]) -> None:
        states = [self._init_state(p, group) for p in ps]
        # One kernel call per (device, has master copy); normally one per group. The kernel
        # increments the step counters itself.
        calls: dict[tuple[torch.device, bool], list[int]] = defaultdict(list)
        for k, p in enumerate(ps):
            calls[(p.device, "master_param" in states[k])].append(k)
        beta1, beta2 = group["betas"]
        for (device, master), ks in calls.items():
            fused_adamw_(
                [_local(ps[k]) for k in ks],
                [_local(ps[k].grad) for k in ks],
                [_local(states[k]["exp_avg"]) for k in ks],
                [_local(states[k]["exp_avg_sq"]) for k in ks],
                [states[k]["step"] for k in ks],
                max_exp_avg_sqs=[_local(states[k]["max_exp_avg_sq"]) for k in ks]
                if group["amsgrad"] else [],
                master_params=[_local(states[k]["master_param"]) for k in ks] if master else [],
                lr=_as_float(group["lr"]), beta1=_as_float(beta1), beta2=_as_float(beta2),
                weight_decay=group["weight_decay"], eps=group["eps"],
                amsgrad=group["amsgrad"], maximize=group["maximize"],
                grad_scale=coefs.get(device),
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict saved by FusedAdamW or torch.optim.AdamW.

        ``Optimizer.load_state_dict`` casts floating state to each parameter's dtype; the moments
        (and master weights) of bfloat16 parameters are restored in float32 from the saved
        values, so nothing is lost in the round trip.
        """
        saved_state = state_dict["state"]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, p in zip(saved_ids, params):
            if saved_id not in saved_state:
                continue
            state = self.state[p]
            for key, value in saved_state[saved_id].items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "step":
                    state[key] = value.detach().to("cpu", torch.float32, copy=True).reshape(())
                elif value.is_floating_point():
                    state[key] = value.detach().to(p.device, torch.float32, copy=True)


def _is_dense(t: torch.Tensor) -> bool:
    """True when the tensor covers a contiguous block of memory in some dimension order."""
    if t.is_contiguous() or t.numel() <= 1:
        return True
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)))
    expected = 1
    for d in order:
        if t.size(d) == 1:
            continue
        if t.stride(d) != expected:
            return False
        expected *= t.size(d)
    return True
