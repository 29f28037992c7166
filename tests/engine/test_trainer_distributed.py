"""DDP and FSDP2 on 2 CPU ranks (gloo, launched with torchrun) follow the loss curve of one
process that accumulates the same two ranks' batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from reference_training import reference_losses

STEPS = 5
ARGS = ["data.seq_len=32", "data.batch_size=4", "optim.lr=3e-3", "optim.warmup_steps=2",
        f"steps={STEPS}", "log_every=1", "tensorboard=false"]


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
    expected = reference_losses(sample_tokens, ARGS, STEPS, world=2)
    got = torchrun(sample_tokens, tmp_path / parallel, parallel)
    assert got == pytest.approx(expected, rel=2e-5, abs=2e-5)
    assert expected[-1] < expected[0]
    ckpt = tmp_path / parallel / "checkpoints" / f"step-{STEPS:08d}"
    assert (ckpt / "rank-0.pt").exists() and (ckpt / "rank-1.pt").exists()
