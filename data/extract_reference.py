"""Writes the demo's training sets from the bundled sample: reference prose (positives for the
quality classifier and the n-gram model's training text) and web text (negatives), DCLM-style.

    python data/extract_reference.py OUT_DIR
      -> OUT_DIR/reference.parquet  (gutenberg, wiki-demo, state-union documents)
      -> OUT_DIR/web.parquet        (c4 and dolma-cc web documents)
"""

import sys
from pathlib import Path

import polars as pl

SAMPLE = Path(__file__).resolve().parent / "sample" / "raw"
REFERENCE = ["gutenberg", "wiki-demo", "state-union"]
WEB = ["c4", "dolma-cc"]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sample = pl.read_parquet(SAMPLE / "*.parquet", columns=["id", "text", "source", "dup_of"])
    originals = sample.filter(pl.col("dup_of").is_null())
    for name, sources in (("reference", REFERENCE), ("web", WEB)):
        part = originals.filter(pl.col("source").is_in(sources)).select("id", "text")
        part.write_parquet(out / f"{name}.parquet")
        print(f"{out / name}.parquet: {part.height} documents")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
