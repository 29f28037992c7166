"""The plain training loop the distributed tests compare the trainer against: the trainer's
init, parameter groups and schedule, with each rank's batch as one micro-batch of a single
process (gradients averaged over ranks, as DDP/FSDP/pipeline data parallelism average them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.config import load_train_config
from engine.data import PackedLoader
from engine.model import Transformer
from engine.optim import FusedAdamW
from engine.schedule import lr_at


def reference_losses(tokens, args: list[str], steps: int, world: int = 1) -> list[float]:
    """Per-step losses (mean over the ``world`` ranks' batches) of one process."""
    cfg = load_train_config(None, [f"data.tokens={tokens}", *args])
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model_config(), cfg.attention)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "embed.weight"]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "embed.weight")]
    opt = FusedAdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                      {"params": rest, "weight_decay": 0.0}], lr=cfg.optim.lr,
                     betas=cfg.optim.betas, eps=cfg.optim.eps,
                     max_grad_norm=cfg.optim.max_grad_norm)
    loaders = [iter(PackedLoader(tokens, cfg.data.seq_len, cfg.data.batch_size, rank=r,
                                 world_size=world, prefetch=0)) for r in range(world)]
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                            total_steps=steps, min_lr_ratio=cfg.optim.min_lr_ratio)
        total = 0.0
        for data in loaders:
            b = next(data)
            logits = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
            loss = F.cross_entropy(logits.flatten(0, 1), b.labels.flatten(), ignore_index=-100,
                                   reduction="sum") / (b.labels != -100).sum()
            (loss / world).backward()
            total += loss.item() / world
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses
