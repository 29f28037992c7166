"""Benchmark: end-to-end near-duplicate removal of 1M documents on this machine.

Builds a synthetic corpus from the bundled sample's English text (each document two random
passages of ~250 characters joined, so documents are distinct; 5 % of them re-emitted with a
one-word edit as near duplicates), writes it as 16 Parquet shards, then runs
`crucible curate` with `normalize` + `minhash_dedup` (defaults: 128 permutations, 5-word
shingles, threshold 0.8) on all cores, and reports wall time, documents per second and the
peak resident memory of the driver and of the largest worker. Writes
bench/results/dedup_scale.json. `--quick` uses 100k documents.

Peak memory is each process's own high-water mark (``VmHWM``: the driver reads its own at exit,
the workers' are sampled every 50 ms while they run). ``getrusage``'s ``ru_maxrss`` would not do:
Linux carries it across ``fork`` + ``exec``, so the job would report the high-water mark of this
script, which holds the whole corpus while it builds it, and every worker the driver's.

    python bench/dedup_scale.py [--quick] [--docs N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from crucible.benchmarking import machine_info, print_table, write_results

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "raw"


def passages() -> np.ndarray:
    """~250-character English passages cut from the sample at word boundaries."""
    raw = pl.read_parquet(SAMPLE / "*.parquet", columns=["text", "source"])
    raw = raw.filter(pl.col("source").is_in(["c4", "gutenberg", "wiki-demo", "state-union"]))
    words = " ".join(raw["text"].to_list()).split()
    out, step = [], 45
    for i in range(0, len(words) - step, step):
        out.append(" ".join(words[i:i + step]))
    return np.array(out, dtype=object)


def build_corpus(n_docs: int, out: Path, shards: int = 16, seed: int = 0) -> tuple[int, float]:
    """Writes the corpus; returns (documents, MB of text)."""
    rng = np.random.default_rng(seed)
    pool = passages()
    n_unique = int(n_docs * 0.95)
    left = pl.Series(pool[rng.integers(0, len(pool), n_unique)])
    right = pl.Series(pool[rng.integers(0, len(pool), n_unique)])
    texts = left + " " + right
    dup_src = rng.integers(0, n_unique, n_docs - n_unique)
    dups = texts.gather(dup_src) + " indeed"
    all_texts = pl.concat([texts, dups])
    frame = pl.DataFrame({"id": [f"doc{i:08d}" for i in range(n_docs)], "text": all_texts})
    frame = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    per = (n_docs + shards - 1) // shards
    for s in range(shards):
        frame.slice(s * per, per).write_parquet(out / f"part-{s:03d}.parquet", compression="zstd")
    return n_docs, float(all_texts.str.len_bytes().sum()) / 1e6


def peak_rss_mb(pid: int) -> int:
    """The high-water mark of a process's resident memory (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, pp in parent.items() if pp in frontier]
        found += children
        frontier = children
    return found


def run_sampling_workers(cmd: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Runs ``cmd``; returns its result and the largest peak RSS (MB) of its descendants."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker_peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal worker_peak
        while not done.wait(0.05):
            for pid in descendants(proc.pid):
                worker_peak = max(worker_peak, peak_rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), worker_peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k documents instead of 1M")
    parser.add_argument("--docs", type=int, help="number of documents (overrides --quick)")
    args = parser.parse_args()
    n_docs = args.docs or (100_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        docs, mb = build_corpus(n_docs, tmp / "raw")
        print(f"built {docs:,} documents ({mb:.0f} MB) in {time.perf_counter() - start:.0f}s",
              file=sys.stderr)
        config = {"input": {"paths": [str(tmp / "raw")]},
                  "pipeline": [{"step": "normalize"}, {"step": "minhash_dedup"}]}
        (tmp / "job.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-c",
               "import sys; from crucible.cli import main; code = main(sys.argv[1:]); "
               "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]; "
               "print('driver_peak_rss_mb', int(hwm[0].split()[1]) // 1024, file=sys.stderr); "
               "sys.exit(code)",
               "curate", "--config", str(tmp / "job.yaml"), "--output", str(tmp / "out"),
               "--no-progress"]
        start = time.perf_counter()
        proc, worker_rss = run_sampling_workers(cmd)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        driver_rss = int(proc.stderr.strip().splitlines()[-1].split()[-1])
        stats = json.loads((tmp / "out" / "stats.json").read_text())
        removed = stats["reasons"].get("minhash_dedup:near_duplicate", 0)
    rows = [
        {"case": f"normalize + minhash_dedup, {docs:,} docs ({mb:.0f} MB), "
                 f"{os.cpu_count()} cores", "metric": "wall s", "ours": round(wall, 1),
         "reference": "—", "reference_value": None, "ratio": None,
         "docs_per_s": round(docs / wall), "near_duplicates_removed": removed,
         "peak_rss_driver_mb": driver_rss, "peak_rss_worker_mb": worker_rss},
    ]
    machine = machine_info()
    print_table("end-to-end dedup", rows, ("docs_per_s", "near_duplicates_removed",
                                           "peak_rss_driver_mb", "peak_rss_worker_mb"))
    write_results("dedup_scale", machine, rows, ROOT / "bench" / "results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
