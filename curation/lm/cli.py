"""``crucible lm train`` and ``crucible lm score``: build a perplexity model and score documents."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def add_lm_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``lm`` with its ``train`` and ``score`` subcommands to the ``crucible`` parser."""
    lm = subparsers.add_parser(
        "lm", help="train or apply n-gram perplexity models (CCNet-style)",
        description="N-gram language models for perplexity filtering: a SentencePiece unigram "
                    "model and an interpolated modified Kneser-Ney ARPA model scored with KenLM.")
    commands = lm.add_subparsers(dest="lm_command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", help="train a model directory from reference text",
        description="Normalise the training text (lower-case, digits to 0, ASCII "
                    "punctuation), train SentencePiece on it, estimate the n-gram model and write "
                    "DIR/sp.model, DIR/lm.arpa and DIR/config.json (with the head/middle/tail "
                    "perplexity cut-offs of the --reference documents).")
    train.add_argument("--input", nargs="+", required=True, metavar="PATH",
                       help="Parquet files (one document per row) or text files (one document "
                            "per file)")
    train.add_argument("--text-column", default="text", metavar="NAME",
                       help="Parquet column holding the text (default: text)")
    train.add_argument("--output", required=True, metavar="DIR", help="model directory to write")
    train.add_argument("--order", type=int, default=5, help="n-gram order, 3 to 5 (default: 5)")
    train.add_argument("--vocab-size", type=int, default=8000,
                       help="SentencePiece vocabulary size; capped for small corpora (default: "
                            "8000)")
    train.add_argument("--prune", type=int, nargs="+", metavar="T",
                       help="per-order count thresholds, e.g. 0 0 1 1 1: drop n-grams of that "
                            "order whose Kneser-Ney count is at most T; the rest of the model "
                            "is renormalised (default: no pruning)")
    train.add_argument("--reference", nargs="+", metavar="PATH",
                       help="documents whose perplexity percentiles 30/60 split head/middle/tail, "
                            "ideally a sample of the data to filter (default: the training "
                            "documents, which score lower than unseen text)")
    train.set_defaults(func=_run_train)

    score = commands.add_parser(
        "score", help="print a perplexity summary of documents",
        description="Score every document with a model directory and print the count, "
                    "percentiles of perplexity and the share of documents per bucket.")
    score.add_argument("--model", required=True, metavar="DIR", help="directory from lm train")
    score.add_argument("--input", nargs="+", required=True, metavar="PATH",
                       help="Parquet or text files, as for lm train")
    score.add_argument("--text-column", default="text", metavar="NAME",
                       help="Parquet column holding the text (default: text)")
    score.set_defaults(func=_run_score)


def read_texts(paths: list[str], text_column: str) -> list[str]:
    """Documents from Parquet files (one per row) and text files (one per file)."""
    import pyarrow.parquet as pq

    texts: list[str] = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"input {name}: no such file")
        if path.suffix == ".parquet":
            schema = pq.read_schema(path)
            if text_column not in schema.names:
                raise ValueError(f"input {name}: column {text_column!r} is missing (found: "
                                 f"{', '.join(schema.names)}); set --text-column")
            column = pq.read_table(path, columns=[text_column]).column(text_column)
            texts.extend(t for t in column.to_pylist() if t)
        else:
            texts.append(path.read_text(encoding="utf-8"))
    return texts


def _run_train(args: argparse.Namespace) -> int:
    from curation.lm.model import train_lm

    if not 3 <= args.order <= 5:
        print(f"crucible lm train: --order must be 3, 4 or 5, got {args.order}", file=sys.stderr)
        return 2
    try:
        reference = read_texts(args.reference, args.text_column) if args.reference else None
        config = train_lm(read_texts(args.input, args.text_column), args.output,
                          order=args.order, vocab_size=args.vocab_size, prune=args.prune,
                          reference_texts=reference)
    except (ValueError, FileNotFoundError) as exc:
        print(f"crucible lm train: {exc}", file=sys.stderr)
        return 2
    print(f"crucible lm train: wrote {args.output} (order {config['order']}, "
          f"{config['vocab_size']} pieces, n-grams {config['ngram_counts']}, bucket cut-offs "
          f"{config['bucket_cutoffs']})")
    return 0


def _run_score(args: argparse.Namespace) -> int:
    from curation.lm.model import load_lm

    try:
        model = load_lm(args.model)
        ppl = model.perplexity(read_texts(args.input, args.text_column))
    except (ValueError, FileNotFoundError) as exc:
        print(f"crucible lm score: {exc}", file=sys.stderr)
        return 2
    scored = ppl[~np.isnan(ppl)]
    print(f"documents: {len(ppl)}, scored: {len(scored)}")
    if len(scored):
        p10, p50, p90 = np.percentile(scored, [10, 50, 90])
        print(f"perplexity: p10 {p10:.1f}  median {p50:.1f}  p90 {p90:.1f}")
        buckets = model.buckets(scored)
        shares = "  ".join(f"{b} {np.mean(buckets == b):.1%}" for b in ("head", "middle", "tail"))
        print(f"buckets: {shares}")
    return 0
