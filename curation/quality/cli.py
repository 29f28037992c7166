"""``crucible quality train``: the command-line front of :mod:`curation.quality.train`.

``crucible/cli.py`` wires it in with ``add_quality_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
import sys


def add_quality_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``quality`` (with its ``train`` subcommand) to the ``crucible`` command line."""
    quality = subparsers.add_parser(
        "quality", help="train a model-based quality classifier (DCLM-style)",
        description="Model-based quality classification: train a fastText classifier on "
                    "high-quality reference text against low-quality text, for the "
                    "quality_classifier curation step.")
    commands = quality.add_subparsers(dest="quality_command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train", help="train a quality classifier",
        description="Train a fastText classifier (__label__hq vs __label__lq, word bigrams) on "
                    "positive and negative documents, balanced by subsampling the larger side, "
                    "and write DIR/model.bin and DIR/config.json (sources, counts, parameters, "
                    "held-out accuracy and ROC AUC, held-out score quantiles).",
        epilog="Exit status: 0 on success, 2 for missing inputs or bad options.")
    train.add_argument("--positive", nargs="+", required=True, metavar="PATH",
                       help="high-quality documents: Parquet files, folders or globs, or .txt "
                            "files with one document per line")
    train.add_argument("--negative", nargs="+", required=True, metavar="PATH",
                       help="low-quality documents, same forms (e.g. a curation job's "
                            "rejected/ folder)")
    train.add_argument("--text-column", default="text", metavar="NAME",
                       help="Parquet column holding the text (default: text)")
    train.add_argument("--output", required=True, metavar="DIR",
                       help="directory for model.bin and config.json")
    train.add_argument("--epochs", type=int, default=5, metavar="N",
                       help="training epochs (default: 5; raise it to 20+ for a few hundred "
                            "documents per class)")
    train.add_argument("--lr", type=float, default=0.1, help="learning rate (default: 0.1)")
    train.add_argument("--dim", type=int, default=100, help="embedding size (default: 100)")
    train.add_argument("--bucket", type=int, default=2_000_000, metavar="N",
                       help="hashed bigram rows (default: 2,000,000); the model file holds "
                            "bucket x dim floats (800 MB at the defaults)")
    train.add_argument("--holdout", type=float, default=0.1, metavar="F",
                       help="fraction of each class held out for accuracy and AUC (default: 0.1)")
    train.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from curation.quality.train import train_quality_classifier

    try:
        result = train_quality_classifier(args.positive, args.negative, args.output,
                                          text_column=args.text_column, epochs=args.epochs,
                                          lr=args.lr, dim=args.dim, bucket=args.bucket,
                                          holdout=args.holdout)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"crucible quality train: {exc}", file=sys.stderr)
        return 2
    pos = result.config["positive"]
    print(f"crucible quality train: {pos['train']:,} documents per class trained on, "
          f"{pos['held_out']:,} per class held out")
    print(f"  held-out accuracy: {result.accuracy:.3f}")
    print(f"  held-out ROC AUC:  {result.roc_auc:.3f}")
    print(f"  model:  {result.model_path}")
    print(f"  config: {result.config_path}")
    return 0
