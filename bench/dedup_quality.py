"""Evaluation: precision and recall of ``minhash_dedup`` on controlled near duplicates of real text.

Base documents are English texts of the bundled sample (``data/sample/raw``: web pages, books,
encyclopedia articles, speeches; originals only, at least 500 characters). Each base gets two
variants, each one of: words substituted, inserted or deleted at a rate of 1-40 %, or
boilerplate (cookie notices, navigation, sign-up lines) prepended or appended at 1-40 % of the
document's length. Ground truth is the exact Jaccard similarity of word 5-gram shingle sets
(``curation.dedup.reference.shingles`` semantics) of every variant to its base. The corpus is
the bases and the sample's other English originals (unrelated distractors) in one shard, the
variants in another, run through real ``crucible curate`` jobs (``normalize`` then
``minhash_dedup``).

Metrics, at the threshold J >= 0.8:

* recall: the fraction of (variant, base) pairs at J >= 0.8 that end in the same cluster;
* precision: the fraction of removed documents whose exact Jaccard similarity with the document
  kept in their place (their cluster's survivor) is >= 0.8;
* recall per similarity bin (0.5-0.6 ... 0.9-1.0), beside what the LSH S-curve
  ``1 - (1 - J**r)**b`` predicts for the same pairs.

Configurations: the balanced banding (weights 0.5/0.5, the one datasketch's ``MinHashLSH``
picks: 9 bands x 13 rows), and the step's default recall-weighted banding (false negatives
weighted 0.9: 14 bands x 9 rows) without and with ``verify`` to remove the extra candidates. Targets: recall
0.95, precision 0.99. Writes ``bench/results/dedup_quality.json``.

    python bench/dedup_quality.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from crucible.benchmarking import machine_info, print_table, result, write_results
from curation.config import load_config
from curation.dedup.lsh import candidate_probability
from curation.dedup.minhash import jaccard_pairs
from curation.dedup.minhash_dedup import MinHashDedupConfig
from curation.job import run_job

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "raw"
ENGLISH = ("c4", "dolma-cc", "gutenberg", "wiki-demo", "state-union")
THRESHOLD = 0.8
RECALL_TARGET, PRECISION_TARGET = 0.95, 0.99
RATES = (0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.3, 0.4)
EDITS = ("substitute", "insert", "delete", "prepend", "append")
BOILERPLATE = (
    "We use cookies to improve your experience on our site. By continuing to browse you agree "
    "to our use of cookies. Home About Contact Privacy Policy Terms of Service. Sign up for "
    "our newsletter to get the latest news and offers delivered to your inbox every week. "
    "Follow us on Facebook, Twitter and Instagram. Copyright all rights reserved. Share this "
    "article with your friends. Related posts you may also like. Leave a comment below.").split()
CONFIGS = {
    "balanced 9x13 (weights 0.5/0.5)": {"false_positive_weight": 0.5,
                                        "false_negative_weight": 0.5},
    "default 14x9": {},
    "default 14x9 + verify": {"verify": True},
}
BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def make_variant(words: list[str], edit: str, rate: float, vocabulary: list[str],
                 rng: np.random.Generator) -> str:
    """``words`` with ``rate * len(words)`` words substituted, inserted, deleted, or that many
    boilerplate words prepended or appended."""
    n = max(1, round(rate * len(words)))
    out = list(words)
    if edit == "substitute":
        for i in rng.choice(len(out), size=min(n, len(out)), replace=False):
            out[i] = vocabulary[rng.integers(len(vocabulary))]
    elif edit == "insert":
        for i in np.sort(rng.integers(0, len(out) + 1, size=n))[::-1]:
            out.insert(int(i), vocabulary[rng.integers(len(vocabulary))])
    elif edit == "delete":
        drop = set(rng.choice(len(out), size=min(n, len(out) - 1), replace=False).tolist())
        out = [w for i, w in enumerate(out) if i not in drop]
    else:
        start = rng.integers(len(BOILERPLATE))
        extra = [BOILERPLATE[(start + k) % len(BOILERPLATE)] for k in range(n)]
        out = extra + out if edit == "prepend" else out + extra
    return " ".join(out)


def build_corpus(n_bases: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Documents (``id``, ``text``, ``shard``) and labelled pairs (variant, base, edit, rate)."""
    originals = pl.read_parquet(SAMPLE / "*.parquet").filter(
        pl.col("source").is_in(ENGLISH), pl.col("dup_of").is_null(),
        pl.col("source_lang").is_null() | (pl.col("source_lang") == "en"),
        pl.col("text").str.len_chars() >= 500).sort("id")
    rng = np.random.default_rng(seed)
    order = rng.permutation(originals.height)
    bases = originals[order[:n_bases]]
    vocabulary = [w for t in originals["text"].to_list() for w in t.split()]
    docs = {"id": originals["id"].to_list(), "text": originals["text"].to_list(),
            "shard": [0] * originals.height}
    pairs = []
    for base_id, text in zip(bases["id"], bases["text"]):
        words = text.split()
        for k in range(2):
            edit, rate = EDITS[rng.integers(len(EDITS))], RATES[rng.integers(len(RATES))]
            variant_id = f"{base_id}~v{k}"
            docs["id"].append(variant_id)
            docs["text"].append(make_variant(words, edit, rate, vocabulary, rng))
            docs["shard"].append(1)
            pairs.append((variant_id, base_id, edit, rate))
    return pl.DataFrame(docs), pl.DataFrame(pairs, schema=["variant", "base", "edit", "rate"],
                                            orient="row")


def jaccard(text_of: dict[str, str], left: list[str], right: list[str]) -> np.ndarray:
    """Exact Jaccard similarity of the word 5-gram shingle sets of each (left, right) pair."""
    texts = pa.array([text_of[i] for i in left] + [text_of[i] for i in right], pa.string())
    n = len(left)
    return jaccard_pairs(texts, np.arange(n), np.arange(n, 2 * n), 5, "word")


def run_dedup(raw: Path, out: Path, options: dict) -> tuple[pl.DataFrame, float]:
    """Every document's cluster (``id``, ``cluster``, ``removed``) and the job's seconds."""
    config = load_config(None, inputs=[str(raw)], output=str(out), workers=1)
    config.pipeline = [{"step": "normalize"},
                       {"step": "minhash_dedup", "threshold": THRESHOLD, **options}]
    start = time.perf_counter()
    summary = run_job(config, show_progress=False)
    seconds = time.perf_counter() - start
    if not summary.ok:
        sys.exit(f"dedup job failed: {summary.quarantined}")
    kept = pl.read_parquet(out / "*.parquet").select("id", "minhash_cluster")
    removed = pl.read_parquet(out / "rejected" / "minhash_dedup" / "*.parquet")
    return pl.concat([kept.with_columns(removed=pl.lit(False)),
                      removed.select("id", "minhash_cluster").with_columns(
                          removed=pl.lit(True))]), seconds


def score(name: str, options: dict, clusters: pl.DataFrame, pairs: pl.DataFrame,
          text_of: dict[str, str], seconds: float) -> list[dict]:
    bands, rows = MinHashDedupConfig(threshold=THRESHOLD, **options).banding[:2]
    cluster_of = dict(zip(clusters["id"], clusters["minhash_cluster"]))
    found = np.array([cluster_of[v] is not None and cluster_of[v] == cluster_of[b]
                      for v, b in zip(pairs["variant"], pairs["base"])])
    similarity = pairs["jaccard"].to_numpy()
    positive = similarity >= THRESHOLD
    removed = clusters.filter("removed")
    kept_similarity = jaccard(text_of, removed["id"].to_list(),
                              removed["minhash_cluster"].to_list())
    rows_out = [
        result(f"{name}: recall, pairs at J >= 0.8 ({positive.sum()})", "recall",
               float(found[positive].mean()), "target", RECALL_TARGET, higher_is_better=True,
               predicted=round(float(candidate_probability(similarity[positive], bands,
                                                           rows).mean()), 4),
               seconds=round(seconds, 2)),
        result(f"{name}: precision, removed documents ({len(removed)})", "precision",
               float(np.mean(kept_similarity >= THRESHOLD)) if len(removed) else 1.0,
               "target", PRECISION_TARGET, higher_is_better=True,
               below_threshold=int((kept_similarity < THRESHOLD).sum()))]
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        in_bin = (similarity >= lo) & ((similarity < hi) | (hi == 1.0))
        predicted = candidate_probability(similarity[in_bin], bands, rows).mean()
        rows_out.append({"case": f"{name}: recall, J in {lo:.1f}-{hi:.1f} ({in_bin.sum()})",
                         "metric": "recall", "ours": round(float(found[in_bin].mean()), 4),
                         "reference": "—", "reference_value": None, "ratio": None,
                         "predicted": round(float(predicted), 4)})
    return rows_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 base documents, not 400")
    args = parser.parse_args()
    docs, pairs = build_corpus(200 if args.quick else 400)
    text_of = dict(zip(docs["id"], docs["text"]))
    pairs = pairs.with_columns(jaccard=pl.Series(jaccard(text_of, pairs["variant"].to_list(),
                                                         pairs["base"].to_list())))
    print(f"{docs.height} documents, {pairs.height} labelled pairs; Jaccard quantiles "
          f"{np.round(np.quantile(pairs['jaccard'].to_numpy(), [0.1, 0.5, 0.9]), 3)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        for shard, part in docs.group_by("shard", maintain_order=True):
            pq.write_table(part.select("id", "text").to_arrow(),
                           raw / f"shard-{shard[0]}.parquet")
        for i, (name, options) in enumerate(CONFIGS.items()):
            clusters, seconds = run_dedup(raw, Path(tmp) / f"out{i}", options)
            rows.extend(score(name, options, clusters, pairs, text_of, seconds))
    print_table("dedup_quality: controlled near duplicates of the sample corpus", rows,
                extra_columns=("predicted",))
    path = write_results("dedup_quality", machine_info(), rows, ROOT / "bench" / "results")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
