"""Benchmark: training the n-gram language model and scoring documents by perplexity.

Trains an order-5 interpolated modified Kneser-Ney model (our estimator, SentencePiece pieces)
on the bundled sample's English reference prose (Gutenberg, Wikipedia, State of the Union) and
reports training time and peak memory; then scores every sample document with the
`perplexity` step on one core (kenlm querying our ARPA) and reports documents/s and MB/s.
`lmplz` (KenLM's own estimator) is not installable as a package, so there is no reference
estimator in the same run. Writes bench/results/perplexity.json.

    python bench/perplexity.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow as pa

from crucible.benchmarking import machine_info, print_table, write_results
from curation.filters.perplexity import Perplexity, PerplexityConfig
from curation.lm.model import train_lm

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "raw"
REFERENCE = ["gutenberg", "wiki-demo", "state-union"]


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="order 3 and half the reference")
    args = parser.parse_args()
    sample = pl.read_parquet(SAMPLE / "*.parquet", columns=["id", "text", "source"])
    reference = sample.filter(pl.col("source").is_in(REFERENCE))
    texts = reference["text"].to_list()
    order = 5
    if args.quick:
        texts, order = texts[: len(texts) // 2], 3
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        before = peak_rss_mb()
        start = time.perf_counter()
        train_lm(texts, Path(tmp) / "lm", order=order)
        seconds = time.perf_counter() - start
        rows.append({"case": f"train order-{order} model on {len(texts)} docs ({mb:.1f} MB)",
                     "metric": "s", "ours": round(seconds, 2), "reference": "—",
                     "reference_value": None, "ratio": None,
                     "peak_rss_mb": round(max(peak_rss_mb(), before))})
        step = Perplexity(PerplexityConfig(models={"en": str(Path(tmp) / "lm")}))
        step.setup()
        batch = pa.RecordBatch.from_pydict({
            "id": sample["id"].to_list(), "text": sample["text"].to_list(),
            "lang": ["en"] * len(sample)})
        score_mb = sum(len(t.encode()) for t in sample["text"].to_list()) / 1e6
        start = time.perf_counter()
        step.process(batch)
        seconds = time.perf_counter() - start
        rows.append({"case": f"score {len(sample)} sample docs ({score_mb:.1f} MB), 1 core",
                     "metric": "docs/s", "ours": round(len(sample) / seconds, 1),
                     "reference": "—", "reference_value": None, "ratio": None,
                     "ours_mb_s": round(score_mb / seconds, 2)})
    machine = machine_info()
    print_table("n-gram LM: training and scoring", rows, ("peak_rss_mb", "ours_mb_s"))
    write_results("perplexity", machine, rows, ROOT / "bench" / "results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
