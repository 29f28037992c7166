"""``crucible sft|reward|dpo|ppo|eval|constitutional|demo``: the stage subcommands.

Each loads a model (an HF export directory, or a training checkpoint or run directory), reads
tokenized examples, takes a small YAML config (the stage's config dataclass fields; see
:mod:`stages.commands`) and flags that override it, and writes ``--out``. Torch is imported only
when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODEL_HELP = ("the model: an HF Llama export directory (config.json + safetensors, e.g. "
              "`crucible train ... --export DIR`), a training checkpoint directory, or a "
              "training run's out_dir (its last checkpoint)")
CONFIG_HELP = ("stage YAML: the fields of the stage's config (loop: {steps, lr, ...}, lora: "
               "{r, alpha, ...}, batch_size, ...) and data: {max_examples, eval_count, seed}; "
               "see configs/stages/demo_*.yaml")


def _common(parser: argparse.ArgumentParser, examples_help: str) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help=MODEL_HELP)
    parser.add_argument("--examples", required=True, metavar="DIR", help=examples_help)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory: metrics.jsonl, summary.json, hf/ (the trained "
                             "model, HF layout)")
    parser.add_argument("--config", metavar="YAML", help=CONFIG_HELP)
    parser.add_argument("--steps", type=int, help="optimizer steps (overrides loop.steps)")
    parser.add_argument("--lr", type=float, help="peak learning rate (overrides loop.lr)")
    parser.add_argument("--batch-size", type=int, help="examples or pairs per micro-batch")
    parser.add_argument("--eval-count", type=int,
                        help="examples held out for the before/after evaluation "
                             "(overrides data.eval_count)")


def _lora_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", action="store_true",
                        help="train LoRA adapters (r=8, alpha=16 on wq/wk/wv/wo unless the "
                             "config has lora:) on a frozen model; writes adapter/ in PEFT "
                             "layout and the merged model in hf/")


def _overrides(args: argparse.Namespace) -> dict:
    return {"loop.steps": args.steps, "loop.lr": args.lr, "batch_size": args.batch_size,
            "data.eval_count": args.eval_count}


def _with_lora(args: argparse.Namespace, overrides: dict) -> dict:
    """Enables LoRA with its defaults when --lora is given and the config has none."""
    if not getattr(args, "lora", False):
        return overrides
    import yaml

    has = False
    if args.config:
        has = bool((yaml.safe_load(Path(args.config).read_text()) or {}).get("lora"))
    return overrides if has else {**overrides, "lora.r": 8}


def add_stage_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Adds the stage subcommands to the ``crucible`` parser."""
    sft = subparsers.add_parser(
        "sft", help="supervised fine-tuning on `crucible tokenize --kind sft` examples",
        description="Fine-tune a model on tokenized SFT examples (packed rows, loss on the "
                    "assistant tokens only), full or LoRA. Holds out data.eval_count examples "
                    "and reports their response loss before and after.")
    _common(sft, "SFT examples: the output directory of `crucible tokenize --kind sft`")
    _lora_flag(sft)
    sft.set_defaults(func=_run, stage="sft")

    reward = subparsers.add_parser(
        "reward", help="train a Bradley-Terry reward model on preference pairs",
        description="Train a reward model (the decoder with a scalar head) on tokenized "
                    "preference pairs; reports held-out accuracy before and after and writes "
                    "hf/ as a LlamaForSequenceClassification (num_labels 1) for `crucible ppo`.")
    _common(reward, "preference pairs: the output directory of `crucible tokenize --kind "
                    "preference`")
    reward.set_defaults(func=_run, stage="reward")

    dpo = subparsers.add_parser(
        "dpo", help="direct preference optimisation (and IPO, SimPO, ORPO, robust DPO)",
        description="Optimise a policy on tokenized preference pairs with a DPO-family loss "
                    "(the reference is the starting model). Reports the held-out implicit-"
                    "reward accuracy and the log-prob preference accuracy before and after.")
    _common(dpo, "preference pairs: the output directory of `crucible tokenize --kind "
                 "preference`")
    dpo.add_argument("--loss", choices=["sigmoid", "robust", "ipo", "simpo", "orpo"],
                     help="preference loss (default: the config's, else sigmoid = DPO)")
    dpo.add_argument("--beta", type=float, help="inverse temperature of the implicit reward")
    _lora_flag(dpo)
    dpo.set_defaults(func=_run, stage="dpo")

    ppo = subparsers.add_parser(
        "ppo", help="PPO or GRPO against a reward model from `crucible reward`",
        description="Reinforcement learning from a reward model: sample the preference "
                    "examples' prompts with the policy, score with the reward model, update "
                    "with PPO (critic + GAE) or GRPO (group-normalised advantages).")
    ppo.add_argument("--model", required=True, metavar="PATH", help=MODEL_HELP)
    ppo.add_argument("--reward-model", required=True, metavar="DIR",
                     help="the output directory of `crucible reward` (or its hf/)")
    ppo.add_argument("--examples", required=True, metavar="DIR",
                     help="preference pairs whose prompt_ids are the prompts")
    ppo.add_argument("--out", required=True, metavar="DIR",
                     help="output directory: metrics.jsonl (one line per update), "
                          "summary.json, hf/")
    ppo.add_argument("--config", metavar="YAML",
                     help="PPOConfig fields (updates, rollout_prompts, max_new_tokens, lr, "
                          "kl_coef, ...) and data: {max_examples}")
    ppo.add_argument("--algorithm", choices=["ppo", "grpo"], help="default: ppo")
    ppo.add_argument("--updates", type=int, help="rollout + optimisation rounds")
    ppo.add_argument("--lr", type=float, help="policy learning rate")
    ppo.set_defaults(func=_run_ppo)

    ev = subparsers.add_parser(
        "eval", help="perplexity, response loss, preference accuracy, GSM8K exact match",
        description="Evaluate a model on whichever inputs are given and print a table; "
                    "writes eval.json into --out when given.")
    ev.add_argument("--model", required=True, metavar="PATH", help=MODEL_HELP)
    ev.add_argument("--tokens", metavar="DIR", help="held-out token shards (`crucible "
                                                    "tokenize`): perplexity")
    ev.add_argument("--seq-len", type=int, default=128, help="perplexity row length "
                                                             "(default 128)")
    ev.add_argument("--max-batches", type=int, default=20,
                    help="perplexity batches of 8 rows to read (default 20)")
    ev.add_argument("--sft", metavar="DIR", help="SFT examples: mean response loss")
    ev.add_argument("--preference", metavar="DIR",
                    help="preference pairs: how often the model's mean log-prob prefers the "
                         "chosen reply (and the reward model's accuracy with --reward-model)")
    ev.add_argument("--reward-model", metavar="DIR", help="a `crucible reward` output")
    ev.add_argument("--reference", metavar="PATH",
                    help="with --preference and --reward-model: the reward model's win rate of "
                         "--model's greedy responses against this model's on the last "
                         "--win-rate-prompts prompts (ties count half)")
    ev.add_argument("--win-rate-prompts", type=int, default=32,
                    help="prompts for the win rate (default 32)")
    ev.add_argument("--gsm8k", metavar="JSONL", help="GSM8K prompt/response rows: exact match "
                                                     "of greedy answers (needs --tokenizer)")
    ev.add_argument("--gsm8k-count", type=int, default=8,
                    help="problems from the end of the file (default 8)")
    ev.add_argument("--max-new-tokens", type=int, default=96,
                    help="longest generated answer (default 96)")
    ev.add_argument("--tokenizer", metavar="DIR", help="the tokenizer (for generation)")
    ev.add_argument("--out", metavar="DIR", help="write eval.json here")
    ev.set_defaults(func=_run_eval)

    cai = subparsers.add_parser(
        "constitutional", help="critique → revision preference pairs against principles",
        description="Constitutional AI data (RLAIF): the model answers each prompt, critiques "
                    "its answer against a principle, revises it; writes prompt/chosen "
                    "(revision)/rejected (answer) Parquet that `crucible tokenize --kind "
                    "preference` reads.")
    cai.add_argument("--model", required=True, metavar="PATH", help=MODEL_HELP)
    cai.add_argument("--tokenizer", required=True, metavar="DIR", help="the chat tokenizer")
    cai.add_argument("--prompts", required=True, metavar="FILE",
                     help="prompts: a text file (one per line), or JSONL/Parquet with a "
                          "'prompt' column or HH-RLHF 'chosen' transcripts")
    cai.add_argument("--principles", default="configs/stages/principles.yaml", metavar="FILE",
                     help="YAML list of {name, critique, revision} or a text file, one "
                          "principle per line (default configs/stages/principles.yaml)")
    cai.add_argument("--out", required=True, metavar="DIR",
                     help="output: pairs.parquet, rejected/pairs.parquet, manifest.json")
    cai.add_argument("--limit", type=int, default=64, help="prompts to use (default 64)")
    cai.add_argument("--max-new-tokens", type=int, default=64,
                     help="longest answer, critique or revision (default 64)")
    cai.add_argument("--temperature", type=float, default=0.0,
                     help="sampling temperature (default 0: greedy)")
    cai.add_argument("--seed", type=int, default=0, help="principle rotation and sampling seed")
    cai.set_defaults(func=_run_constitutional)

    from stages.demo import add_demo_parser

    add_demo_parser(subparsers)


def _fail(stage: str, exc: Exception) -> int:
    print(f"crucible {stage}: {exc}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from stages import commands

    overrides = {k: v for k, v in _overrides(args).items() if v is not None}
    overrides = _with_lora(args, overrides)
    if args.stage == "dpo":
        overrides.update({k: v for k, v in (("loss", args.loss), ("beta", args.beta)) if v})
    run = {"sft": commands.run_sft, "reward": commands.run_reward, "dpo": commands.run_dpo}
    try:
        summary = run[args.stage](args.model, args.examples, args.out, args.config, overrides)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        return _fail(args.stage, exc)
    _print_summary(args.stage, summary)
    return 0


def _print_summary(stage: str, summary: dict) -> None:
    print(f"crucible {stage}: {summary.get('steps', summary.get('updates'))} steps in "
          f"{summary['seconds']:.1f}s; output {summary.get('hf', '')}")
    for key in sorted(set(summary.get("before", {})) | set(summary.get("after", {}))):
        b, a = summary["before"].get(key), summary["after"].get(key)
        print(f"  {key:<16} before {'-' if b is None else f'{b:.4f}'}   after "
              f"{'-' if a is None else f'{a:.4f}'}")


def _run_ppo(args: argparse.Namespace) -> int:
    from stages.commands import run_ppo

    overrides = {"algorithm": args.algorithm, "updates": args.updates, "lr": args.lr}
    try:
        summary = run_ppo(args.model, args.reward_model, args.examples, args.out, args.config,
                          overrides)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        return _fail("ppo", exc)
    print(f"crucible {summary['stage']}: {summary['updates']} updates in "
          f"{summary['seconds']:.1f}s; reward {summary['reward_first']:.4f} → "
          f"{summary['reward_last']:.4f}; output {summary['hf']}")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from stages.commands import run_eval

    if not any((args.tokens, args.sft, args.preference, args.gsm8k)):
        return _fail("eval", ValueError("nothing to evaluate: give --tokens, --sft, "
                                        "--preference and/or --gsm8k"))
    try:
        run_eval(args.model, args.out, tokens=args.tokens, seq_len=args.seq_len,
                 max_batches=args.max_batches, sft=args.sft, preference=args.preference,
                 reward_path=args.reward_model, gsm8k=args.gsm8k, gsm8k_count=args.gsm8k_count,
                 tokenizer=args.tokenizer, max_new_tokens=args.max_new_tokens,
                 reference=args.reference, win_rate_prompts=args.win_rate_prompts,
                 progress=lambda msg: print(f"  {msg}"))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        return _fail("eval", exc)
    return 0


def _run_constitutional(args: argparse.Namespace) -> int:
    from curation.tokens.tokenizer import load_tokenizer
    from stages.commands import device
    from stages.constitutional import (config_dict, constitutional_pairs, load_principles,
                                       model_generator, read_prompts, write_pairs)
    from stages.model_io import load_policy

    try:
        principles = load_principles(args.principles)
        prompts = read_prompts(args.prompts, args.limit)
        model = load_policy(args.model).to(device())
        generate_text = model_generator(model, load_tokenizer(args.tokenizer),
                                        args.max_new_tokens, args.temperature, seed=args.seed)
        result = constitutional_pairs(prompts, generate_text, principles, args.seed)
        path = write_pairs(result, args.out, config_dict(
            principles, model=str(args.model), prompts=str(args.prompts),
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        return _fail("constitutional", exc)
    print(f"crucible constitutional: {len(prompts)} prompts, {len(result.pairs)} pairs, "
          f"{len(result.rejected)} rejected in {result.seconds:.1f}s; wrote {path}")
    return 0
