"""Benchmark: MinHash signatures per second on one core, ours vs datasketch and rensa.

3,000-character English documents cut from the bundled sample (data/sample/raw), 128
permutations, 5-word shingles. Ours runs the compiled kernel on one thread, from the Arrow
text column. The references get the same shingles (reference.shingles, built by fast pure
Python, which a user of either library has to write) and are timed as a user runs them:
shingling included; rensa is also timed on pre-built shingles. datasketch (legacy scheme, its
SHA-1 hashing included) runs here on a few hundred documents; rensa runs in the bench
environment `.venv-bench` (bench/_rensa_minhash.py). Extra rows: our SHA-1 mode (signatures
identical to datasketch's, checked here), all cores, and the GPU when CuPy sees one.
Writes bench/results/minhash.json.

Not the same work in the update-only row: since 0.5, rensa's RMinHash no longer permutes every
shingle num_perm times (classic MinHash, what datasketch and we compute, 128 multiply-mods a
shingle) but drops each shingle into a few of the num_perm buckets ("fast similarity
sketching" rounds plus a fallback), a different sketch with different values.

    python bench/minhash.py [--quick] [--no-rensa]
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from _rensa_minhash import python_shingles
from crucible.benchmarking import machine_info, print_table, result, time_per_call, write_results
from curation.dedup import reference
from curation.dedup.minhash import MinHasher, shingle_hashes

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "raw"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
NUM_PERM, NGRAM, DOC_CHARS = 128, 5, 3000


def documents() -> list[str]:
    """The sample's text, joined and cut into DOC_CHARS-character documents."""
    texts = [t for path in sorted(glob.glob(str(SAMPLE / "*.parquet")))
             for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t]
    joined = " ".join(texts)
    return [joined[i:i + DOC_CHARS] for i in range(0, len(joined) - DOC_CHARS + 1, DOC_CHARS)]


def check_inputs(docs: list[str]) -> None:
    """The references' shingles are the specification's; our SHA-1 mode is datasketch."""
    from datasketch import MinHash

    ours = MinHasher(NUM_PERM, NGRAM, hash="sha1", threads=1).signatures(pa.array(docs[:5]))
    for i, d in enumerate(docs[:5]):
        grams = python_shingles(d, NGRAM)
        assert grams == reference.shingles(d, NGRAM), "python_shingles differs from reference"
        m = MinHash(num_perm=NUM_PERM, seed=1, scheme="legacy")
        m.update_batch(grams)
        assert np.array_equal(m.hashvalues, ours[i]), "sha1 mode differs from datasketch"


def ours_rate(arr: pa.Array, quick: bool, **options) -> float:
    """Documents per second of MinHasher(**options).signatures(arr)."""
    hasher = MinHasher(NUM_PERM, NGRAM, **options)
    hasher.signatures(arr[:8])  # warm-up: page in the buffers
    seconds = time_per_call(lambda: hasher.signatures(arr), iters=1, repeats=3 if quick else 7)
    return len(arr) / seconds


def datasketch_rate(docs: list[str]) -> float:
    from datasketch import MinHash

    start = time.perf_counter()
    for d in docs:
        m = MinHash(num_perm=NUM_PERM, seed=1, scheme="legacy")
        m.update_batch(python_shingles(d, NGRAM))
    return len(docs) / (time.perf_counter() - start)


def run_rensa(docs: list[str], repeats: int) -> dict | None:
    if not BENCH_PYTHON.exists():
        print("rensa: .venv-bench missing (make bench creates it); skipping", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.json"
        path.write_text(json.dumps(docs), encoding="utf-8")
        proc = subprocess.run([str(BENCH_PYTHON), str(ROOT / "bench" / "_rensa_minhash.py"),
                               str(path), str(NUM_PERM), str(NGRAM), str(repeats)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"rensa failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gpu_name() -> str | None:
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return None
        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # no CuPy, driver or device
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and documents")
    parser.add_argument("--no-rensa", action="store_true", help="skip the rensa run")
    args = parser.parse_args()

    docs = documents()
    check_inputs(docs)
    arr = pa.array(docs * (2 if args.quick else 4))  # a few thousand documents for ours
    shingles = int(shingle_hashes(pa.array(docs), NGRAM, threads=1)[0][-1])
    setup = (f"{NUM_PERM} perm, {NGRAM}-word shingles, {DOC_CHARS}-char docs "
             f"({shingles / len(docs):.0f} shingles/doc)")

    ours = ours_rate(arr, args.quick, threads=1)
    ours_sha1 = ours_rate(arr, args.quick, threads=1, hash="sha1")
    ds_docs = docs[: 100 if args.quick else 300]
    ds = datasketch_rate(ds_docs)
    rows = [
        result(f"{setup}, 1 core", "docs/s", ours, "datasketch MinHash (legacy), shingling "
               "incl.", ds, higher_is_better=True),
        result(f"{setup}, sha1 mode (= datasketch's signatures), 1 core", "docs/s", ours_sha1,
               "datasketch MinHash (legacy), shingling incl.", ds, higher_is_better=True),
    ]
    rensa = None if args.no_rensa else run_rensa(docs, 2 if args.quick else 5)
    if rensa:
        assert rensa["shingles"] == shingles, "rensa was fed different shingles"
        name = f"rensa {rensa['version']} RMinHash"
        rows.append(result(f"{setup}, 1 core", "docs/s", ours, f"{name}, shingling incl.",
                           rensa["docs"] / rensa["with_shingling_s"], higher_is_better=True))
        rows.append(result(f"{setup}, 1 core; rensa on pre-built shingles", "docs/s", ours,
                           f"{name}.update only", rensa["docs"] / rensa["update_only_s"],
                           higher_is_better=True))
    machine = machine_info(gpu_name())
    cores = machine["cores"]
    ours_all = ours_rate(arr, args.quick, threads=0)
    rows.append(result(f"{setup}, all {cores} cores", "docs/s", ours_all, "ours, 1 core", ours,
                       higher_is_better=True))
    if machine["gpu"]:
        gpu_arr = pa.array(docs * 16)
        ours_gpu = ours_rate(gpu_arr, args.quick, device="cuda")
        rows.append(result(f"{setup}, GPU", "docs/s", ours_gpu, f"ours, all {cores} cores",
                           ours_all, higher_is_better=True))
    print_table(f"MinHash signatures on {machine['cpu']}", rows)
    path = write_results("minhash", machine, rows, ROOT / "bench" / "results")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
