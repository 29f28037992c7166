"""Benchmark: engine.data.PackedLoader vs Megatron-Core's GPTDataset over the same .bin/.idx.

Writes a synthetic token-shard directory once into a temp dir (uint16, log-normal document
lengths with a median of ~400 tokens, every document ending with EOS; 20M tokens with --quick,
50M otherwise) and measures sequences/s and tokens/s of batches of 8 rows at seq_len 1024 and
2048, produced in the benchmark's own process:

* ours: ``PackedLoader(prefetch=0)``: input_ids, labels (-100 across documents), per-document
  position ids and cu_seqlens, from the natural mixture of the directory;
* reference: ``GPTDataset`` batched by ``torch.utils.data.DataLoader(batch_size=8,
  num_workers=0)``, as Megatron-LM builds it, in three configurations: its defaults (no document
  masking: less work than ours), ``reset_position_ids`` + ``eod_mask_loss`` (per-document
  positions and loss mask, attention still crosses documents), and additionally
  ``reset_attention_mask`` (the dense (T, T) mask that carries what our cu_seqlens carry).

One more row compares background production: ours with ``prefetch=2`` (one thread) against the
DataLoader with one worker process, Megatron's defaults. Setup time (opening the dataset and, for
Megatron, building its document/sample/shuffle indices) is reported beside each row and not
counted in the throughput. Writes bench/results/loader.json.

    python bench/loader.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch

from crucible.benchmarking import machine_info, print_table, result, write_results
from curation.tokens.indexed import IndexedWriter
from curation.tokens.layout import FORMAT, write_token_manifest
from engine.data import PackedLoader

ROOT = Path(__file__).resolve().parent.parent
BATCH = 8
VOCAB, EOS = 50_000, 0
PREFIX = "web/shard-0000"


def write_dataset(root: Path, tokens: int, seed: int = 0) -> tuple[int, int]:
    """Writes ``root/web/shard-0000.{bin,idx}`` with about ``tokens`` tokens and its manifest."""
    rng = np.random.default_rng(seed)
    writer = IndexedWriter(root / PREFIX, np.uint16)
    written = 0
    while written < tokens:
        lengths = np.clip(rng.lognormal(6.0, 1.0, 4096).astype(np.int64), 2, 32_000)
        flat = rng.integers(1, VOCAB, int(lengths.sum()), dtype=np.int64)
        ends = np.cumsum(lengths)
        flat[ends - 1] = EOS
        writer.add_many(np.split(flat, ends[:-1]))
        written += int(lengths.sum())
    documents, written = writer.finish()
    write_token_manifest(root, {"format": FORMAT, "complete": True, "dtype": "uint16",
                                "tokenizer": {"vocab_size": VOCAB, "eos_id": EOS, "sha256": "-"},
                                "groups": {"web": {"prefixes": [PREFIX], "documents": documents,
                                                   "tokens": written}}})
    return documents, written


class _Timed:
    """An iterable built by ``make()`` (timed as setup), iterated endlessly: a new pass starts
    when one ends."""

    def __init__(self, make) -> None:
        start = time.perf_counter()
        self.iterable = make()
        self.setup = time.perf_counter() - start
        self._it = iter(self.iterable)
        self.rates: list[float] = []

    def next(self):
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.iterable)
            return next(self._it)

    def window(self, seconds: float) -> None:
        """Records batches/s over at least ``seconds``."""
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            self.next()
            count += 1
        self.rates.append(count / elapsed)

    def close(self) -> None:
        close = getattr(self.iterable, "close", None)
        if close is not None:
            close()


def compare(ours, theirs, seconds: float, repeats: int) -> tuple[_Timed, _Timed]:
    """Times both sides in alternating windows (so load from other processes hits both alike)
    after two warm-up batches each; the median window rate counts."""
    sides = _Timed(ours), _Timed(theirs)
    for side in sides:
        for _ in range(2):
            side.next()
    for _ in range(repeats):
        for side in sides:
            side.window(seconds)
    for side in sides:
        side.close()
    return sides


class _Tokenizer:
    """The attributes of a Megatron tokenizer that GPTDataset reads."""

    vocab_size = VOCAB
    eod = EOS
    unique_identifiers = {"class": "bench-stub", "vocab_size": VOCAB, "eod": EOS}


def megatron(root: Path, seq_len: int, documents: int, workers: int = 0,
             positions: bool = False, attention_mask: bool = False):
    """A factory of DataLoader(GPTDataset) over the same files (no distributed init needed).
    Each call builds its indices afresh in a new cache directory, as a first run would."""
    with warnings.catch_warnings():  # Megatron warns at import that Apex/TE are missing
        warnings.simplefilter("ignore")
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core.datasets.indexed_dataset import IndexedDataset
        from megatron.core.datasets.utils import Split
    prefix = str(root / PREFIX)

    def make():
        cache = tempfile.mkdtemp(prefix="index-", dir=root)
        config = GPTDatasetConfig(
            random_seed=1234, sequence_length=seq_len, blend=([prefix], None), split="100,0,0",
            tokenizer=_Tokenizer(), reset_position_ids=positions,
            reset_attention_mask=attention_mask, eod_mask_loss=positions,
            create_attention_mask=attention_mask, path_to_cache=cache)
        dataset = GPTDataset(IndexedDataset(prefix), prefix, np.arange(documents, dtype=np.int32),
                             None, Split.train, config)
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=workers,
                                           prefetch_factor=2 if workers else None)

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20M tokens, fewer batches")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tokens = 20_000_000 if args.quick else 50_000_000
    seconds, repeats = (0.5, 3) if args.quick else (2.0, 5)
    rows = []
    with tempfile.TemporaryDirectory(prefix="crucible-bench-loader-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        documents, written = write_dataset(root, tokens)
        print(f"dataset: {documents} documents, {written / 1e6:.1f}M tokens "
              f"({time.perf_counter() - start:.1f}s to write)", flush=True)
        cases = []
        for T in (1024, 2048):
            ours = partial(PackedLoader, root, T, BATCH, prefetch=0)
            cases += [
                (f"seq {T} vs defaults", T, ours, "Megatron GPTDataset, defaults (no document "
                 "masking)", megatron(root, T, documents)),
                (f"seq {T} vs doc positions", T, ours, "GPTDataset reset_position_ids + "
                 "eod_mask_loss", megatron(root, T, documents, positions=True)),
                (f"seq {T} vs doc mask", T, ours, "GPTDataset reset_position_ids + "
                 "reset_attention_mask + eod_mask_loss",
                 megatron(root, T, documents, positions=True, attention_mask=True)),
            ]
        cases.append(("seq 2048 prefetch", 2048, partial(PackedLoader, root, 2048, BATCH,
                                                          prefetch=2),
                      "GPTDataset defaults, DataLoader(num_workers=1)",
                      megatron(root, 2048, documents, workers=1)))
        for case, seq_len, ours, reference, theirs in cases:
            mine, ref = compare(ours, theirs, seconds, repeats)
            seqs = statistics.median(mine.rates) * BATCH
            ref_seqs = statistics.median(ref.rates) * BATCH
            rows.append(result(case, "tokens/s", seqs * seq_len, reference, ref_seqs * seq_len,
                               higher_is_better=True, ours_seq_per_s=round(seqs, 1),
                               reference_seq_per_s=round(ref_seqs, 1),
                               ours_setup_s=round(mine.setup, 4),
                               reference_setup_s=round(ref.setup, 4)))
            print(f"{case}: ours {seqs:.0f} seq/s, reference {ref_seqs:.1f} seq/s", flush=True)
    machine = machine_info()
    machine.update(dataset_tokens=written, dataset_documents=documents, batch_size=BATCH)
    path = write_results("loader", machine, rows, ROOT / "bench" / "results")
    print_table("PackedLoader vs Megatron-Core GPTDataset (tokens/s, higher is better)", rows,
                extra_columns=("ours_seq_per_s", "reference_seq_per_s", "ours_setup_s",
                                "reference_setup_s"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
