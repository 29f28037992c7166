"""rensa's side of bench/minhash.py, run by the bench environment's Python (.venv-bench, where
rensa lives). Reads documents (a JSON list of strings), shingles them with ``python_shingles``
(curation.dedup.reference's word shingles, in fast pure Python: what a rensa user writes) and
times ``RMinHash(num_perm, seed).update(shingles)`` + ``digest()`` per document, both with
the shingling and with the shingles built beforehand. Prints one JSON line.

    python bench/_rensa_minhash.py DOCS.json NUM_PERM NGRAM REPEATS
"""

import json
import sys
import time
from importlib.metadata import version

_PUNCT = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
# ASCII punctuation -> space, A-Z -> a-z; bytes.split() then splits at exactly the reference's
# whitespace set (space, \t, \n, \r, \v, \f).
_TABLE = bytes(32 if c in _PUNCT else (c + 32 if 65 <= c <= 90 else c) for c in range(256))


def python_shingles(text: str, ngram: int) -> list[bytes]:
    """``reference.shingles(text, ngram, "word")`` without the per-byte Python loop."""
    toks = text.encode("utf-8").translate(_TABLE).split()
    if not toks:
        return []
    if len(toks) < ngram:
        return [b" ".join(toks)]
    return [b" ".join(toks[i:i + ngram]) for i in range(len(toks) - ngram + 1)]


def main() -> None:
    from rensa import RMinHash

    docs = json.loads(open(sys.argv[1], encoding="utf-8").read())
    num_perm, ngram, repeats = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    def with_shingling() -> None:
        for d in docs:
            m = RMinHash(num_perm=num_perm, seed=1)
            m.update(python_shingles(d, ngram))
            m.digest()

    prebuilt = [python_shingles(d, ngram) for d in docs]

    def update_only() -> None:
        for s in prebuilt:
            m = RMinHash(num_perm=num_perm, seed=1)
            m.update(s)
            m.digest()

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    print(json.dumps({"docs": len(docs), "shingles": sum(map(len, prebuilt)),
                      "with_shingling_s": best(with_shingling), "update_only_s": best(update_only),
                      "version": version("rensa")}))


if __name__ == "__main__":
    main()
