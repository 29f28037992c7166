"""Benchmark: crucible's fused CPU decoder ops against the torch compositions they replace, in
the same run: RMSNorm, RoPE and SwiGLU (float32 and bfloat16) and linear cross-entropy (float32,
time and peak memory). Writes bench/results/layers.json.

Ours: ``engine.ops.layers.rms_norm`` / ``apply_rope`` / ``swiglu`` (one fused kernel per pass)
and ``engine.ops.loss.linear_cross_entropy`` (no logits). Reference: ``rms_norm_reference`` /
``apply_rope_reference`` / ``swiglu_reference`` (the eager compositions of
``engine.model.layers``) and ``F.cross_entropy(hidden @ weight.T, target)``. Every case times
forward + backward on the same tensors; the two sides alternate in windows of at least
``window_s`` seconds so machine noise hits both alike, and the table reports the median ms per
call of each. Before timing, each case checks that our outputs and gradients match the
reference, so the bench never times a wrong kernel. Peak memory of a linear cross-entropy step
is the resident-set growth of one forward + backward in a fresh process (allocations above
64 KiB mmapped, so freed memory leaves the resident set), as bench/attention.py measures it.

    python bench/layers.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from crucible.benchmarking import (machine_info, peak_growth_mb, print_table, result, time_per_call,
                                   write_results)
from engine.model.layers import rope_tables
from engine.ops.layers import (apply_rope, apply_rope_reference, rms_norm, rms_norm_reference,
                               swiglu, swiglu_reference)
from engine.ops.loss import linear_cross_entropy

ROOT = Path(__file__).resolve().parent.parent
EPS = 1e-5
THETA = 10000.0
# max |ours - reference| / max |reference| allowed per output and gradient
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
DTYPES = (torch.float32, torch.bfloat16)

RMS_NORM_SHAPES = ((4, 512, 384), (4, 1024, 1024))
ROPE_SHAPES = ((4, 512, 6, 64), (2, 1024, 16, 64))
SWIGLU_SHAPES = ((4, 512, 1024), (2, 1024, 2816))
LCE_SHAPES = ((2048, 384, 8192), (2048, 768, 32000))  # (tokens, hidden dim, vocab)

REFERENCES = {"RMSNorm": "F.rms_norm in fp32 + cast + mul",
              "RoPE": "rotate-half composition (cat, muls) in fp32",
              "SwiGLU": "F.silu(gate) * up",
              "linear cross-entropy": "logits + F.cross_entropy"}

Step = Callable[[], tuple[torch.Tensor, ...]]


def _randn(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype = torch.float32,
           scale: float = 1.0, grad: bool = True) -> torch.Tensor:
    t = (torch.randn(shape, generator=gen) * scale).to(dtype)
    return t.requires_grad_() if grad else t


def fwd_bwd(fn: Callable[..., torch.Tensor], args: tuple, inputs: tuple[torch.Tensor, ...],
            grad: torch.Tensor | None) -> Step:
    """One forward + backward of ``fn(*args)``: (output, gradients of ``inputs``)."""
    def step():
        out = fn(*args)
        return (out.detach(), *torch.autograd.grad(out, inputs, grad))
    return step


def rms_norm_case(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Step, Step]:
    gen = torch.Generator().manual_seed(0)
    x = _randn(shape, gen, dtype)
    w = (1 + _randn(shape[-1:], gen, scale=0.1, grad=False)).requires_grad_()  # fp32 weight
    grad = _randn(shape, gen, torch.result_type(x, w), grad=False)
    return (fwd_bwd(rms_norm, (x, w, EPS), (x, w), grad),
            fwd_bwd(rms_norm_reference, (x, w, EPS), (x, w), grad))


def rope_case(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Step, Step]:
    batch, seq_len, _, head_dim = shape
    gen = torch.Generator().manual_seed(0)
    x = _randn(shape, gen, dtype)
    cos, sin = rope_tables(head_dim, torch.arange(seq_len).expand(batch, seq_len), THETA)
    grad = _randn(shape, gen, dtype, grad=False)
    return (fwd_bwd(apply_rope, (x, cos, sin), (x,), grad),
            fwd_bwd(apply_rope_reference, (x, cos, sin), (x,), grad))


def swiglu_case(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Step, Step]:
    gen = torch.Generator().manual_seed(0)
    gate, up = _randn(shape, gen, dtype), _randn(shape, gen, dtype)
    grad = _randn(shape, gen, dtype, grad=False)
    return (fwd_bwd(swiglu, (gate, up), (gate, up), grad),
            fwd_bwd(swiglu_reference, (gate, up), (gate, up), grad))


def _logits_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                          target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(hidden @ weight.T, target, reduction="sum")


def _fused_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                         target: torch.Tensor) -> torch.Tensor:
    return linear_cross_entropy(hidden, weight, target, reduction="sum")


def lce_case(tokens: int, dim: int, vocab: int) -> tuple[Step, Step]:
    gen = torch.Generator().manual_seed(0)
    hidden = _randn((tokens, dim), gen)
    weight = _randn((vocab, dim), gen, scale=0.02)
    target = torch.randint(0, vocab, (tokens,), generator=gen)
    args = (hidden, weight, target)
    return (fwd_bwd(_fused_cross_entropy, args, (hidden, weight), None),
            fwd_bwd(_logits_cross_entropy, args, (hidden, weight), None))


def check(label: str, ours: Step, ref: Step, dtype: torch.dtype) -> None:
    """Raises unless every output and gradient of ``ours`` matches ``ref`` within
    ``TOLERANCE[dtype]`` of the reference's largest magnitude."""
    tol = TOLERANCE[dtype]
    names = ("output", *(f"grad {i}" for i in range(1, 8)))
    ours_out, ref_out = ours(), ref()
    if len(ours_out) != len(ref_out):
        raise AssertionError(f"{label}: {len(ours_out)} results, reference {len(ref_out)}")
    for name, a, b in zip(names, ours_out, ref_out):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(f"{label} {name}: {a.dtype} {tuple(a.shape)}, reference "
                                 f"{b.dtype} {tuple(b.shape)}")
        a, b = a.double(), b.double()
        err = float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)
        if not math.isfinite(err) or err > tol:
            raise AssertionError(f"{label} {name}: max error {err:.3g} of the reference's "
                                 f"largest value (tolerance {tol:g}); not timing a wrong kernel")


def _calls_per_window(step: Step, window_s: float) -> int:
    """Calls of ``step`` that take at least about ``window_s`` seconds."""
    per_call = time_per_call(step, iters=1, repeats=1)
    calls = 1
    while per_call * calls < 0.1:  # a small op: measure over ~0.1 s, one call is too noisy
        calls *= 4
        per_call = time_per_call(step, iters=calls, repeats=1)
    return max(1, math.ceil(window_s / per_call))


def measure(ours: Step, ref: Step, windows: int, window_s: float) -> tuple[float, float]:
    """(ours, reference) median ms per call over alternating windows of at least ``window_s``
    seconds each (the order flips every window, so drift hits both sides alike)."""
    sides = {"ours": ours, "ref": ref}
    calls = {name: _calls_per_window(step, window_s) for name, step in sides.items()}
    ms: dict[str, list[float]] = {name: [] for name in sides}
    for w in range(windows):
        for name in (("ours", "ref") if w % 2 == 0 else ("ref", "ours")):
            ms[name].append(time_per_call(sides[name], iters=calls[name], repeats=1) * 1e3)
    return statistics.median(ms["ours"]), statistics.median(ms["ref"])


def memory_child(variant: str, tokens: int, dim: int, vocab: int) -> None:
    """Run in a fresh process: prints the peak resident growth (MB) of one forward+backward."""
    ours, ref = lce_case(tokens, dim, vocab)
    step = ours if variant == "ours" else ref

    def drop_chunk_buffer():  # count the buffer linear_cross_entropy keeps between calls
        import engine.ops.loss

        engine.ops.loss._scratch.buffers = {}

    print(f"{peak_growth_mb(step, drop_chunk_buffer if variant == 'ours' else None):.2f}")


def peak_memory_mb(variant: str, tokens: int, dim: int, vocab: int) -> float | None:
    """Peak resident growth of one linear cross-entropy forward+backward in a fresh process on
    this process's thread count, or None where the platform cannot tell."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, __file__, "--memory-child", variant, str(tokens),
                           str(dim), str(vocab), str(torch.get_num_threads())],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"[layers] memory child failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def cases(quick: bool) -> list[tuple[str, str, torch.dtype, Callable[[], tuple[Step, Step]],
                                     tuple[int, int, int] | None]]:
    """(op, case label, dtype, make the two steps, LCE shape to measure peak memory of)."""
    out = []
    for op, shapes, make, what in (("RMSNorm", RMS_NORM_SHAPES, rms_norm_case, "x"),
                                   ("RoPE", ROPE_SHAPES, rope_case, "x"),
                                   ("SwiGLU", SWIGLU_SHAPES, swiglu_case, "gate/up")):
        for shape in shapes:
            for dtype in DTYPES:
                label = f"{op} fwd+bwd {what} {shape} {str(dtype).removeprefix('torch.')}"
                out.append((op, label, dtype,
                            lambda make=make, shape=shape, dtype=dtype: make(shape, dtype), None))
    for tokens, dim, vocab in LCE_SHAPES:
        label = f"linear cross-entropy fwd+bwd hidden ({tokens}, {dim}) vocab {vocab} float32"
        memory = not quick or vocab == max(v for _, _, v in LCE_SHAPES)
        out.append(("linear cross-entropy", label, torch.float32,
                    lambda s=(tokens, dim, vocab): lce_case(*s),
                    (tokens, dim, vocab) if memory else None))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer and shorter windows, peak memory at the largest vocab only")
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS,
                        metavar=("VARIANT", "TOKENS", "DIM", "VOCAB", "THREADS"))
    args = parser.parse_args()
    if args.memory_child:
        variant, tokens, dim, vocab, threads = args.memory_child
        torch.set_num_threads(int(threads))
        memory_child(variant, int(tokens), int(dim), int(vocab))
        return 0
    windows, window_s = (3, 0.1) if args.quick else (7, 0.3)
    rows = []
    for op, label, dtype, make, memory in cases(args.quick):
        ours, ref = make()
        check(label, ours, ref, dtype)
        ours_ms, ref_ms = measure(ours, ref, windows, window_s)
        print(f"[layers] {label}: ours {ours_ms:.3f} ms, reference {ref_ms:.3f} ms",
              file=sys.stderr)
        rows.append(result(label, "ms", ours_ms, REFERENCES[op], ref_ms,
                           higher_is_better=False))
        del ours, ref
        if memory is not None:
            ours_mb, ref_mb = peak_memory_mb("ours", *memory), peak_memory_mb("ref", *memory)
            if ours_mb is not None and ref_mb is not None and ours_mb > 0:
                print(f"[layers] {label}: peak ours {ours_mb:.1f} MB, reference {ref_mb:.1f} "
                      "MB", file=sys.stderr)
                rows.append(result(label, "peak MB", ours_mb, REFERENCES[op], ref_mb,
                                   higher_is_better=False))
    machine = {**machine_info(), "threads": torch.get_num_threads()}
    print_table(f"fused decoder ops, forward + backward, on {machine['cpu']} "
                f"({torch.get_num_threads()} threads)", rows)
    print(f"wrote {write_results('layers', machine, rows, ROOT / 'bench' / 'results')}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
