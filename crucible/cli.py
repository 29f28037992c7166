"""The ``crucible`` command: one entry point, one subcommand per capability.

Subcommands import their heavy dependencies lazily, so ``crucible --help`` and the curation
commands never import torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crucible import __version__


def _add_profile(subparsers: argparse._SubParsersAction) -> None:
    profile = subparsers.add_parser(
        "profile", help="time crucible's hot paths against the PyTorch implementations",
        description="Time crucible's hot paths against the implementations a user would "
                    "otherwise pick, in the same run, and print the ratios.")
    targets = profile.add_subparsers(dest="target", metavar="TARGET", required=True)
    optim = targets.add_parser(
        "optim", help="FusedAdamW vs torch.optim.AdamW (foreach, fused, with clipping)",
        description="Time one optimizer step of FusedAdamW against torch.optim.AdamW "
                    "(foreach=True and fused=True), and FusedAdamW(max_grad_norm) against "
                    "clip_grad_norm_ + AdamW(fused=True), over Llama-shaped parameter lists. "
                    "Prints ms/step, GB/s and the share of measured copy bandwidth.")
    optim.add_argument("--quick", action="store_true",
                       help="two small model sizes and few repeats (well under two minutes)")
    optim.add_argument("--models", nargs="+", metavar="SIZE",
                       help="model sizes to profile: tiny, small, base "
                            "(default: tiny small with --quick, all three otherwise)")
    optim.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads (default: torch's default, one per core)")
    optim.add_argument("--json", metavar="PATH", default=None,
                       help="also write the results in the bench/results JSON format to PATH")
    optim.set_defaults(func=_run_profile_optim)
    from engine.profiling.attention import add_attention_parser  # torch-free until it runs

    add_attention_parser(targets)
    from engine.commands import add_profile_train_parser

    add_profile_train_parser(targets)


def _run_profile_optim(args: argparse.Namespace) -> int:
    import torch

    from crucible.benchmarking import machine_info, print_table, write_results
    from engine.profiling.optim import run

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"crucible profile optim: --threads must be >= 1 (got {args.threads})")
        torch.set_num_threads(args.threads)
    rows, copy_gbps = run(quick=args.quick, models=args.models,
                          progress=lambda msg: print(f"[profile optim] {msg}", file=sys.stderr))
    machine = machine_info()
    print_table(f"optimizer step on {machine['cpu']} ({torch.get_num_threads()} threads, "
                f"copy bandwidth {copy_gbps:.1f} GB/s)", rows, ("ours_gbps", "pct_copy_bw"))
    if args.json:
        from pathlib import Path

        path = Path(args.json)
        write_results(path.stem, {**machine, "copy_gbps": round(copy_gbps, 2)}, rows, path.parent)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _add_curate(subparsers: argparse._SubParsersAction) -> None:
    curate = subparsers.add_parser(
        "curate", help="run a curation job over Parquet shards",
        description="Read raw Parquet shards, run a pipeline of curation steps over Arrow "
                    "record batches, and write curated shards, rejected rows with reasons "
                    "(rejected/<step>/), manifest.json, stats.json and report.html into the "
                    "output directory. Without --config the default pipeline runs (normalize, "
                    "exact dedup, language ID, Gopher/C4/FineWeb quality rules, MinHash "
                    "near-dedup, PII scrubbing).",
        epilog="Exit status: 0 when every shard finished, 1 when some were quarantined (their "
               "reasons are printed and kept in manifest.json; fix and rerun with --resume), "
               "2 for a bad config or command line.")
    curate.add_argument("--config", metavar="FILE", help="job YAML (input, output, executor, "
                        "pipeline, preset); see curation/config.py for every key")
    curate.add_argument("--preset", choices=["default", "fineweb", "gopher", "c4"],
                        help="published rule set to use when the config has no pipeline")
    curate.add_argument("--input", nargs="+", metavar="PATH",
                        help="Parquet files, folders or globs (override input.paths)")
    curate.add_argument("--output", metavar="DIR", help="output directory (override output.dir)")
    curate.add_argument("--executor", choices=["local", "ray"],
                        help="local worker processes (default) or a Ray cluster")
    curate.add_argument("--workers", type=int, metavar="N",
                        help="parallel shard tasks (default: one per core)")
    curate.add_argument("--ray-address", metavar="ADDR",
                        help="Ray cluster address: auto, or host:port (default: start a local "
                             "Ray instance)")
    curate.add_argument("--resume", action="store_true",
                        help="finish the job recorded in the output directory's manifest.json "
                             "(done shards are skipped, everything else is redone)")
    curate.add_argument("--no-progress", action="store_true", help="no progress bars")
    curate.set_defaults(func=_run_curate)


def _run_curate(args: argparse.Namespace) -> int:
    from curation.config import load_config
    from curation.job import JobError, run_job

    try:
        config = load_config(args.config, inputs=args.input, output=args.output,
                             executor=args.executor, workers=args.workers,
                             ray_address=args.ray_address, preset=args.preset)
        summary = run_job(config, resume=args.resume, show_progress=not args.no_progress)
    except (ValueError, FileNotFoundError, JobError) as exc:
        print(f"crucible curate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"crucible curate: cannot write the output ({exc}); choose a writable --output",
              file=sys.stderr)
        return 2
    out = summary.out_dir
    print(f"crucible curate: {summary.rows_in:,} rows in, {summary.rows_kept:,} kept, "
          f"{summary.rows_rejected:,} rejected, {summary.shards_done} shards done in "
          f"{summary.seconds:.1f}s")
    print(f"  curated shards: {out}/")
    print(f"  rejected rows:  {out / 'rejected'}/")
    print(f"  report:         {out / 'report.html'}")
    if not summary.ok:
        print(f"crucible curate: {len(summary.quarantined)} shard(s) quarantined:",
              file=sys.stderr)
        for shard, reason in summary.quarantined.items():
            print(f"  {shard}: {reason.strip()}", file=sys.stderr)
        print("  fix the inputs and rerun with --resume to finish the job", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``crucible`` command (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="crucible",
        description="crucible: raw text to an aligned language model. Curate Parquet shards, "
                    "train with compiled kernels, and run the SFT/alignment stages.")
    parser.add_argument("--version", action="version", version=f"crucible {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_curate(subparsers)
    _add_lm(subparsers)
    _add_quality(subparsers)
    _add_tokens(subparsers)
    _add_train(subparsers)
    from engine.commands import add_plan_parser

    add_plan_parser(subparsers)
    _add_profile(subparsers)
    _add_pipeline(subparsers)
    _add_stages(subparsers)
    return parser


def _add_stages(subparsers: argparse._SubParsersAction) -> None:
    from stages.cli import add_stage_parsers  # torch-free until a stage runs

    add_stage_parsers(subparsers)


def _add_lm(subparsers: argparse._SubParsersAction) -> None:
    from curation.lm.cli import add_lm_parser

    add_lm_parser(subparsers)


def _add_quality(subparsers: argparse._SubParsersAction) -> None:
    from curation.quality.cli import add_quality_parser

    add_quality_parser(subparsers)


def _add_tokens(subparsers: argparse._SubParsersAction) -> None:
    from curation.tokens.cli import add_tokenize_parser, add_tokenizer_parser

    add_tokenizer_parser(subparsers)
    add_tokenize_parser(subparsers)


def _add_pipeline(subparsers: argparse._SubParsersAction) -> None:
    from engine.distributed.cli import add_pipeline_parser

    add_pipeline_parser(subparsers)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train a model on token shards (torchrun for several ranks)",
        description="Train a Llama-style model on the token shards of `crucible tokenize`. "
                    "One process is one rank: for several, run `torchrun --nproc_per_node N "
                    "-m engine.train CONFIG`. Same arguments as python -m engine.train.",
        add_help=False)
    train.add_argument("args", nargs=argparse.REMAINDER,
                       help="CONFIG [KEY=VALUE ...] [--export DIR]; --help for details")
    train.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from engine.train import main as train_main

    return train_main(args.args, prog="crucible train")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``crucible`` command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its own parser (shared with python -m engine.train)
        return _run_train(argparse.Namespace(args=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
