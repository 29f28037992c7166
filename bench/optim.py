"""Benchmark: FusedAdamW vs torch.optim.AdamW (foreach, fused) and fused clipping vs
clip_grad_norm_ + AdamW(fused=True). Writes bench/results/optim.json.

    python bench/optim.py [--quick] [--models tiny small base] [--threads N]
"""

import sys
from pathlib import Path

from crucible.cli import main

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results" / "optim.json"
    sys.exit(main(["profile", "optim", "--json", str(results), *sys.argv[1:]]))
