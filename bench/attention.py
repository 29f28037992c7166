"""Benchmark: crucible's flash attention vs torch.nn.functional.scaled_dot_product_attention,
causal, forward and forward+backward, T = 512 ... 8192, head dims 64 and 128, float32 and
bfloat16, plus peak memory. Writes bench/results/attention.json.

    python bench/attention.py [--quick] [--seqlens 1024 4096] [--head-dims 64] [--threads N]
"""

import sys
from pathlib import Path

from crucible.cli import main

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results" / "attention.json"
    sys.exit(main(["profile", "attention", "--json", str(results), *sys.argv[1:]]))
