"""Convergence: nanoGPT's CPU "baby" config on character-level tiny Shakespeare reaches the
validation loss nanoGPT publishes for it (1.88) — the engine learns as well as the reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engine.config import load_train_config
from engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_shakespeare_char_baby_config_reaches_nanogpt_validation_loss(tmp_path):
    spec = importlib.util.spec_from_file_location("prep", ROOT / "data" / "prepare_shakespeare.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    counts = prep.prepare(tmp_path / "data")
    assert counts == {"train": 1_003_854, "val": 111_540}
    config = load_train_config(ROOT / "configs" / "shakespeare_char.yaml", [
        f"data.tokens={tmp_path / 'data' / 'train'}",
        f"data.eval_tokens={tmp_path / 'data' / 'val'}", f"out_dir={tmp_path / 'run'}",
        "tensorboard=false", "eval_every=1000", "log_every=500"])
    result = Trainer(config).train()
    assert result.steps == 2000
    assert result.eval_losses[2000] <= 1.88, result.eval_losses
