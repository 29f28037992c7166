"""The shared stage loop: config checks, epochs of index batches, logging, autocast."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from stage_models import tiny_model

from stages.loop import LoopConfig, backward_step, shuffled_batches, train_loop
from stages.packing import pack_examples
from stages.sft import SFTObjective


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="LoopConfig.grad_accum must be >= 1"):
        LoopConfig(grad_accum=0)
    with pytest.raises(ValueError, match="LoopConfig.autocast"):
        LoopConfig(autocast="fp8")


def test_each_epoch_visits_every_full_batch_once():
    batches = shuffled_batches(10, 3, seed=1)
    epoch1 = [next(batches) for _ in range(3)]
    epoch2 = [next(batches) for _ in range(3)]
    for epoch in (epoch1, epoch2):
        flat = [i for b in epoch for i in b]
        assert all(len(b) == 3 for b in epoch) and len(set(flat)) == 9
    assert epoch1 != epoch2
    assert next(shuffled_batches(2, 5)) in ([0, 1], [1, 0])   # fewer items than a batch


def examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 64, 9), np.r_[0, 0, 0, np.ones(6)]) for _ in range(n)]


def test_loop_steps_logs_and_stops_when_the_data_ends(tmp_path):
    model = tiny_model()
    data = [pack_examples(examples(2, s)) for s in range(5)]
    history = train_loop(model, SFTObjective(model), data,
                         LoopConfig(steps=4, lr=1e-3, grad_accum=2, log_every=0,
                                    out_dir=str(tmp_path)))
    assert [r["step"] for r in history] == [1, 2]           # 5 micro-batches: 2 full steps
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == history
    assert set(history[0]) == {"step", "loss", "accuracy", "lr", "grad_norm"}
    assert history[0]["lr"] == 1e-3 and history[0]["grad_norm"] > 0


def test_bfloat16_autocast_stays_close_to_float32():
    model = tiny_model()
    batch = [pack_examples(examples(4), seq_len=18)]
    full = backward_step(SFTObjective(model), batch)["loss"]
    model.zero_grad()
    low = backward_step(SFTObjective(model), batch, "bfloat16")["loss"]
    assert low == pytest.approx(full, rel=2e-2)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
