"""Attention profile: crucible's flash attention against
``torch.nn.functional.scaled_dot_product_attention`` (causal, the same (B, T, H, D) tensors
viewed as (B, H, T, D)), forward and forward+backward, over T = 512 ... 8192 and head dims 64
and 128.

Reports the best ms per call over interleaved repeats, the FLOP/s that implies (causal
attention does half the work of full attention: 2 T^2 D H floating-point operations forward,
2.5x that backward), and the peak resident memory of one forward+backward, measured in a fresh
process (with every allocation above 64 KiB mmapped, so freed memory leaves the resident set and
the high-water mark shows the true peak).
Used by ``bench/attention.py`` and ``crucible profile attention``. Imports torch lazily, so
building the CLI parser stays torch-free.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

REFERENCE = "torch SDPA"
SEQLENS = (512, 1024, 2048, 4096, 8192)
QUICK_SEQLENS = (1024, 2048, 4096)
HEAD_DIMS = (64, 128)
# Heads per case: fewer as T grows so that the cases take comparable times, but never fewer
# than MIN_HEADS: SDPA's CPU kernel parallelises over (batch, head) only, and a single head
# would leave it one core.
TOKENS_X_HEADS = 8192
MIN_HEADS = 4


def heads_for(seqlen: int) -> int:
    """Query (= key/value) heads profiled at sequence length ``seqlen``."""
    return max(MIN_HEADS, TOKENS_X_HEADS // seqlen)


def causal_flops(seqlen: int, head_dim: int, heads: int, backward: bool) -> float:
    """Floating-point operations of causal attention (forward, or forward + backward)."""
    forward = 2 * seqlen * seqlen * head_dim * heads  # two GEMMs over half the score matrix
    return forward * (3.5 if backward else 1.0)


def _tensors(seqlen: int, head_dim: int, heads: int, dtype_name: str):
    import torch

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    shape = (1, seqlen, heads, head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=gen).to(dtype)
    return q, k, v, grad


def _variants(q, k, v, grad) -> dict[str, dict[str, Callable[[], Any]]]:
    import torch
    import torch.nn.functional as F

    from engine.ops import flash_attention

    def ours():
        return flash_attention(q, k, v, causal=True)

    def sdpa():
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), is_causal=True)
        return out.transpose(1, 2)

    def forward(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    def forward_backward(fn):
        return lambda: torch.autograd.grad(fn(), (q, k, v), grad)

    return {"fwd": {"ours": forward(ours), "ref": forward(sdpa)},
            "fwd+bwd": {"ours": forward_backward(ours), "ref": forward_backward(sdpa)}}


def _memory_child(variant: str, seqlen: int, head_dim: int, heads: int, dtype_name: str) -> None:
    """Run in a fresh process: prints the peak resident growth (MB) of one forward+backward."""
    q, k, v, grad = _tensors(seqlen, head_dim, heads, dtype_name)
    from crucible.benchmarking import peak_growth_mb

    print(f"{peak_growth_mb(_variants(q, k, v, grad)['fwd+bwd'][variant]):.2f}")


def peak_memory_mb(variant: str, seqlen: int, head_dim: int, heads: int,
                   dtype_name: str, threads: int) -> float | None:
    """Peak resident growth of one forward+backward in a fresh process, or None where the
    platform cannot tell (no /proc/self/clear_refs)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    code = ("import torch, sys; torch.set_num_threads(int(sys.argv[1])); "
            "from engine.profiling.attention import _memory_child; "
            "_memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), "
            "sys.argv[6])")
    # Our kernel keeps its scratch in a pool between calls (csrc/common/scratch.h): measured
    # with the pool on, the warm-up call's scratch would sit in the baseline and the growth
    # would understate the peak, so the child runs with it off (the steady-state peak of a
    # pooled process, pool + the call's outputs, is the same amount).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "CRUCIBLE_SCRATCH_POOL": "0"}
    proc = subprocess.run([sys.executable, "-c", code, str(threads), variant, str(seqlen),
                           str(head_dim), str(heads), dtype_name],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def profile_case(seqlen: int, head_dim: int, dtype_name: str, *, repeats: int,
                 memory: bool, threads: int) -> list[dict[str, Any]]:
    """Times ours and SDPA on one shape, interleaved, keeping each one's best of ``repeats``
    (on a shared machine the best run is the one least disturbed by other work); adds a peak
    memory row when ``memory``."""
    from crucible.benchmarking import result, time_per_call

    heads = heads_for(seqlen)
    q, k, v, grad = _tensors(seqlen, head_dim, heads, dtype_name)
    variants = _variants(q, k, v, grad)
    label = f"causal T={seqlen} D={head_dim} H={heads} {dtype_name}"
    rows = []
    for mode, fns in variants.items():
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                times[name].append(time_per_call(fn, iters=1, repeats=1))
        ms = {name: min(ts) * 1e3 for name, ts in times.items()}
        flops = causal_flops(seqlen, head_dim, heads, backward=mode == "fwd+bwd")
        rows.append(result(f"attention {mode} {label}", "ms", ms["ours"], REFERENCE, ms["ref"],
                           ours_gflops=round(flops / ms["ours"] / 1e6, 1),
                           reference_gflops=round(flops / ms["ref"] / 1e6, 1)))
    if memory:
        ours = peak_memory_mb("ours", seqlen, head_dim, heads, dtype_name, threads)
        ref = peak_memory_mb("ref", seqlen, head_dim, heads, dtype_name, threads)
        if ours is not None and ref is not None and ours > 0:
            rows.append(result(f"attention fwd+bwd {label}", "peak MB", ours, REFERENCE, ref))
    return rows


def run(quick: bool = False, seqlens: list[int] | None = None,
        head_dims: list[int] | None = None, dtypes: list[str] | None = None,
        threads: int = 1,
        progress: Callable[[str], None] = lambda msg: None) -> list[dict[str, Any]]:
    """Profiles every (dtype, head dim, T). ``quick``: T = 1024, 2048 and 4096, few repeats,
    peak memory at the longest T only."""
    seqlens = list(seqlens or (QUICK_SEQLENS if quick else SEQLENS))
    head_dims = list(head_dims or HEAD_DIMS)
    dtypes = list(dtypes or ["float32", "bfloat16"])
    for t in seqlens:
        if t < 1:
            raise ValueError(f"sequence lengths must be >= 1 (got {t})")
    for d in head_dims:
        if d < 1 or d > 256:
            raise ValueError(f"head dims must be in 1..256 (got {d})")
    rows = []
    for dtype_name in dtypes:
        if dtype_name not in ("float32", "bfloat16"):
            raise ValueError(f"unknown dtype {dtype_name!r}; choose float32 or bfloat16")
        for head_dim in head_dims:
            for seqlen in seqlens:
                progress(f"{dtype_name} D={head_dim} T={seqlen}")
                memory = dtype_name == "float32" and (not quick or seqlen == max(seqlens))
                rows.extend(profile_case(seqlen, head_dim, dtype_name,
                                         repeats=3 if quick else 7, memory=memory,
                                         threads=threads))
    return rows


def add_attention_parser(targets: argparse._SubParsersAction) -> None:
    """Adds ``crucible profile attention`` to the ``profile`` subcommand's targets."""
    parser = targets.add_parser(
        "attention", help="flash attention vs torch SDPA (forward, forward+backward, memory)",
        description="Time crucible's flash attention against "
                    "torch.nn.functional.scaled_dot_product_attention, causal, forward and "
                    "forward+backward, over sequence lengths and head dims; prints ms, FLOP/s "
                    "and the peak resident memory of one forward+backward.")
    parser.add_argument("--quick", action="store_true",
                        help="T = 1024, 2048 and 4096, few repeats (under two minutes on 2 "
                             "cores)")
    parser.add_argument("--seqlens", nargs="+", type=int, metavar="T",
                        help=f"sequence lengths (default: {' '.join(map(str, SEQLENS))})")
    parser.add_argument("--head-dims", nargs="+", type=int, metavar="D",
                        help="head dims (default: 64 128)")
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE",
                        help="float32 and/or bfloat16 (default: both)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default, one per core)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the results in the bench/results JSON format to PATH")
    parser.set_defaults(func=run_profile_attention)


def run_profile_attention(args: argparse.Namespace) -> int:
    """Runs ``crucible profile attention`` from parsed arguments."""
    import torch

    from crucible.benchmarking import machine_info, print_table, write_results

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"crucible profile attention: --threads must be >= 1 "
                             f"(got {args.threads})")
        torch.set_num_threads(args.threads)
    rows = run(quick=args.quick, seqlens=args.seqlens, head_dims=args.head_dims,
               dtypes=args.dtypes, threads=torch.get_num_threads(),
               progress=lambda msg: print(f"[profile attention] {msg}", file=sys.stderr))
    machine = machine_info()
    print_table(f"causal attention on {machine['cpu']} ({torch.get_num_threads()} threads)",
                rows, ("ours_gflops", "reference_gflops"))
    if args.json:
        from pathlib import Path

        path = Path(args.json)
        write_results(path.stem, machine, rows, path.parent)
        print(f"wrote {path}", file=sys.stderr)
    return 0
