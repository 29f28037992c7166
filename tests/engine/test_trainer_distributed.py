"""DDP and FSDP2 on 2 CPU ranks (gloo, launched with torchrun) follow the loss curve of one
process that accumulates the same two ranks' batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from engine.config import load_train_config
from engine.data import PackedLoader
from engine.model import Transformer
from engine.optim import FusedAdamW
from engine.schedule import lr_at

STEPS = 5
ARGS = ["data.seq_len=32", "data.batch_size=4", "optim.lr=3e-3", "optim.warmup_steps=2",
        f"steps={STEPS}", "log_every=1", "tensorboard=false"]


def reference_losses(tokens, world: int = 2) -> list[float]:
    """One process: the same init, each rank's batch as a micro-batch, gradients averaged."""
    cfg = load_train_config(None, [f"data.tokens={tokens}", *ARGS])
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model_config(), cfg.attention)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "embed.weight"]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "embed.weight")]
    opt = FusedAdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                      {"params": rest, "weight_decay": 0.0}], lr=cfg.optim.lr,
                     betas=cfg.optim.betas, eps=cfg.optim.eps,
                     max_grad_norm=cfg.optim.max_grad_norm)
    loaders = [iter(PackedLoader(tokens, 32, 4, rank=r, world_size=world, prefetch=0))
               for r in range(world)]
    losses = []
    for step in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr=cfg.optim.lr, warmup_steps=2, total_steps=STEPS,
                            min_lr_ratio=cfg.optim.min_lr_ratio)
        total = 0.0
        for it in loaders:
            b = next(it)
            logits = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
            loss = F.cross_entropy(logits.flatten(0, 1), b.labels.flatten(), ignore_index=-100,
                                   reduction="sum") / (b.labels != -100).sum()
            (loss / world).backward()
            total += loss.item() / world
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses


def torchrun(tokens, out, parallel: str) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", "-m", "engine.train", f"data.tokens={tokens}",
                    *ARGS, f"parallel={parallel}", f"out_dir={out}"],
                   env=env, check=True, capture_output=True, timeout=300)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r.get("event", "train") == "train"]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_follow_the_single_process_curve(sample_tokens, tmp_path, parallel):
    expected = reference_losses(sample_tokens)
    got = torchrun(sample_tokens, tmp_path / parallel, parallel)
    assert got == pytest.approx(expected, rel=2e-5, abs=2e-5)
    assert expected[-1] < expected[0]
    ckpt = tmp_path / parallel / "checkpoints" / f"step-{STEPS:08d}"
    assert (ckpt / "rank-0.pt").exists() and (ckpt / "rank-1.pt").exists()
