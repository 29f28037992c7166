"""The DPO-family losses: each against its formula, step 0, the reference cache, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stage_models import tiny_model

from stages.dpo import (LOSSES, DPOConfig, DPOObjective, LossInputs, reference_logps,
                        reply_logps, train_dpo)
from stages.examples import PreferencePairs
from stages.loop import LoopConfig, backward_step

# Two pairs of reduced log-probs: policy chosen/rejected, reference chosen/rejected.
PC, PR, RC, RR = [-1.2, -2.0], [-1.5, -1.1], [-1.4, -1.8], [-1.3, -1.6]
BETA, EPS, GAMMA = 0.5, 0.1, 0.3
X = LossInputs(*(torch.tensor(v, dtype=torch.float64) for v in (PC, PR, RC, RR)))


def logsig(z: float) -> float:
    return -math.log1p(math.exp(-z))


def hand(name: str, i: int) -> float:
    pc, pr, rc, rr = PC[i], PR[i], RC[i], RR[i]
    h = (pc - rc) - (pr - rr)
    if name == "sigmoid":
        z = BETA * h
        return -(1 - EPS) * logsig(z) - EPS * logsig(-z)
    if name == "robust":
        z = BETA * h
        return (-(1 - EPS) * logsig(z) + EPS * logsig(-z)) / (1 - 2 * EPS)
    if name == "ipo":
        return (h - 1 / (2 * BETA)) ** 2
    if name == "simpo":
        z = BETA * (pc - pr) - GAMMA
        return -(1 - EPS) * logsig(z) - EPS * logsig(-z)
    if name == "orpo":
        odds = (pc - math.log(1 - math.exp(pc))) - (pr - math.log(1 - math.exp(pr)))
        return -pc - BETA * logsig(odds)
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_matches_its_formula(name):
    got = LOSSES[name].fn(X, BETA, EPS, GAMMA)
    assert got.tolist() == pytest.approx([hand(name, 0), hand(name, 1)], rel=1e-12)


def test_registry_states_reduction_and_reference():
    table = {k: (v.reduce, v.reference) for k, v in LOSSES.items()}
    assert table == {"sigmoid": ("sum", True), "robust": ("sum", True), "ipo": ("mean", True),
                     "simpo": ("mean", False), "orpo": ("mean", False)}
    with pytest.raises(ValueError, match="not one of sigmoid, robust, ipo, simpo, orpo"):
        DPOConfig(loss="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(label_smoothing=0.5)


def random_pairs(n: int, seed: int = 0, vocab: int = 64) -> PreferencePairs:
    rng = np.random.default_rng(seed)
    draw = lambda lo, hi: rng.integers(0, vocab, int(rng.integers(lo, hi)))  # noqa: E731
    return PreferencePairs([draw(3, 8) for _ in range(n)], [draw(2, 7) for _ in range(n)],
                           [draw(2, 7) for _ in range(n)])


def test_reply_logps_sum_only_the_reply_tokens():
    model = tiny_model()
    pairs = random_pairs(3)
    with torch.no_grad():
        chosen, rejected = reply_logps(model, pairs, [0, 1, 2], "sum")
        mean_c, _ = reply_logps(model, pairs, [0, 1, 2], "mean")
        for i in range(3):
            ids = torch.as_tensor(np.concatenate([pairs.prompt_ids[i], pairs.chosen_ids[i]]))
            logp = torch.log_softmax(model(ids[None]).float(), -1)[0]
            p, n = len(pairs.prompt_ids[i]), len(pairs.chosen_ids[i])
            expected = sum(float(logp[t - 1, ids[t]]) for t in range(p, p + n))
            assert float(chosen[i]) == pytest.approx(expected, rel=1e-5)
            assert float(mean_c[i]) == pytest.approx(expected / n, rel=1e-5)
    assert rejected.shape == (3,)


def test_step_zero_loss_is_ln2_with_zero_rewards():
    model = tiny_model()
    pairs = random_pairs(6)
    config = DPOConfig(loss="sigmoid", beta=0.1)
    reference = reference_logps(model, pairs, "sum", batch_size=4)
    assert reference.shape == (6, 2)
    record = backward_step(DPOObjective(model, pairs, config, reference), [[0, 1, 2], [3, 4, 5]])
    assert record["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert record[key] == pytest.approx(0.0, abs=1e-6)
    assert record["logps/chosen"] == pytest.approx(float(reference[:, 0].mean()), rel=1e-5)
    assert record["logps/rejected"] == pytest.approx(float(reference[:, 1].mean()), rel=1e-5)


def test_reference_losses_refuse_to_run_without_a_reference():
    with pytest.raises(ValueError, match="needs reference log-probs"):
        DPOObjective(tiny_model(), random_pairs(2), DPOConfig(loss="ipo"))
    DPOObjective(tiny_model(), random_pairs(2), DPOConfig(loss="simpo"))  # reference-free


@pytest.mark.parametrize("loss", ["sigmoid", "simpo"])
def test_training_separates_chosen_from_rejected(loss):
    model = tiny_model()
    pairs = random_pairs(4, seed=2)
    config = DPOConfig(loss=loss, beta=0.5, batch_size=4,
                       loop=LoopConfig(steps=12, lr=3e-3, log_every=0))
    history = train_dpo(model, pairs, config, eval_pairs=pairs.subset([0, 1]))
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    assert history[-1]["eval/accuracy"] == 1.0 and history[-1]["eval/margin"] > 0
    assert history[-1]["rewards/margins"] > history[0]["rewards/margins"] + 0.1
    assert history[-1]["rewards/accuracies"] == 1.0
