"""Optimizers whose update runs in crucible's compiled kernels."""

from engine.optim.fused_adamw import FusedAdamW

__all__ = ["FusedAdamW"]
