"""Benchmark: training throughput of the engine's model with crucible's ops against the same
model on torch-native ops, in the same run.

Ours: the model on crucible's ops (flash attention, fused RMSNorm, RoPE and SwiGLU, linear
cross-entropy without logits) and FusedAdamW (fused clipping). Reference: the same model on
torch's ops (`scaled_dot_product_attention`, `F.rms_norm`, the RoPE/SwiGLU compositions, logits
+ `F.cross_entropy`) and `torch.optim.AdamW(fused=True)` + `clip_grad_norm_`. Same parameters, same batches; one step =
forward, backward, clip, update. The two sides alternate in short windows so machine noise hits
both alike; the table reports the median tokens/s of each.

    python bench/train.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from crucible.benchmarking import machine_info, print_table, result, write_results
from engine.model import Transformer, flops_per_token, preset
from engine.metrics import measured_cpu_peak
from engine.optim import FusedAdamW

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"vocab_size": 8192, "dim": 384, "n_layers": 6, "n_heads": 6, "n_kv_heads": 6,
         "max_seq_len": 1024}
CASES = {
    # name: (model overrides on "tiny", seq_len, batch)
    "tiny": ({}, 128, 8),
    "small GPT (6x384, vocab 8k)": ({"vocab_size": 8192, "dim": 384, "n_layers": 6,
                                     "n_heads": 6, "n_kv_heads": 6, "max_seq_len": 1024},
                                    512, 4),
    "small GPT, long context": ({"vocab_size": 8192, "dim": 384, "n_layers": 6, "n_heads": 6,
                           "n_kv_heads": 6, "max_seq_len": 1024}, 1024, 2),
}


def make_step(model, opt, clip_native: bool, packed=None):
    """One training step on a given batch (``packed``: position ids, cu_seqlens, max length of
    documents packed into the rows, as the engine's loader produces them)."""
    def step(x, y):
        args = packed if packed is not None else ()
        loss = model(x, *args, labels=y) / y.numel()
        loss.backward()
        if clip_native:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def packing(batch: int, seq_len: int, seed: int = 0):
    """Position ids, cu_seqlens and the longest segment of rows packed with documents of
    random lengths (64 to seq_len tokens), each row cut at its end as the loader does."""
    rng = torch.Generator().manual_seed(seed)
    bounds, positions = [0], []
    for _ in range(batch):
        filled = 0
        while filled < seq_len:
            n = min(int(torch.randint(64, seq_len + 1, (1,), generator=rng)), seq_len - filled)
            positions.append(torch.arange(n))
            filled += n
            bounds.append(bounds[-1] + n)
    cu = torch.tensor(bounds, dtype=torch.int32)
    return (torch.cat(positions).view(batch, seq_len), cu, int((cu[1:] - cu[:-1]).max()))


def measure(overrides: dict, seq_len: int, batch: int, windows: int, steps: int,
            packed: bool = False, window_s: float = 1.0) -> tuple[float, float]:
    """(ours, reference) median tokens/s over alternating windows of at least ``steps`` steps
    and ``window_s`` seconds."""
    config = preset("tiny", **overrides)
    torch.manual_seed(0)
    ours = Transformer(config, "crucible")
    ref = Transformer(config, "sdpa")
    ref.load_state_dict(ours.state_dict())
    pack = packing(batch, seq_len) if packed else None
    sides = {
        "ours": make_step(ours, FusedAdamW(ours.parameters(), lr=1e-4, max_grad_norm=1.0),
                          False, pack),
        "ref": make_step(ref, torch.optim.AdamW(ref.parameters(), lr=1e-4, fused=True), True,
                         pack),
    }
    x = torch.randint(0, config.vocab_size, (batch, seq_len))
    y = torch.randint(0, config.vocab_size, (batch, seq_len))
    for step in sides.values():  # warm up
        step(x, y)
    start = time.perf_counter()
    for step in sides.values():
        step(x, y)
    # windows of at least `window_s` seconds: a window of a few 10 ms steps is mostly noise
    steps = max(steps, math.ceil(window_s * len(sides) / (time.perf_counter() - start)))
    rates: dict[str, list[float]] = {"ours": [], "ref": []}
    for _ in range(windows):
        for name, step in sides.items():
            start = time.perf_counter()
            for _ in range(steps):
                step(x, y)
            rates[name].append(batch * seq_len * steps / (time.perf_counter() - start))
    return statistics.median(rates["ours"]), statistics.median(rates["ref"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows and steps")
    args = parser.parse_args()
    windows, steps, window_s = (3, 2, 0.3) if args.quick else (7, 4, 1.0)
    peak = measured_cpu_peak()
    rows = []
    cases = [(name, o, t, b, False) for name, (o, t, b) in CASES.items()]
    # packed rows with document masking, as the engine's loader feeds training: our varlen
    # kernel against SDPA with the equivalent boolean mask
    cases += [("small GPT, packed documents", SMALL, 512, 4, True),
              ("small GPT, packed documents, long context", SMALL, 1024, 2, True)]
    for name, overrides, seq_len, batch, packed in cases:
        ours, ref = measure(overrides, seq_len, batch, windows, steps, packed, window_s)
        fpt = flops_per_token(preset("tiny", **overrides), seq_len)
        print(f"[train] {name}: ours {ours:,.0f} tok/s, reference {ref:,.0f} tok/s",
              file=sys.stderr)
        rows.append(result(f"{name}, T={seq_len}, batch {batch}", "tokens/s", ours,
                           "SDPA" + (" (document mask)" if packed else "")
                           + " + AdamW(fused) + clip_grad_norm_", ref,
                           higher_is_better=True, mfu_pct=round(100 * ours * fpt / peak, 1)))
    machine = {**machine_info(), "threads": torch.get_num_threads(),
               "cpu_peak_gflops": round(peak / 1e9, 1)}
    print_table(f"training step on {machine['cpu']} ({torch.get_num_threads()} threads)", rows,
                ("mfu_pct",))
    print(f"wrote {write_results('train', machine, rows, ROOT / 'bench' / 'results')}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
