"""Character-level tiny Shakespeare as token shards (nanoGPT's shakespeare_char task).

    python data/prepare_shakespeare.py [--out out/shakespeare]

Vocabulary: the 65 distinct characters of the text, sorted (ids 0..64, as nanoGPT's prepare.py).
The first 90% of the characters are the training split, the last 10% validation. Each split is
cut into documents of --doc-chars characters so the loader can shuffle them; there is no
document-end token (the model predicts characters only). Writes OUT/train and OUT/val, each a
token-shard directory with the layout and manifest of `crucible tokenize`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from curation.tokens.indexed import IndexedWriter
from curation.tokens.layout import FORMAT, write_token_manifest

ROOT = Path(__file__).resolve().parent
TEXT = ROOT / "sample" / "shakespeare" / "input.txt"


def prepare(out: Path, doc_chars: int = 2048) -> dict[str, int]:
    """Writes the two splits; returns their token counts."""
    text = TEXT.read_text()
    chars = sorted(set(text))
    ids = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    lookup = np.zeros(int(ids.max()) + 1, dtype=np.uint16)
    lookup[[ord(c) for c in chars]] = np.arange(len(chars), dtype=np.uint16)
    tokens = lookup[ids]
    cut = int(0.9 * len(tokens))
    vocab_sha = hashlib.sha256(json.dumps(chars).encode()).hexdigest()
    counts = {}
    for split, part in (("train", tokens[:cut]), ("val", tokens[cut:])):
        root = out / split
        docs = [part[i:i + doc_chars] for i in range(0, len(part), doc_chars)]
        with IndexedWriter(root / "chars" / "shakespeare", np.uint16) as writer:
            writer.add_many(docs)
            n_docs, n_tokens = writer.finish()
        write_token_manifest(root, {
            "format": FORMAT, "complete": True, "dtype": "uint16",
            "tokenizer": {"path": "characters", "sha256": vocab_sha, "vocab_size": len(chars),
                          "eos_id": -1, "chars": chars},
            "groups": {"chars": {"prefixes": ["chars/shakespeare"], "documents": n_docs,
                                 "tokens": n_tokens}},
            "config": {"source": str(TEXT.relative_to(ROOT.parent)), "split": split,
                       "doc_chars": doc_chars}})
        counts[split] = n_tokens
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/shakespeare", help="output directory")
    parser.add_argument("--doc-chars", type=int, default=2048, help="characters per document")
    args = parser.parse_args()
    counts = prepare(Path(args.out), args.doc_chars)
    print(f"wrote {counts['train']:,} train and {counts['val']:,} val characters to {args.out}")


if __name__ == "__main__":
    main()
