"""Benchmark: crucible's curation steps and default pipeline vs datatrove, per core.

Measures docs/s and MB/s of text for every step of the default pipeline on the bundled sample
(each step fed the previous step's output, on one core: Arrow and Polars limited to one
thread), then the whole job end to end (`crucible curate` with one worker: read, every step,
dedup, write). In the same run, datatrove's equivalent pipeline (LanguageFilter,
GopherRepetition, GopherQuality, C4Quality, FineWebQuality, PIIFormatter; our normalize,
exact_dedup and minhash_dedup have no counterpart there, so ours does more work) runs on the same
shards with one task, from the bench environment `.venv-bench` (`make bench` creates it);
its per-step times come from datatrove's own stats. Writes bench/results/curation.json.

    python bench/curation.py [--quick] [--no-datatrove]
"""

from __future__ import annotations

import os

os.environ["POLARS_MAX_THREADS"] = "1"  # one core: set before polars is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from crucible.benchmarking import machine_info, print_table, result, write_results  # noqa: E402
from curation.builtin import load_builtin_steps  # noqa: E402
from curation.config import load_config, preset_pipeline  # noqa: E402
from curation.global_step import GlobalStep  # noqa: E402
from curation.io.input_check import InputCheck  # noqa: E402
from curation.io.reader import ColumnMap, discover_inputs, read_batches  # noqa: E402
from curation.job import run_job  # noqa: E402
from curation.models import lid176_path  # noqa: E402
from curation.registry import build_step  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "raw"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
DATATROVE_NAMES = {"language_id": "LanguageFilter", "gopher_repetition": "GopherRepetitionFilter",
                   "gopher_quality": "GopherQualityFilter", "c4": "C4QualityFilter",
                   "fineweb": "FineWebQualityFilter", "pii": "PIIFormatter"}


def text_mb(batches: list[pa.RecordBatch]) -> float:
    return sum(pc.sum(pc.binary_length(b.column("text"))).as_py() or 0 for b in batches) / 1e6


def time_steps(shards: list[Path]) -> list[dict]:
    """Runs the default pipeline step by step in memory; returns docs, MB and seconds each."""
    batches = [b for i, path in enumerate(shards)
               for b in read_batches(path, ColumnMap(), 4096, f"s{i}")]
    batches = list(InputCheck()(iter(batches)))
    timings = []
    for i, spec in enumerate(preset_pipeline("default")):
        step = build_step(spec, f"default[{i}]")
        if not step.active:  # model steps without a model pass rows through: nothing to time
            continue
        step.setup()
        docs, mb = sum(b.num_rows for b in batches), text_mb(batches)
        start = time.perf_counter()
        if isinstance(step, GlobalStep):
            with tempfile.TemporaryDirectory() as work:
                step.start_collect(Path(work), "all", 0)
                for batch in batches:
                    step.collect(batch)
                step.finish_collect()
                step.plan(Path(work), ["all"])
                step.begin_shard(Path(work), "all")
                batches = [step.process(b) for b in batches]
        else:
            batches = [step.process(b) for b in batches]
        seconds = time.perf_counter() - start
        batches = [b for b in batches if b.num_rows]
        timings.append({"step": spec["step"], "docs": docs, "mb": mb, "seconds": seconds})
    return timings


def time_job(shards: list[Path]) -> tuple[float, int, float]:
    """Wall seconds, docs and MB of `crucible curate` (default pipeline, one worker)."""
    docs = sum(b.num_rows for p in shards for b in read_batches(p, ColumnMap(), 4096, "x"))
    mb = sum(text_mb(list(read_batches(p, ColumnMap(), 4096, "x"))) for p in shards)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, inputs=[str(p) for p in shards], output=f"{tmp}/out",
                             workers=1)
        start = time.perf_counter()
        run_job(config, show_progress=False)
        return time.perf_counter() - start, docs, mb


def run_datatrove(shards: list[Path]) -> dict | None:
    if not BENCH_PYTHON.exists():
        print("datatrove: .venv-bench missing (make bench creates it); skipping the reference",
              file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for p in shards:
            (inputs / p.name).symlink_to(p)
        proc = subprocess.run([str(BENCH_PYTHON), str(ROOT / "bench" / "_datatrove_pipeline.py"),
                               str(inputs), str(Path(tmp) / "work"), str(lid176_path())],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"datatrove failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two of the four sample shards")
    parser.add_argument("--no-datatrove", action="store_true", help="skip the reference run")
    args = parser.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    load_builtin_steps()
    shards = discover_inputs([str(SAMPLE)])[: 2 if args.quick else None]

    steps = time_steps(shards)
    job_seconds, job_docs, job_mb = time_job(shards)
    reference = None if args.no_datatrove else run_datatrove(shards)
    ref_steps = {s["step"]: s for s in (reference or {}).get("steps", [])}

    rows = []
    for s in steps:
        ours = s["docs"] / s["seconds"]
        extra = {"ours_mb_s": round(s["mb"] / s["seconds"], 2)}
        ref = ref_steps.get(s["step"])
        if ref and ref["seconds"] > 0 and ref["docs"]:
            rows.append(result(f"{s['step']} ({s['docs']} docs, 1 core)", "docs/s", ours,
                               f"datatrove {DATATROVE_NAMES[s['step']]}",
                               ref["docs"] / ref["seconds"], higher_is_better=True, **extra))
        else:
            rows.append({"case": f"{s['step']} ({s['docs']} docs, 1 core)", "metric": "docs/s",
                         "ours": round(ours, 1), "reference": "(not in the datatrove pipeline)",
                         "reference_value": None, "ratio": None, **extra})
    job_rate = job_docs / job_seconds
    if reference:
        rows.append(result(f"default pipeline end to end ({job_docs} docs, {job_mb:.1f} MB, "
                           "1 worker)", "docs/s", job_rate, "datatrove, same rules, 1 task",
                           job_docs / reference["wall_seconds"], higher_is_better=True,
                           ours_mb_s=round(job_mb / job_seconds, 2)))
    else:
        rows.append({"case": f"default pipeline end to end ({job_docs} docs)", "metric": "docs/s",
                     "ours": round(job_rate, 1), "reference": "(datatrove not run)",
                     "reference_value": None, "ratio": None,
                     "ours_mb_s": round(job_mb / job_seconds, 2)})
    machine = machine_info()
    print_table(f"curation on {machine['cpu']}, one core", rows, ("ours_mb_s",))
    path = write_results("curation", machine, rows, ROOT / "bench" / "results")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
