"""``crucible plan`` and ``crucible profile train``: parsers and runners (torch imported lazily)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_plan_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``plan`` to the ``crucible`` parser."""
    from engine.metrics import PEAK_FLOPS

    plan = subparsers.add_parser(
        "plan", help="parameters, FLOPs, optimal tokens, memory and wall time of a run",
        description="Before launching: the model's parameters and FLOPs per token, the "
                    "Chinchilla-optimal token count (20 per parameter) with the loss the "
                    "Chinchilla fit predicts, memory per rank for DDP and ZeRO-1/2/3 (FSDP), "
                    "and the wall time on a device at a given or measured MFU.")
    plan.add_argument("config", nargs="?", help="training YAML")
    plan.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    plan.add_argument("--world", type=int, default=1, help="ranks (default: 1)")
    plan.add_argument("--device", default="H100", choices=sorted(PEAK_FLOPS),
                      help="device for the wall-time estimate (default: H100, SXM bf16 dense)")
    plan.add_argument("--mfu", type=float, help="assumed MFU, e.g. 0.4")
    plan.add_argument("--metrics", metavar="FILE",
                      help="metrics.jsonl of a run: its median measured MFU is used")
    plan.add_argument("--tokens", type=float, help="tokens to train on (default: the "
                                                   "config's steps x batch x seq_len x world)")
    plan.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from engine.config import load_train_config
    from engine.plan import measured_mfu, plan_text

    try:
        config = load_train_config(_config_arg(args), args.overrides)
        mfu = args.mfu
        if mfu is None and args.metrics:
            mfu = measured_mfu(Path(args.metrics))
        print(plan_text(config, world=args.world, device=args.device, mfu=mfu,
                        tokens=args.tokens))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"crucible plan: {exc}", file=sys.stderr)
        return 2
    return 0


def _config_arg(args: argparse.Namespace) -> str | None:
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)
        return None
    return args.config


def add_profile_train_parser(targets: argparse._SubParsersAction) -> None:
    """Adds ``profile train`` to the ``crucible profile`` parser."""
    train = targets.add_parser(
        "train", help="a few training steps under torch.profiler: Chrome trace + top ops",
        description="Run a few training steps of CONFIG under torch.profiler; write a Chrome "
                    "trace and print the top ops by self time with crucible's kernels marked "
                    "(NVTX ranges per step/phase on CUDA).")
    train.add_argument("config", nargs="?", help="training YAML")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.add_argument("--steps", type=int, default=3, help="profiled steps (default: 3)")
    train.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    train.add_argument("--trace", default="out/profile/train_trace.json", metavar="FILE",
                       help="Chrome trace to write (default: out/profile/train_trace.json)")
    train.set_defaults(func=_run_profile_train)


def _run_profile_train(args: argparse.Namespace) -> int:
    from engine.config import load_train_config
    from engine.profiling.train import profile_train

    try:
        config = load_train_config(_config_arg(args), args.overrides)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"crucible profile train: {exc}", file=sys.stderr)
        return 2
    print(profile_train(config, steps=args.steps, warmup=args.warmup, out=Path(args.trace)))
    return 0
