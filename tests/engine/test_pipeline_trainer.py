"""The trainer with ``parallel: pipeline`` on 2 CPU ranks (gloo, torchrun): the loss curve of
one process on the same batches (global gradient clipping included), and a checkpoint per
rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from reference_training import reference_losses

from engine.config import load_train_config


STEPS = 4
ARGS = ["data.seq_len=32", "data.batch_size=4", "optim.lr=3e-3", "optim.warmup_steps=2",
        "optim.max_grad_norm=0.5", f"steps={STEPS}", "log_every=1", "tensorboard=false"]


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
    expected = reference_losses(sample_tokens, ARGS, STEPS)
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
