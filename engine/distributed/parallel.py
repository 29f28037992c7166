"""Parallelism applied to a model from outside (torchtitan's ``parallelize``): activation
checkpointing, DDP or FSDP2, torch.compile. The model code never knows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that logs and writes shared files."""
        return self.rank == 0


def init_distributed(timeout_s: float = 600.0) -> DistInfo:
    """Initialises torch.distributed from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT): NCCL with one GPU per rank when CUDA is available, gloo otherwise.
    Without that environment the run is a single process and nothing is initialised."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recomputes every block in the backward pass. The block's ``forward`` is wrapped on the
    instance, so parameter names (and checkpoints, and exports) are unchanged."""
    for block in model.blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def parallelize(model: nn.Module, mode: str, info: DistInfo, *,
                activation_checkpointing: bool = False, compile: bool = False) -> nn.Module:
    """Returns the model to train: ``none``, ``ddp`` (DistributedDataParallel) or ``fsdp``
    (FSDP2 ``fully_shard`` per block, then the root). ``deepspeed`` is applied by the trainer
    (DeepSpeed wraps model and optimizer together)."""
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        model = torch.compile(model)
    if mode in ("none", "deepspeed"):
        return model
    if not dist.is_initialized():
        raise RuntimeError(f"parallel: {mode} needs torch.distributed; launch with torchrun")
    if mode == "ddp":
        ids = [info.local_rank] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        inner = getattr(model, "_orig_mod", model)
        for block in inner.blocks:
            fully_shard(block)
        fully_shard(inner)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}")
