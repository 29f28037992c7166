"""Build data/sample/chat/: the bundled instruction and preference data (SFT, reward, DPO).

    python data/build_chat_sample.py [--shared ../shared/data] [--out data/sample/chat]

- gsm8k.jsonl: every GSM8K test problem as {"id", "prompt", "response"} (question → prompt,
  worked answer with its final "#### N" line → response), in the original order.
- hh-rlhf-harmless-base-test.jsonl.gz: Anthropic HH-RLHF harmless-base test pairs, unchanged
  ({"chosen", "rejected"} transcripts). Red-team data: it contains offensive text on purpose.
Deterministic: the same inputs give the same bytes.
"""

import argparse
import gzip
import json
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default="../shared/data", help="the public data folder")
    parser.add_argument("--out", default="data/sample/chat", help="output folder")
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (shared / "gsm8k" / "test.jsonl").read_text().splitlines()
            if line.strip()]
    with open(out / "gsm8k.jsonl", "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({"id": f"gsm8k-test-{i:04d}", "prompt": row["question"],
                                "response": row["answer"]}, ensure_ascii=False) + "\n")
    hh = shared / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    with gzip.open(hh, "rt") as f:
        n_pairs = sum(1 for _ in f)
    shutil.copyfile(hh, out / "hh-rlhf-harmless-base-test.jsonl.gz")
    print(f"wrote {len(rows)} SFT rows and {n_pairs} preference pairs to {out}")


if __name__ == "__main__":
    main()
