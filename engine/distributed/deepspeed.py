"""DeepSpeed as a backend: its JSON config generated from ours, with our optimizer.

DeepSpeed's ZeRO partitions optimizer state (stage 1), gradients (2) and parameters (3). We hand
it the FusedAdamW we built (``deepspeed.initialize(optimizer=...)``), so the update kernel stays
ours, and keep the schedule, clipping and precision settings consistent with the config.
"""

from __future__ import annotations

from typing import Any

from engine.config import TrainConfig


def deepspeed_config(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The ``ds_config`` dict for a run: batch sizes, ZeRO stage, precision, clipping."""
    micro = config.data.batch_size
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": micro * config.grad_accum * world_size,
        "zero_optimization": {"stage": config.deepspeed_stage,
                              "overlap_comm": True, "contiguous_gradients": True},
        "bf16": {"enabled": config.dtype == "bfloat16"},
        "fp16": {"enabled": False},
        "steps_per_print": max(1, config.log_every),
        "wall_clock_breakdown": False,
        # our FusedAdamW is passed in: DeepSpeed must not build its own
        "zero_allow_untested_optimizer": True,
    }
    if config.optim.max_grad_norm is not None:
        ds["gradient_clipping"] = config.optim.max_grad_norm
    if config.deepspeed_stage == 3:
        ds["zero_optimization"].update({"stage3_gather_16bit_weights_on_model_save": True})
    return ds


def initialize_deepspeed(model, optimizer, config: TrainConfig, world_size: int):
    """Wraps model and optimizer with DeepSpeed; returns the engine (model, optimizer and
    backward/step in one object)."""
    try:
        import deepspeed
    except ImportError as exc:
        raise RuntimeError("parallel: deepspeed needs the deepspeed package: "
                           "pip install 'crucible[deepspeed]'") from exc
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=deepspeed_config(config, world_size))
    return engine
