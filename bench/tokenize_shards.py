"""Benchmark: `crucible tokenize` (pre-training token shards) against a plain tokenizers loop.

Both sides turn the same Parquet shards (the bundled sample, copied N times so there is enough
work) into the same Megatron .bin/.idx files with the same byte-level BPE tokenizer (trained here
on the sample, 32k vocabulary): the reference is what a user would write by hand — read each
shard, `Tokenizer.encode_batch` (the library's own multi-threaded batch encoder), append the
document end, write the dataset. Outputs are checked byte-identical before the times are
reported. Both use every core of this machine; the table reports tokens/s per core.

    python bench/tokenize_shards.py [--quick]

(Not ``bench/tokenize.py``: a script run from bench/ has bench/ first on its import path, and a
file named tokenize.py there would shadow the standard library module numpy imports.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from crucible.benchmarking import machine_info, print_table, result, write_results
from curation.tokens.indexed import IndexedWriter, token_dtype
from curation.tokens.pretrain import Source, TokenizeConfig, run_tokenize
from curation.tokens.tokenizer import save_tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "raw"


def reference_tokenize(shards: list[Path], tokenizer_path: Path, out: Path) -> int:
    """The hand-written loop: ``encode_batch`` per shard, append EOS, write one dataset."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    eos = tokenizer.token_to_id("<|endoftext|>")
    dtype = token_dtype(tokenizer.get_vocab_size())
    tokens = 0
    for shard in shards:
        texts = [t for t in pq.read_table(shard, columns=["text"]).column(0).to_pylist() if t]
        with IndexedWriter(out / "src" / f"src-{shard.stem}", dtype) as writer:
            for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
                writer.add(enc.ids + [eos])
            tokens += writer.finish()[1]
    return tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 copies of the sample, 1 repeat")
    parser.add_argument("--copies", type=int, default=None,
                        help="copies of the sample's shards to tokenize (default: 12, quick 4)")
    args = parser.parse_args()
    copies = args.copies or (4 if args.quick else 12)
    repeats = 1 if args.quick else 3
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = pq.read_table(SAMPLE).column("text").to_pylist()
        start = time.perf_counter()
        tokenizer = train_tokenizer(texts, 32000)
        train_s = time.perf_counter() - start
        tok_path = save_tokenizer(tokenizer, tmp / "tok")
        src = tmp / "src"
        src.mkdir()
        for c in range(copies):
            for shard in sorted(SAMPLE.glob("*.parquet")):
                shutil.copy(shard, src / f"c{c:02d}-{shard.name}")
        shards = sorted(src.glob("*.parquet"))
        mb = sum(len(t.encode()) for t in texts) * copies / 1e6
        ours_s, ref_s = [], []
        tokens = 0
        for r in range(repeats):
            out, ref = tmp / f"ours{r}", tmp / f"ref{r}"

            def run_ours():
                start = time.perf_counter()
                summary = run_tokenize(TokenizeConfig(sources=[Source("src", str(src))],
                                                      output=str(out), tokenizer=str(tok_path)),
                                       show_progress=False)
                ours_s.append(time.perf_counter() - start)
                return summary.tokens

            def run_ref():
                start = time.perf_counter()
                n = reference_tokenize(shards, tok_path, ref)
                ref_s.append(time.perf_counter() - start)
                return n

            # alternate which side goes first, so a change in machine load hits both alike
            first, second = (run_ours, run_ref) if r % 2 == 0 else (run_ref, run_ours)
            counts = {first(), second()}
            if len(counts) != 1:
                raise SystemExit(f"bench/tokenize_shards: token counts differ: {counts}")
            tokens = counts.pop()
            for p in sorted((ref / "src").iterdir()):
                if p.read_bytes() != (out / "src" / p.name).read_bytes():
                    raise SystemExit(f"bench/tokenize_shards: {p.name} differs from the reference")
            shutil.rmtree(out)
            shutil.rmtree(ref)
        ours, ref = float(np.median(ours_s)), float(np.median(ref_s))
        rows.append(result(f"tokenize {len(shards)} shards, {mb:.0f} MB, {tokens / 1e6:.1f}M "
                           f"tokens ({cores} cores)", "M tokens/s per core",
                           tokens / ours / cores / 1e6,
                           "tokenizers encode_batch loop", tokens / ref / cores / 1e6,
                           higher_is_better=True, ours_s=round(ours, 2), ref_s=round(ref, 2)))
        rows.append({"case": f"train 32k byte-level BPE on the sample ({len(texts)} docs, "
                             f"{mb / copies:.1f} MB)", "metric": "s", "ours": round(train_s, 2),
                     "reference": "—", "reference_value": None, "ratio": None})
    machine = machine_info()
    print_table(f"tokenize on {machine['cpu']} ({cores} cores)", rows)
    print(f"wrote {write_results('tokenize_shards', machine, rows, ROOT / 'bench' / 'results')}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
