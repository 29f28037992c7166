"""Packing SFT examples: layout, loss equal to the unpacked losses, accumulation invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stage_models import tiny_model

from stages.loop import backward_step
from stages.packing import pack_examples, pad_right
from stages.sft import SFTObjective


def random_examples(n: int, seed: int = 0, vocab: int = 64):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(4, 13))
        ids = rng.integers(0, vocab, length)
        mask = np.zeros(length, np.uint8)
        mask[int(rng.integers(1, length - 1)):] = 1     # a prompt, then a trained reply
        out.append((ids, mask))
    return out


def test_layout_restarts_positions_and_never_crosses_an_example():
    a = (np.array([1, 2, 3]), np.array([0, 1, 1]))
    b = (np.array([4, 5, 6, 7]), np.array([0, 0, 1, 1]))
    c = (np.array([8, 9]), np.array([0, 1]))
    p = pack_examples([a, b, c], seq_len=8, pad_id=0)
    # a + b fill row 0 (7 tokens + 1 pad); c goes to row 1 (2 tokens + 6 pad)
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 0], [8, 9, 0, 0, 0, 0, 0, 0]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert p.cu_seqlens.tolist() == [0, 3, 7, 8, 10, 16]
    assert p.max_seqlen == 6
    # token i predicts token i + 1 of its own example, weighted by mask[i + 1]
    assert p.targets[0].tolist() == [2, 3, 0, 5, 6, 7, 0, 0]
    assert p.weights[0].tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    assert p.weights[1].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert p.example.tolist() == [[0, 0, 0, 1, 1, 1, 1, -1], [2, 2, -1, -1, -1, -1, -1, -1]]
    assert p.per_example(p.weights).tolist() == [2, 2, 1]


def test_examples_are_never_cut():
    with pytest.raises(ValueError, match="example 1 has 9 tokens > seq_len 8"):
        pack_examples([(np.arange(3), np.ones(3)), (np.arange(9), np.ones(9))], seq_len=8)


def test_packed_loss_equals_the_sum_of_unpacked_losses():
    model = tiny_model()
    examples = random_examples(7)
    objective = SFTObjective(model)
    with torch.no_grad():
        packed, _ = objective(pack_examples(examples, seq_len=32))
        alone = [objective(pack_examples([e]))[0] for e in examples]
    assert pack_examples(examples, seq_len=32).input_ids.shape[0] < len(examples)
    torch.testing.assert_close(packed, torch.stack(alone).sum(), rtol=1e-5, atol=1e-5)
    assert objective.units(pack_examples(examples, seq_len=32)) == sum(
        int(m[1:].sum()) for _, m in examples)


def test_gradient_accumulation_8x1_equals_1x8():
    examples = random_examples(8, seed=3)
    grads, losses = [], []
    for micro in ([pack_examples(examples, seq_len=24)],
                  [pack_examples([e]) for e in examples]):
        model = tiny_model(seed=1)
        losses.append(backward_step(SFTObjective(model), micro)["loss"])
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for g1, g8 in zip(*grads):
        torch.testing.assert_close(g1, g8, rtol=1e-4, atol=1e-6)


def test_pad_right_lengths():
    ids, lengths = pad_right([np.array([5, 6, 7]), np.array([8])], pad_id=2)
    assert ids.tolist() == [[5, 6, 7], [8, 2, 2]] and lengths.tolist() == [3, 1]
