"""Direct preference optimisation and its variants: one registry of losses over the policy's
(and, for some, a reference's) log-probabilities of the chosen and rejected replies.

    pairs = read_preferences("out/pref")
    history = train_dpo(model, pairs, DPOConfig(loss="sigmoid", beta=0.1))

Each registered loss states how a reply's token log-probs are reduced (``sum``, or ``mean``
over the reply's tokens) and whether it needs a reference model. The reference log-probs are
the policy's own, computed once before the first step (:func:`reference_logps`) and cached as a
(pairs, 2) tensor, so no second model is kept. Metrics carry TRL's names: ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``,
``logps/rejected`` (rewards are ``beta * (policy - reference)`` log-probs, or ``beta * policy``
for the reference-free losses; logps are the reduced policy log-probs the loss used).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from stages.examples import PreferencePairs
from stages.lora import LoRAConfig, apply_lora
from stages.loop import LoopConfig, autocast, shuffled_batches, train_loop
from stages.packing import pack_examples, token_logps


@dataclass(frozen=True)
class LossInputs:
    """Per-pair reduced log-probs, (N,) each; the reference ones are None without one."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None


@dataclass(frozen=True)
class PreferenceLoss:
    """A registered loss: per-pair values from :class:`LossInputs` and the hyper-parameters."""

    fn: Callable[[LossInputs, float, float, float], torch.Tensor]
    """(inputs, beta, label_smoothing, gamma) → (N,) losses."""
    reduce: str
    """How a reply's token log-probs are combined: ``sum`` or ``mean``."""
    reference: bool
    """Whether the loss uses the reference model's log-probs."""
    summary: str
    """The formula, for humans."""


def _ratio(x: LossInputs) -> torch.Tensor:
    return (x.chosen - x.ref_chosen) - (x.rejected - x.ref_rejected)


def _smoothed(z: torch.Tensor, eps: float) -> torch.Tensor:
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def _sigmoid(x: LossInputs, beta: float, eps: float, gamma: float) -> torch.Tensor:
    return _smoothed(beta * _ratio(x), eps)


def _robust(x: LossInputs, beta: float, eps: float, gamma: float) -> torch.Tensor:
    z = beta * _ratio(x)
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def _ipo(x: LossInputs, beta: float, eps: float, gamma: float) -> torch.Tensor:
    return (_ratio(x) - 1 / (2 * beta)) ** 2


def _simpo(x: LossInputs, beta: float, eps: float, gamma: float) -> torch.Tensor:
    return _smoothed(beta * (x.chosen - x.rejected) - gamma, eps)


def _orpo(x: LossInputs, beta: float, eps: float, gamma: float) -> torch.Tensor:
    # log odds(p) = log p - log(1 - p), with the mean token log-prob as log p (TRL's ORPO).
    log_odds = (x.chosen - x.rejected) - (torch.log1p(-torch.exp(x.chosen))
                                          - torch.log1p(-torch.exp(x.rejected)))
    return -x.chosen - beta * F.logsigmoid(log_odds)


LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(_sigmoid, "sum", True,
                              "DPO: -logσ(β h), h = (πc - rc) - (πr - rr); with label_smoothing "
                              "ε > 0 it is cDPO: -(1-ε) logσ(βh) - ε logσ(-βh)"),
    "robust": PreferenceLoss(_robust, "sum", True,
                             "robust DPO (Chowdhury et al. 2024): (-(1-ε) logσ(βh) + "
                             "ε logσ(-βh)) / (1 - 2ε), unbiased under label noise ε"),
    "ipo": PreferenceLoss(_ipo, "mean", True,
                          "IPO: (h - 1/(2β))², h over mean token log-probs"),
    "simpo": PreferenceLoss(_simpo, "mean", False,
                            "SimPO: -logσ(β (πc - πr) - γ) over mean token log-probs, no "
                            "reference"),
    "orpo": PreferenceLoss(_orpo, "mean", False,
                           "ORPO: -πc (the chosen reply's mean NLL) - β logσ(log odds(πc) - "
                           "log odds(πr)), odds(p) = p / (1 - p) of the mean token log-prob"),
}


@dataclass
class DPOConfig:
    """A preference-optimisation run."""

    loss: str = "sigmoid"
    """A key of :data:`LOSSES`."""
    beta: float = 0.1
    """Inverse temperature of the implicit reward (IPO: the margin is 1 / (2 beta))."""
    label_smoothing: float = 0.0
    """Assumed label-noise rate ε of cDPO / robust DPO / SimPO, in [0, 0.5)."""
    gamma: float = 0.5
    """SimPO's target reward margin."""
    batch_size: int = 4
    """Pairs per micro-batch."""
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(lr=5e-7))
    """Optimisation settings."""
    lora: LoRAConfig | None = None
    """Train LoRA adapters on a frozen policy."""
    pad_id: int = 0
    """Padding id of packed rows."""
    seed: int = 0
    """Shuffling seed."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"DPOConfig.loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if not self.beta > 0:
            raise ValueError(f"DPOConfig.beta must be positive (got {self.beta})")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"DPOConfig.label_smoothing must be in [0, 0.5) (got "
                             f"{self.label_smoothing})")
        if self.batch_size < 1:
            raise ValueError(f"DPOConfig.batch_size must be >= 1 (got {self.batch_size})")


def reply_logps(model: torch.nn.Module, pairs: PreferencePairs, index: Sequence[int],
                reduce: str, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen and rejected replies' log-probs given their prompt, (n,) each, reduced by
    ``sum`` or ``mean`` over the reply tokens; all 2n sequences run in one packed forward."""
    examples = []
    for i in index:
        prompt = pairs.prompt_ids[i]
        for reply in (pairs.chosen_ids[i], pairs.rejected_ids[i]):
            mask = np.concatenate([np.zeros(len(prompt)), np.ones(len(reply))])
            examples.append((np.concatenate([prompt, reply]), mask))
    batch = pack_examples(examples, pad_id=pad_id).to(next(model.parameters()).device)
    logits = model(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen)
    logps = batch.per_example(token_logps(logits, batch.targets) * batch.weights)   # (2n,)
    if reduce == "mean":
        logps = logps / batch.per_example(batch.weights)
    elif reduce != "sum":
        raise ValueError(f"reduce must be 'sum' or 'mean' (got {reduce!r})")
    return logps[0::2], logps[1::2]


@torch.no_grad()
def reference_logps(model: torch.nn.Module, pairs: PreferencePairs, reduce: str,
                    batch_size: int = 8, pad_id: int = 0) -> torch.Tensor:
    """(pairs, 2) chosen/rejected log-probs of every pair under ``model`` as it is now (call it
    before training: the reference is the starting policy), in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(pairs), batch_size):
        index = range(start, min(start + batch_size, len(pairs)))
        out.append(torch.stack(reply_logps(model, pairs, index, reduce, pad_id), dim=1))
    model.train(was_training)
    return torch.cat(out).float()


class DPOObjective:
    """One registered loss over batches of pair indices; units are pairs."""

    def __init__(self, model: torch.nn.Module, pairs: PreferencePairs, config: DPOConfig,
                 reference: torch.Tensor | None = None) -> None:
        self.model, self.pairs, self.config = model, pairs, config
        self.spec = LOSSES[config.loss]
        if self.spec.reference and reference is None:
            raise ValueError(f"loss {config.loss!r} needs reference log-probs; compute them "
                             "with reference_logps(model, pairs, ...) before training")
        self.reference = reference

    def units(self, batch: Sequence[int]) -> int:
        """Pairs in the batch."""
        return len(batch)

    def __call__(self, batch: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen, rejected = reply_logps(self.model, self.pairs, batch, self.spec.reduce,
                                       self.config.pad_id)
        ref = None if self.reference is None else self.reference[list(batch)].to(chosen.device)
        inputs = LossInputs(chosen, rejected, *((None, None) if ref is None or not
                                                self.spec.reference else (ref[:, 0], ref[:, 1])))
        c = self.config
        losses = self.spec.fn(inputs, c.beta, c.label_smoothing, c.gamma)
        return losses.sum(), {k: v.sum() for k, v in dpo_metrics(inputs, c.beta).items()}


@torch.no_grad()
def dpo_metrics(x: LossInputs, beta: float) -> dict[str, torch.Tensor]:
    """TRL's per-pair metrics (sum or average them over pairs)."""
    if x.ref_chosen is not None:
        rc, rr = beta * (x.chosen - x.ref_chosen), beta * (x.rejected - x.ref_rejected)
    else:
        rc, rr = beta * x.chosen, beta * x.rejected
    return {"rewards/chosen": rc, "rewards/rejected": rr, "rewards/margins": rc - rr,
            "rewards/accuracies": (rc > rr).float(), "logps/chosen": x.chosen.detach(),
            "logps/rejected": x.rejected.detach()}


@torch.no_grad()
def implicit_reward_accuracy(policy: torch.nn.Module, pairs: PreferencePairs, loss: str,
                             beta: float, reference: torch.Tensor | None = None,
                             batch_size: int = 8, pad_id: int = 0) -> dict[str, float]:
    """``rewards/accuracies`` and ``rewards/margins`` of a DPO-family policy on held-out pairs:
    its implicit reward under ``loss``'s reduction, against ``reference`` (pairs, 2) log-probs
    when the loss has one (compute them with :func:`reference_logps` on the starting model)."""
    spec = LOSSES[loss]
    if spec.reference and reference is None:
        raise ValueError(f"loss {loss!r} measures rewards against a reference; pass its "
                         "reference log-probs")
    was_training = policy.training
    policy.eval()
    sums = {"rewards/accuracies": 0.0, "rewards/margins": 0.0}
    for start in range(0, len(pairs), batch_size):
        index = list(range(start, min(start + batch_size, len(pairs))))
        chosen, rejected = reply_logps(policy, pairs, index, spec.reduce, pad_id)
        ref = reference[index].to(chosen.device) if spec.reference else None
        inputs = LossInputs(chosen, rejected, *((None, None) if ref is None
                                                else (ref[:, 0], ref[:, 1])))
        metrics = dpo_metrics(inputs, beta)
        for key in sums:
            sums[key] += float(metrics[key].sum())
    policy.train(was_training)
    return {"accuracy": sums["rewards/accuracies"] / len(pairs),
            "margin": sums["rewards/margins"] / len(pairs)}


def train_dpo(model: torch.nn.Module, pairs: PreferencePairs, config: DPOConfig,
              reference: torch.Tensor | None = None, eval_pairs: PreferencePairs | None = None
              ) -> list[dict[str, float]]:
    """Optimises ``model`` on ``pairs`` with ``config.loss``; the reference log-probs are
    computed from the starting model unless given (LoRA adapters, when configured, are applied
    after, so the reference is the base model); returns the per-step records, with
    ``eval/accuracy`` and ``eval/margin`` of the implicit reward on ``eval_pairs`` when
    given."""
    spec = LOSSES[config.loss]
    eval_reference = None
    with autocast(model, config.loop.autocast):
        if spec.reference and reference is None:
            reference = reference_logps(model, pairs, spec.reduce, pad_id=config.pad_id)
        if spec.reference and eval_pairs is not None:
            eval_reference = reference_logps(model, eval_pairs, spec.reduce,
                                             pad_id=config.pad_id)
    if config.lora is not None:
        apply_lora(model, config.lora)
    objective = DPOObjective(model, pairs, config, reference)
    batches: Iterator[list[int]] = shuffled_batches(len(pairs), config.batch_size, config.seed)
    evaluate = None if eval_pairs is None else (
        lambda: implicit_reward_accuracy(model, eval_pairs, config.loss, config.beta,
                                         eval_reference, config.batch_size, config.pad_id))
    return train_loop(model, objective, batches, config.loop, name=f"dpo:{config.loss}",
                      evaluate=evaluate)
