"""The trainer with ``parallel: pipeline`` on 2 CPU ranks (gloo, torchrun): the loss curve of
one process on the same batches (global gradient clipping included), and a checkpoint per
rank."""

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

STEPS = 4
ARGS = ["data.seq_len=32", "data.batch_size=4", "optim.lr=3e-3", "optim.warmup_steps=2",
        "optim.max_grad_norm=0.5", f"steps={STEPS}", "log_every=1", "tensorboard=false"]


def reference_losses(tokens) -> list[float]:
    """One process, the same init and batches: both pipeline ranks read the one shard."""
    cfg = load_train_config(None, [f"data.tokens={tokens}", *ARGS])
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model_config(), cfg.attention)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "embed.weight"]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "embed.weight")]
    opt = FusedAdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                      {"params": rest, "weight_decay": 0.0}], lr=cfg.optim.lr,
                     betas=cfg.optim.betas, eps=cfg.optim.eps,
                     max_grad_norm=cfg.optim.max_grad_norm)
    data = iter(PackedLoader(tokens, 32, 4, prefetch=0))
    losses = []
    for step in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr=cfg.optim.lr, warmup_steps=2, total_steps=STEPS,
                            min_lr_ratio=cfg.optim.min_lr_ratio)
        b = next(data)
        logits = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
        loss = F.cross_entropy(logits.flatten(0, 1), b.labels.flatten(), ignore_index=-100,
                               reduction="sum") / (b.labels != -100).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("schedule", ["1f1b", "zb-h1"])
def test_pipeline_training_follows_the_single_process_curve(sample_tokens, tmp_path, schedule):
    out = tmp_path / schedule
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "engine.train", f"data.tokens={sample_tokens}", *ARGS, "parallel=pipeline",
         f"pipeline.schedule={schedule}", "pipeline.microbatches=2", f"out_dir={out}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    got = [r["loss"] for r in records if r.get("event", "train") == "train"]
    expected = reference_losses(sample_tokens)
    assert got == pytest.approx(expected, rel=2e-5, abs=2e-5)
    assert expected[-1] < expected[0]
    ckpt = out / "checkpoints" / f"step-{STEPS:08d}"
    assert (ckpt / "rank-0.pt").exists() and (ckpt / "rank-1.pt").exists()


def test_pipeline_config_errors_name_the_key():
    with pytest.raises(ValueError, match="pipeline.schedule must be one of"):
        load_train_config(None, ["parallel=pipeline", "pipeline.schedule=zb-v"])
    with pytest.raises(ValueError, match="data.batch_size 6 is not a multiple of "
                                         "pipeline.microbatches 4"):
        load_train_config(None, ["parallel=pipeline", "data.batch_size=6"])
