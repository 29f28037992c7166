"""``crucible tokenizer train`` and ``crucible tokenize``: text to tokens, for us and for others."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_tokenizer_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``tokenizer`` with its ``train`` subcommand to the ``crucible`` parser."""
    from curation.tokens.tokenizer import DEFAULT_SPECIAL_TOKENS

    tokenizer = subparsers.add_parser(
        "tokenizer", help="train a byte-level BPE tokenizer on curated shards",
        description="Tokenizers for crucible's token shards. Any existing tokenizer.json "
                    "(e.g. a Hugging Face model's) is accepted by `crucible tokenize` too.")
    commands = tokenizer.add_subparsers(dest="tokenizer_command", metavar="COMMAND",
                                        required=True)
    train = commands.add_parser(
        "train", help="train tokenizer.json from Parquet shards",
        description="Train a byte-level BPE tokenizer (GPT-2's pre-tokenisation, all 256 byte "
                    "symbols, so any text encodes without unknown tokens) with the `tokenizers` "
                    "library, and write DIR/tokenizer.json plus tokenizer_config.json and "
                    "special_tokens_map.json, so `tokenizers.Tokenizer.from_file` and "
                    "`transformers.AutoTokenizer.from_pretrained(DIR)` both load it.")
    train.add_argument("--input", nargs="+", required=True, metavar="PATH",
                       help="Parquet files, folders or globs; a curation output folder's "
                            "rejected/ and _work/ are skipped")
    train.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    train.add_argument("--vocab-size", type=int, default=32000,
                       help="vocabulary size including special tokens (default: 32000; "
                            "below 65,500 token shards store uint16)")
    train.add_argument("--min-frequency", type=int, default=2,
                       help="merges must occur at least this often (default: 2)")
    train.add_argument("--special-tokens", nargs="+", metavar="TOKEN",
                       default=list(DEFAULT_SPECIAL_TOKENS),
                       help="special tokens, given the first ids in this order (default: "
                            f"{' '.join(DEFAULT_SPECIAL_TOKENS)}: document end, BOS, pad, "
                            "the chat roles and end of turn)")
    train.add_argument("--extra-special-tokens", nargs="+", metavar="TOKEN", default=[],
                       help="more special tokens after the default ones")
    train.add_argument("--text-column", default="text", metavar="NAME",
                       help="Parquet column holding the documents (default: text)")
    train.add_argument("--max-documents", type=int, default=None, metavar="N",
                       help="train on the first N documents only (default: all)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_run_tokenizer_train)


def _run_tokenizer_train(args: argparse.Namespace) -> int:
    from curation.tokens.pretrain import Source, source_shards
    from curation.tokens.tokenizer import iter_texts, save_tokenizer, train_tokenizer

    try:
        shards = [s for p in args.input for s in source_shards(Source(name="x", path=p))]
        if args.max_documents is not None and args.max_documents < 1:
            raise ValueError(f"--max-documents must be >= 1 (got {args.max_documents})")
        texts: list[str] = []
        for batch in iter_texts(shards, args.text_column):
            texts.extend(batch)
            if args.max_documents and len(texts) >= args.max_documents:
                texts = texts[:args.max_documents]
                break
        if not texts:
            raise ValueError("the inputs hold no non-empty documents")
        start = time.perf_counter()
        special = list(args.special_tokens) + list(args.extra_special_tokens)
        tokenizer = train_tokenizer(texts, args.vocab_size, special_tokens=special,
                                    min_frequency=args.min_frequency, length=len(texts),
                                    show_progress=not args.no_progress and sys.stderr.isatty())
        path = save_tokenizer(tokenizer, args.output)
    except (ValueError, FileNotFoundError) as exc:
        print(f"crucible tokenizer train: {exc}", file=sys.stderr)
        return 2
    sample = texts[:2000]
    n_bytes = sum(len(t.encode("utf-8")) for t in sample)
    n_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(sample, add_special_tokens=False))
    print(f"crucible tokenizer train: {tokenizer.get_vocab_size():,} tokens learned from "
          f"{len(texts):,} documents in {time.perf_counter() - start:.1f}s; "
          f"{n_bytes / max(n_tokens, 1):.2f} bytes/token on the training text")
    print(f"  tokenizer: {path}")
    return 0


def add_tokenize_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``tokenize`` to the ``crucible`` parser."""
    tokenize = subparsers.add_parser(
        "tokenize", help="curated Parquet to token shards (pretrain) or SFT/preference examples",
        description="--kind pretrain (default): tokenize curated Parquet shards into "
                    "Megatron-compatible indexed datasets (OUT/<group>/<shard>.bin + .idx, "
                    "uint16 below 65,500 ids, else int32) with OUT/manifest.json (tokenizer "
                    "hash, counts, sources, config). Every document ends with the document-end "
                    "token. One task per shard on the curation executors; rerun the same "
                    "command to finish an interrupted job. "
                    "--kind sft|preference: Parquet/JSONL in the common chat formats to "
                    "tokenized examples with a loss mask (Parquet), with the chat template of "
                    "curation/tokens/chat.py.",
        epilog="Groups: each source's shards form a group named after it (NAME=PATH names it); "
               "--group-by COLUMN groups documents by a column's values instead (e.g. "
               "ppl_bucket: head/middle/tail). A training mixture weighs groups.")
    tokenize.add_argument("--kind", choices=["pretrain", "sft", "preference"],
                          default="pretrain", help="what to produce (default: pretrain)")
    tokenize.add_argument("--input", nargs="+", required=True, metavar="[NAME=]PATH",
                          help="Parquet files, folders or globs (JSONL too for sft/preference); "
                               "NAME= names the source (default: the folder name)")
    tokenize.add_argument("--tokenizer", required=True, metavar="PATH",
                          help="tokenizer.json, or a directory holding one")
    tokenize.add_argument("--output", required=True, metavar="DIR", help="output directory")
    tokenize.add_argument("--eos-token", metavar="TOKEN",
                          help="document-end token appended to each document (default: "
                               "<|endoftext|>, or the tokenizer's </s>, <eos>, ...)")
    tokenize.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre = tokenize.add_argument_group("pretrain")
    pre.add_argument("--text-column", default="text", metavar="NAME",
                     help="column holding the documents (default: text)")
    pre.add_argument("--group-by", metavar="COLUMN",
                     help="group documents by this column's values (default: by source)")
    pre.add_argument("--batch-size", type=int, default=1024, metavar="N",
                     help="rows per batch-encode call (default: 1024)")
    pre.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local worker processes (default) or a Ray cluster")
    pre.add_argument("--workers", type=int, default=0, metavar="N",
                     help="parallel shard tasks (default: one per core)")
    pre.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address")
    chat = tokenize.add_argument_group("sft / preference")
    chat.add_argument("--format", default="auto",
                      choices=["auto", "messages", "sharegpt", "alpaca", "prompt_response",
                               "prompt_chosen_rejected", "hh"],
                      help="input format (default: detected from the columns)")
    chat.add_argument("--max-length", type=int, metavar="N",
                      help="longer examples go to OUT/rejected/ with their length")
    chat.add_argument("--train-on", choices=["assistant", "last", "all"], default="assistant",
                      help="SFT loss on every assistant turn (default), the last one only, or "
                           "all turns")
    tokenize.set_defaults(func=_run_tokenize)


def _run_tokenize(args: argparse.Namespace) -> int:
    try:
        if args.kind == "pretrain":
            return _tokenize_pretrain(args)
        return _tokenize_examples(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"crucible tokenize: {exc}", file=sys.stderr)
        return 2


def _tokenize_pretrain(args: argparse.Namespace) -> int:
    from curation.tokens.pretrain import TokenizeConfig, parse_source, run_tokenize

    config = TokenizeConfig(sources=[parse_source(a) for a in args.input], output=args.output,
                            tokenizer=args.tokenizer, text_column=args.text_column,
                            group_by=args.group_by, eos_token=args.eos_token,
                            batch_size=args.batch_size, executor=args.executor,
                            workers=args.workers, ray_address=args.ray_address)
    summary = run_tokenize(config, show_progress=not args.no_progress,
                           log=lambda m: print(f"crucible tokenize: {m}", file=sys.stderr))
    rate = summary.tokens / max(summary.seconds, 1e-9)
    print(f"crucible tokenize: {summary.rows:,} rows, {summary.documents:,} documents, "
          f"{summary.tokens:,} tokens ({summary.shards_done} shards tokenized, "
          f"{summary.shards_skipped} already done) in {summary.seconds:.1f}s "
          f"({rate / 1e6:.2f}M tokens/s)")
    for name, g in sorted(summary.groups.items()):
        print(f"  group {name}: {g['documents']:,} documents, {g['tokens']:,} tokens")
    print(f"  token shards: {summary.out_dir}/ (manifest.json)")
    return 0


def _tokenize_examples(args: argparse.Namespace) -> int:
    from curation.tokens.examples import write_examples
    from curation.tokens.pretrain import Source, source_shards
    from curation.tokens.tokenizer import load_tokenizer

    info = load_tokenizer(args.tokenizer, args.eos_token)
    inputs: list[Path] = []
    for arg in args.input:
        path = Path(arg)
        if path.is_file():
            inputs.append(path)
        elif path.is_dir():
            found = sorted(p for pattern in ("*.jsonl", "*.jsonl.gz", "*.json")
                           for p in path.glob(pattern))
            inputs.extend(found or source_shards(Source(name="x", path=arg)))
        else:
            inputs.extend(source_shards(Source(name="x", path=arg)))
    summary = write_examples(args.kind, inputs, info, Path(args.output),
                             input_format=args.format, max_length=args.max_length,
                             train_on=args.train_on, show_progress=not args.no_progress)
    print(f"crucible tokenize: {summary}")
    print(f"  examples: {args.output}/ (manifest.json)")
    return 0
