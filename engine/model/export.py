"""Exporting the model of a (possibly sharded) training run as a Hugging Face checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from engine.model.hf import export_hf
from engine.model.transformer import Transformer


def export_trained(trainer, out_dir: str | Path) -> Path | None:
    """Gathers the full model state (FSDP shards included) and writes it on rank 0 with
    :func:`engine.model.hf.export_hf`. Collective; returns the directory on rank 0."""
    state = get_model_state_dict(trainer.train_model,
                                 options=StateDictOptions(full_state_dict=True,
                                                          cpu_offload=True))
    path = None
    if trainer.info.is_main:
        model = Transformer(trainer.model.config, "sdpa")
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        path = export_hf(model, out_dir)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return path
