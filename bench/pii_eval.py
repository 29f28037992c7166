"""Evaluation: span-level precision and recall of the pii step on Presidio's labelled sentences.

The data is ``shared/data/presidio/synth_dataset_v2.json`` (microsoft/presidio-research, MIT):
1,500 synthetic sentences with 2,863 labelled spans over 17 entity types, six of which we cover
(EMAIL_ADDRESS, PHONE_NUMBER, IP_ADDRESS, CREDIT_CARD, IBAN_CODE, US_SSN). Every sentence goes
through the step's public path (record batches in, scrubbed ``text`` and ``pii_*`` counts out);
the spans to score come from the per-string reference detector, which must give the step's exact
output on every sentence first. A detection is a true positive when it overlaps a labelled span
of its type; a labelled span is found when a detection of its type overlaps it. Targets: recall
0.95, precision 0.9. Throughput is compared, on c4-sample1k when present, with the same patterns
run one document at a time in Python's ``re`` (how datatrove's PIIFormatter works). Writes
``bench/results/pii_eval.json`` and prints every miss and false positive.

    python bench/pii_eval.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

from crucible.benchmarking import machine_info, print_table, result, write_results
from curation.pii import PII_TYPES, PiiScrubber, scrub_reference
from curation.pii.checksums import luhn_valid
from curation.pii.detect import COMPILED, FINDERS, splice
from curation.pii.patterns import CONFIRMED, DEFAULT_PLACEHOLDERS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PRESIDIO = DATA / "presidio" / "synth_dataset_v2.json"
C4 = DATA / "c4-sample1k" / "c4_sample.jsonl"
# Presidio's entity names for the types we detect (it has no label for secrets).
ENTITY_TYPES = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "IP_ADDRESS": "ip",
                "CREDIT_CARD": "credit_card", "IBAN_CODE": "iban", "US_SSN": "us_ssn"}
RECALL_TARGET, PRECISION_TARGET = 0.95, 0.9
BATCH_ROWS = 4096


def run_step(texts: list[str]) -> tuple[pa.Table, float]:
    """The step over ``texts`` in record batches: its output and the seconds it took."""
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    step = PiiScrubber()
    start = time.perf_counter()
    out = pa.Table.from_batches(list(step(iter(table.to_batches(max_chunksize=BATCH_ROWS)))))
    return out, time.perf_counter() - start


def per_document(texts: list[str]) -> tuple[list[str], float]:
    """The same patterns and finders, one document and one type at a time: output, seconds."""
    start = time.perf_counter()
    out = []
    for text in texts:
        for kind in PII_TYPES:
            placeholder = DEFAULT_PLACEHOLDERS[kind]
            if kind in CONFIRMED:
                text = splice(text, FINDERS[kind](text), placeholder)
            else:
                text = COMPILED[kind].sub(placeholder, text)
        out.append(text)
    return out, time.perf_counter() - start


def check_against_reference(texts: list[str], out: pa.Table) -> list[list]:
    """Spans per sentence from the reference; exits when it disagrees with the step's output."""
    scrubbed = out.column("text").to_pylist()
    counts = {kind: out.column(f"pii_{kind}").to_pylist() for kind in PII_TYPES}
    spans, disagree = [], 0
    for i, text in enumerate(texts):
        expected, found = scrub_reference(text)
        per_type = Counter(span.kind for span in found)
        if expected != scrubbed[i] or any(counts[k][i] != per_type[k] for k in PII_TYPES):
            disagree += 1
            print(f"step and reference disagree on sentence {i}: {text!r}", file=sys.stderr)
        spans.append(found)
    if disagree:
        sys.exit(f"{disagree} sentences where the step and its reference disagree")
    return spans


def score(records: list[dict], detections: list[list]) -> dict[str, dict]:
    """Per type: labelled spans, the ones found, detections, true positives and the misses/false
    positives (as text, with the labelled types a false positive overlaps instead)."""
    stats = {kind: {"labelled": 0, "found": 0, "detected": 0, "correct": 0, "missed": [],
                    "false_positives": []} for kind in ENTITY_TYPES.values()}
    for record, found in zip(records, detections):
        text = record["full_text"]
        labels = [(ENTITY_TYPES.get(s["entity_type"], s["entity_type"]), s["start_position"],
                   s["end_position"]) for s in record["spans"]]
        for kind, start, end in labels:
            if kind in stats:
                stats[kind]["labelled"] += 1
                if any(d.kind == kind and d.start < end and start < d.end for d in found):
                    stats[kind]["found"] += 1
                else:
                    stats[kind]["missed"].append(text[start:end])
        for d in found:
            if d.kind not in stats:
                continue
            stats[d.kind]["detected"] += 1
            overlapping = [k for k, start, end in labels if start < d.end and d.start < end]
            if d.kind in overlapping:
                stats[d.kind]["correct"] += 1
            else:
                stats[d.kind]["false_positives"].append((text[d.start:d.end], overlapping))
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    args = parser.parse_args()
    if not PRESIDIO.is_file():
        print(f"skipped: data not found ({PRESIDIO})")
        return 0

    records = json.loads(PRESIDIO.read_text(encoding="utf-8"))
    texts = [r["full_text"] for r in records]
    out, _ = run_step(texts)
    assert out.column("id").to_pylist() == [str(i) for i in range(len(texts))]
    stats = score(records, check_against_reference(texts, out))

    cards = [s["entity_value"] for r in records for s in r["spans"]
             if s["entity_type"] == "CREDIT_CARD"]
    luhn_ok = sum(luhn_valid("".join(c for c in card if c.isdigit())) for card in cards)
    rows = []
    for kind, s in stats.items():
        extra = {"labelled_luhn_valid": luhn_ok} if kind == "credit_card" else {}
        rows.append(result(f"{kind} recall ({s['labelled']} spans)", "recall",
                           s["found"] / s["labelled"], "target", RECALL_TARGET,
                           higher_is_better=True, missed=len(s["missed"]), **extra))
    for kind, s in stats.items():
        beside_pii = sum(bool(labels) for _, labels in s["false_positives"])
        rows.append(result(f"{kind} precision ({s['detected']} detections)", "precision",
                           s["correct"] / s["detected"], "target", PRECISION_TARGET,
                           higher_is_better=True, false_positives=len(s["false_positives"]),
                           false_positives_on_other_pii=beside_pii))

    if C4.is_file():
        docs = [json.loads(line)["text"] for line in C4.read_text(encoding="utf-8").splitlines()]
        megabytes = sum(len(d.encode()) for d in docs) / 1e6
        ours, reference = [], []
        for _ in range(3 if args.quick else 7):  # interleaved, best of each: shared cores
            ours.append(run_step(docs)[1])
            reference.append(per_document(docs)[1])
        assert per_document(docs)[0] == run_step(docs)[0].column("text").to_pylist()
        rows.append(result(f"throughput c4-sample1k ({len(docs)} docs, {megabytes:.1f} MB)",
                           "MB/s", megabytes / min(ours), "python re per document",
                           megabytes / min(reference), higher_is_better=True))
    else:
        print(f"throughput skipped: {C4} not found")

    for kind, s in stats.items():
        for value in s["missed"]:
            print(f"missed {kind}: {value!r}")
        for value, labels in s["false_positives"]:
            print(f"false positive {kind}: {value!r} (labelled: {', '.join(labels) or 'nothing'})")
    print(f"labelled credit cards passing Luhn: {luhn_ok} of {len(cards)}")
    print("secret: Presidio has no label for it; detections on these sentences: "
          f"{sum(out.column('pii_secret').to_pylist())}")
    print_table("pii_eval: Presidio synth_dataset_v2, span overlap", rows)
    path = write_results("pii_eval", machine_info(), rows,
                         Path(__file__).resolve().parent / "results")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
