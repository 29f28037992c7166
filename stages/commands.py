"""The stage commands as functions: load a model and tokenized examples, train or evaluate,
write ``out_dir`` (``metrics.jsonl``, ``summary.json``, the model in HF layout under ``hf/``,
LoRA adapters in PEFT layout under ``adapter/``). ``crucible sft|reward|dpo|ppo|eval`` and
``crucible demo`` call these.

A stage's YAML config holds the fields of its config dataclass (``SFTConfig``, ``RewardConfig``,
``DPOConfig``, ``PPOConfig``; ``loop:`` and ``lora:`` as nested mappings) plus a ``data:``
section (:class:`DataSelection`). The last ``eval_count`` examples of a fixed shuffle are held
out and evaluated before and after training.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.dpo import DPOConfig, reply_logps
from stages.examples import PreferencePairs, SFTExamples, read_preferences, read_sft
from stages.lora import LoRAConfig
from stages.loop import LoopConfig
from stages.model_io import load_policy, load_reward_model, save_reward_model
from stages.ppo import PPOConfig
from stages.reward import RewardConfig


@dataclass
class DataSelection:
    """Which examples a stage reads (the ``data:`` section of a stage config)."""

    max_examples: int | None = None
    """Use at most this many examples (after the held-out split); None: all."""
    eval_count: int = 0
    """Examples held out for the before/after evaluation (taken first, from a fixed shuffle)."""
    seed: int = 0
    """Seed of the shuffle that picks the held-out examples."""

    def __post_init__(self) -> None:
        if self.eval_count < 0 or (self.max_examples is not None and self.max_examples < 1):
            raise ValueError("data.eval_count must be >= 0 and data.max_examples >= 1 or null")


def build_config(cls, data: dict[str, Any] | None, where: str):
    """``cls`` (a config dataclass) from a plain mapping; ``loop``/``lora`` become
    :class:`LoopConfig`/:class:`LoRAConfig`; unknown keys are errors listing the known ones."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    from stages.adapters import BottleneckConfig, PrefixConfig

    for name, sub in (("loop", LoopConfig), ("lora", LoRAConfig),
                      ("bottleneck", BottleneckConfig), ("prefix", PrefixConfig)):
        if name in fields and isinstance(data.get(name), dict):
            data[name] = build_config(sub, data[name], f"{where}.{name}")
    for name in ("betas", "targets", "layers", "where"):
        if isinstance(data.get(name), list):
            data[name] = tuple(data[name])
    return cls(**data)


def load_stage_config(path: str | Path | None, cls, overrides: dict[str, Any]
                      ) -> tuple[Any, DataSelection]:
    """The stage config and its data selection from a YAML file (or none) with ``overrides``
    (dotted keys such as ``loop.steps``; None values are ignored) applied."""
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config {path}: expected a mapping of {cls.__name__} fields")
    for key, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    data = build_config(DataSelection, raw.pop("data", None), f"{path or 'config'}: data")
    return build_config(cls, raw, str(path or "config")), data


def device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _fits(lengths: list[int], limit: int, what: str) -> list[int]:
    keep = [i for i, n in enumerate(lengths) if n <= limit]
    if len(keep) < len(lengths):
        print(f"{what}: {len(lengths) - len(keep)} of {len(lengths)} examples are longer than "
              f"the model's max_seq_len {limit} and are not used", file=sys.stderr)
    if not keep:
        raise ValueError(f"{what}: no example fits the model's max_seq_len {limit}; tokenize "
                         "with a smaller --max-length or use a model with a longer context")
    return keep


def split(n: int, data: DataSelection) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of ``n`` examples."""
    order = np.random.default_rng(data.seed).permutation(n).tolist()
    held, train = order[:data.eval_count], order[data.eval_count:]
    if not train:
        raise ValueError(f"data.eval_count {data.eval_count} leaves no training example of {n}")
    return train[:data.max_examples], held


def sft_data(path, model, data: DataSelection) -> tuple[SFTExamples, SFTExamples | None]:
    """Train and held-out SFT examples that fit the model."""
    examples = read_sft(path)
    examples = examples.subset(_fits([len(x) for x in examples.input_ids],
                                     model.config.max_seq_len, str(path)))
    train, held = split(len(examples), data)
    return examples.subset(train), examples.subset(held) if held else None


def preference_data(path, model, data: DataSelection
                    ) -> tuple[PreferencePairs, PreferencePairs | None]:
    """Train and held-out preference pairs that fit the model."""
    pairs = read_preferences(path)
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in
               zip(pairs.prompt_ids, pairs.chosen_ids, pairs.rejected_ids)]
    pairs = pairs.subset(_fits(lengths, model.config.max_seq_len, str(path)))
    train, held = split(len(pairs), data)
    return pairs.subset(train), pairs.subset(held) if held else None


@torch.no_grad()
def logp_accuracy(model: torch.nn.Module, pairs: PreferencePairs, batch_size: int = 8
                  ) -> float:
    """How often ``model`` gives the chosen reply a higher mean token log-prob than the
    rejected one (a policy's own preference, defined before any preference training)."""
    was = model.training
    model.eval()
    wins = 0
    for start in range(0, len(pairs), batch_size):
        index = range(start, min(start + batch_size, len(pairs)))
        chosen, rejected = reply_logps(model, pairs, index, "mean")
        wins += int((chosen > rejected).sum())
    model.train(was)
    return wins / len(pairs)


def _write_summary(out: Path, summary: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    tmp.replace(out / "summary.json")
    return summary


def _export_policy(model: torch.nn.Module, out: Path, lora: bool) -> dict[str, str]:
    """``hf/`` (merged when LoRA) and, with LoRA, ``adapter/`` in PEFT layout; with bottleneck
    adapters or a prefix, ``adapters/`` (our safetensors + adapters.json) and the unchanged
    base model in ``hf/`` (these adapters do not merge into the weights)."""
    from engine.model.hf import export_hf
    from stages.adapters import remove_adapters, save_adapters
    from stages.lora import remove_lora, save_adapter

    written = {}
    if getattr(model, "adapter_config", None) is not None:
        written["adapters"] = str(save_adapters(model, out / "adapters"))
        remove_adapters(model)
    if lora:
        written["adapter"] = str(save_adapter(model, out / "adapter"))
        remove_lora(model, merge=True)
    written["hf"] = str(export_hf(model, out / "hf"))
    return written


def _prepare(out_dir, loop: LoopConfig) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    loop.out_dir = str(out)
    return out


def run_sft(model_path, examples, out_dir, config: str | None = None,
            overrides: dict | None = None) -> dict:
    """SFT of the model at ``model_path`` on ``examples``; held-out response loss before and
    after; returns (and writes) ``summary.json``."""
    from stages.sft import SFTConfig, response_loss, train_sft

    cfg, data = load_stage_config(config, SFTConfig, overrides or {})
    model = load_policy(model_path).to(device())
    train, held = sft_data(examples, model, data)
    out = _prepare(out_dir, cfg.loop)
    start = time.perf_counter()
    before = {} if held is None else {"response_loss": response_loss(model, held)}
    history = train_sft(model, train, cfg, eval_examples=held)
    after = {} if held is None else {"response_loss": history[-1]["eval/response_loss"]}
    summary = {"stage": "sft", "model": str(model_path), "examples": len(train),
               "heldout": 0 if held is None else len(held), "steps": len(history),
               "final_loss": history[-1]["loss"], "before": before, "after": after,
               "seconds": time.perf_counter() - start,
               **_export_policy(model, out, cfg.lora is not None)}
    return _write_summary(out, summary)


def run_reward(model_path, examples, out_dir, config: str | None = None,
               overrides: dict | None = None) -> dict:
    """A Bradley–Terry reward model from the policy at ``model_path``; held-out accuracy before
    (the fresh head) and after; the model goes to ``hf/`` (LlamaForSequenceClassification)."""
    from stages.reward import RewardModel, preference_accuracy, train_reward

    cfg, data = load_stage_config(config, RewardConfig, overrides or {})
    model = load_policy(model_path).to(device())
    train, held = preference_data(examples, model, data)
    reward = RewardModel.from_policy(model)
    out = _prepare(out_dir, cfg.loop)
    start = time.perf_counter()
    before = {} if held is None else preference_accuracy(reward, held, cfg.batch_size)
    history = train_reward(reward, train, cfg, eval_pairs=held)
    after = {} if held is None else {k: history[-1][f"eval/{k}"] for k in before}
    summary = {"stage": "reward", "model": str(model_path), "pairs": len(train),
               "heldout": 0 if held is None else len(held), "steps": len(history),
               "final_loss": history[-1]["loss"], "before": before, "after": after,
               "seconds": time.perf_counter() - start,
               "hf": str(save_reward_model(reward, out / "hf"))}
    return _write_summary(out, summary)


def run_dpo(model_path, examples, out_dir, config: str | None = None,
            overrides: dict | None = None) -> dict:
    """DPO (or a variant) of the policy at ``model_path``; held-out implicit-reward accuracy
    after, and the log-prob preference accuracy (:func:`logp_accuracy`) before and after."""
    from stages.dpo import train_dpo

    cfg, data = load_stage_config(config, DPOConfig, overrides or {})
    model = load_policy(model_path).to(device())
    train, held = preference_data(examples, model, data)
    out = _prepare(out_dir, cfg.loop)
    start = time.perf_counter()
    before = {} if held is None else {"logp_accuracy": logp_accuracy(model, held)}
    history = train_dpo(model, train, cfg, eval_pairs=held)
    after = {} if held is None else {
        "logp_accuracy": logp_accuracy(model, held),
        "accuracy": history[-1]["eval/accuracy"], "margin": history[-1]["eval/margin"]}
    summary = {"stage": "dpo", "loss": cfg.loss, "model": str(model_path), "pairs": len(train),
               "heldout": 0 if held is None else len(held), "steps": len(history),
               "final_loss": history[-1]["loss"], "before": before, "after": after,
               "seconds": time.perf_counter() - start,
               **_export_policy(model, out, cfg.lora is not None)}
    return _write_summary(out, summary)


PPO_EVAL_PROMPTS = 32  # held-out prompts scored before and after PPO/GRPO (same sampling seed)


def run_ppo(model_path, reward_path, examples, out_dir, config: str | None = None,
            overrides: dict | None = None) -> dict:
    """PPO or GRPO of the policy at ``model_path`` against the reward model of ``crucible
    reward`` at ``reward_path``, sampling the preference examples' prompts."""
    from stages.examples import read_preferences
    from stages.ppo import PPOTrainer

    cfg, data = load_stage_config(config, PPOConfig, overrides or {})
    dev = device()
    policy = load_policy(model_path).to(dev)
    reward = load_reward_model(reward_path).to(dev).eval().requires_grad_(False)
    manifest = Path(examples) / "manifest.json"
    if cfg.eos_id is None and manifest.exists():
        cfg.eos_id = json.loads(manifest.read_text())["chat_template"]["end_of_turn_id"]
    prompts = read_preferences(examples).prompt_ids
    keep = _fits([len(p) + cfg.max_new_tokens for p in prompts], policy.config.max_seq_len,
                 f"{examples} (prompt + max_new_tokens)")
    prompts = [prompts[i].tolist() for i in keep]
    held_out = prompts[-PPO_EVAL_PROMPTS:] if len(prompts) > 2 * PPO_EVAL_PROMPTS else []
    prompts = prompts[:len(prompts) - len(held_out)][:data.max_examples]

    def reward_fn(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return reward(ids.to(dev), lengths.to(dev)).cpu()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "metrics.jsonl", "w", buffering=1) as log:
        def record(update: int, stats: dict[str, float]) -> None:
            log.write(json.dumps({"step": update, **stats}) + "\n")
            print(f"{cfg.algorithm}: update {update}/{cfg.updates}  reward "
                  f"{stats['reward']:.4f}  kl {stats['kl']:.4f}  "
                  f"{time.perf_counter() - start:.1f}s", file=sys.stderr)

        trainer = PPOTrainer(policy, reward_fn, prompts, cfg)
        before = trainer.evaluate(held_out) if held_out else None
        history = trainer.train(log=record)
        after = trainer.evaluate(held_out) if held_out else None
    summary = {"stage": cfg.algorithm, "model": str(model_path), "reward_model": str(reward_path),
               "prompts": len(prompts), "updates": len(history),
               "held_out_prompts": len(held_out), "held_out_before": before,
               "held_out_after": after,
               "reward_first": history[0]["reward"], "reward_last": history[-1]["reward"],
               "kl_last": history[-1]["kl"], "seconds": time.perf_counter() - start,
               **_export_policy(policy, out, False)}
    return _write_summary(out, summary)


def run_eval(model_path, out_dir=None, *, tokens=None, seq_len: int = 128,
             max_batches: int | None = 20, sft=None, preference=None, reward_path=None,
             gsm8k=None, gsm8k_count: int = 8, tokenizer=None, max_new_tokens: int = 128,
             reference=None, win_rate_prompts: int = 32,
             progress: Callable[[str], None] | None = None) -> dict:
    """Whichever evaluations are given inputs: perplexity on token shards, response loss on SFT
    examples, preference accuracy (the policy's log-probs; the reward model's with
    ``reward_path``), GSM8K exact match of greedy answers to the first ``gsm8k_count`` rows of
    a ``prompt``/``response`` JSONL (``tokenizer`` needed). Writes ``eval.json`` to
    ``out_dir`` when given; returns the results."""
    from stages.eval import exact_match, perplexity
    from stages.sft import response_loss

    say = progress or (lambda msg: print(f"eval: {msg}", file=sys.stderr))
    model = load_policy(model_path).to(device()).eval()
    results: dict[str, Any] = {"model": str(model_path)}
    if tokens is not None:
        results["perplexity"] = perplexity(model, tokens, seq_len, max_batches=max_batches)
        say(f"held-out perplexity {results['perplexity']['perplexity']:.2f}")
    if sft is not None:
        examples = read_sft(sft)
        keep = _fits([len(x) for x in examples.input_ids], model.config.max_seq_len, str(sft))
        results["response_loss"] = response_loss(model, examples.subset(keep))
        say(f"response loss {results['response_loss']:.4f} on {len(keep)} examples")
    if preference is not None:
        pairs, _ = preference_data(preference, model, DataSelection())
        results["logp_accuracy"] = logp_accuracy(model, pairs)
        if reward_path is not None:
            from stages.reward import preference_accuracy

            rm = load_reward_model(reward_path).to(device())
            results["reward_accuracy"] = preference_accuracy(rm, pairs)
            if reference is not None:
                results["win_rate"] = _win_rate(model, reference, rm, preference,
                                                win_rate_prompts, max_new_tokens)
                say(f"reward-model win rate against {reference}: "
                    f"{results['win_rate']['win_rate']:.3f} on "
                    f"{results['win_rate']['prompts']} prompts")
        say(f"preference accuracy (log-probs) {results['logp_accuracy']:.3f} on {len(pairs)}")
    if gsm8k is not None:
        results["gsm8k"] = gsm8k_exact_match(model, gsm8k, gsm8k_count, tokenizer,
                                             max_new_tokens, exact_match)
        say(f"GSM8K exact match {results['gsm8k']['exact_match']:.3f} on "
            f"{results['gsm8k']['problems']} problems")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "eval.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def _win_rate(model, reference_path, rm, preference, count: int, max_new_tokens: int) -> dict:
    """Reward-model win rate of ``model`` against the model at ``reference_path`` on the last
    ``count`` prompts of the preference examples (greedy responses)."""
    from stages.eval import reward_win_rate
    from stages.examples import read_preferences

    reference = load_policy(reference_path).to(device())
    manifest = Path(preference) / "manifest.json"
    eos = (json.loads(manifest.read_text())["chat_template"]["end_of_turn_id"]
           if manifest.exists() else None)
    limit = model.config.max_seq_len - max_new_tokens
    prompts = [p.tolist() for p in read_preferences(preference).prompt_ids if len(p) <= limit]

    def reward_fn(ids, lengths):
        return rm(ids.to(device()), lengths.to(device()))

    return reward_win_rate(model, reference, reward_fn, prompts[-count:],
                           max_new_tokens=max_new_tokens, pad_id=0, eos_id=eos)


def gsm8k_exact_match(model, path, count: int, tokenizer, max_new_tokens: int, exact_match
                      ) -> dict:
    """Greedy answers to the last ``count`` problems of a GSM8K ``prompt``/``response`` JSONL
    whose prompts fit the model with ``max_new_tokens`` (the end of the file: the demo trains
    SFT on its start) and their exact match."""
    from curation.tokens.records import RecordFile
    from curation.tokens.tokenizer import load_tokenizer
    from stages.constitutional import model_generator

    if tokenizer is None:
        raise ValueError("GSM8K evaluation generates text: give the tokenizer (--tokenizer)")
    from curation.tokens.chat import render_prompts

    info = load_tokenizer(tokenizer)
    rows = [r for batch in RecordFile(Path(path)).batches(1000) for r in batch]
    lengths = [len(p) for p in render_prompts(info, [[{"role": "user", "content": r["prompt"]}]
                                                     for r in rows])]
    limit = model.config.max_seq_len - max_new_tokens
    rows = [r for r, n in zip(rows, lengths) if n <= limit][-count:]
    if not rows:
        raise ValueError(f"{path}: no problem fits {limit} prompt tokens (max_seq_len "
                         f"{model.config.max_seq_len} - max_new_tokens {max_new_tokens})")
    generate_text = model_generator(model, info, max_new_tokens=max_new_tokens)
    answers = generate_text([r["prompt"] for r in rows])
    return {"exact_match": exact_match(answers, [r["response"] for r in rows]),
            "problems": len(rows), "examples": [{"prompt": r["prompt"][:200], "answer": a[:300]}
                                                for r, a in zip(rows[:3], answers[:3])]}
