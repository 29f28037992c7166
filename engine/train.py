"""Entry point: ``torchrun --nproc_per_node N -m engine.train CONFIG [key=value ...]``.

One process per rank; the trainer owns the loop. Also ``crucible train CONFIG``.
"""

from __future__ import annotations

import argparse
import sys

from engine.config import load_train_config


def build_parser(prog: str = "python -m engine.train") -> argparse.ArgumentParser:
    """The command line shared by ``engine.train`` and ``crucible train``."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Train a Llama-style model on token shards (one process per "
                               "rank: launch with torchrun for several).",
        epilog="Example: torchrun --nproc_per_node 2 -m engine.train configs/tiny.yaml "
               "optim.lr=1e-3 steps=500")
    parser.add_argument("config", nargs="?", help="training YAML (engine/config.py documents "
                                                  "every key)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. data.seq_len=256 parallel=fsdp")
    parser.add_argument("--export", metavar="DIR",
                        help="after training, write the model as a Hugging Face Llama "
                             "checkpoint (safetensors + config.json) to DIR")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m engine.train") -> int:
    """Parses the command line, trains, optionally exports; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)  # only overrides were given
        args.config = None
    try:
        config = load_train_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    from engine.trainer import Trainer

    trainer = Trainer(config)
    result = trainer.train()
    if args.export:
        from engine.model.export import export_trained

        export_trained(trainer, args.export)
    if trainer.info.is_main:
        last = result.losses[max(result.losses)] if result.losses else float("nan")
        print(f"train: {result.steps} steps, last loss {last:.4f}, "
              f"{result.tokens_per_s:,.0f} tokens/s, MFU {100 * result.mfu:.1f}%",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
