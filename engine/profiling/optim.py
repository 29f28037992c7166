"""Optimizer-step profile: FusedAdamW against torch.optim.AdamW (foreach and fused), with and
without gradient clipping, over Llama-shaped parameter lists of several sizes.

Reports ms/step, the bytes each step must move over that time (GB/s), and that as a share of
the machine's measured copy bandwidth: the optimizer step is memory-bound, so copy bandwidth is
the ceiling. Used by ``bench/optim.py`` and ``crucible profile optim``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from crucible.benchmarking import result, time_per_call
from engine.optim import FusedAdamW

# Bytes an fp32 AdamW step moves per parameter: read p, g, m, v; write p, m, v.
ADAMW_BYTES_FP32 = 7 * 4
# Fused clipping adds one read of the gradients (the norm pass).
CLIP_NORM_BYTES_FP32 = 4


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder's parameter list: embeddings, per-layer attention + SwiGLU + norms,
    final norm and an untied output head."""

    name: str
    d_model: int
    n_layers: int
    vocab: int
    ffn: int
    kv_dim: int

    def shapes(self) -> list[tuple[int, ...]]:
        d = self.d_model
        layer = [(d,), (d, d), (self.kv_dim, d), (self.kv_dim, d), (d, d), (d,),
                 (self.ffn, d), (self.ffn, d), (d, self.ffn)]
        return [(self.vocab, d), *layer * self.n_layers, (d,), (self.vocab, d)]

    def numel(self) -> int:
        total = 0
        for shape in self.shapes():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


MODELS = {
    "tiny": ModelShape("tiny", d_model=128, n_layers=4, vocab=2048, ffn=384, kv_dim=64),
    "small": ModelShape("small", d_model=384, n_layers=6, vocab=8192, ffn=1024, kv_dim=128),
    "base": ModelShape("base", d_model=768, n_layers=12, vocab=32000, ffn=2048, kv_dim=256),
}
QUICK_MODELS = ("tiny", "small")


def copy_bandwidth_gbps(numel: int = 1 << 26, repeats: int = 10) -> float:
    """Best observed ``dst.copy_(src)`` bandwidth in GB/s over a 256 MiB buffer, counting bytes
    read + written (the STREAM convention). A copy also pays a hidden read of every destination
    line (write-allocate), which a read-modify-write kernel such as AdamW does not: the optimizer
    can therefore exceed 100% of this figure on CPUs."""
    src = torch.rand(numel)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = min(time_per_call(lambda: dst.copy_(src), iters=2, repeats=1)
                  for _ in range(repeats))
    return 2 * numel * 4 / seconds / 1e9


def _variants(params: list[torch.nn.Parameter]) -> dict[str, Callable[[], Any]]:
    foreach = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    fused = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ours = FusedAdamW(params, lr=1e-4)
    clip_ref = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ours_clip = FusedAdamW(params, lr=1e-4, max_grad_norm=1.0)

    def clip_then_fused():
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        clip_ref.step()

    return {"foreach": foreach.step, "fused": fused.step, "ours": ours.step,
            "clip_ref": clip_then_fused, "ours_clip": ours_clip.step}


def profile_model(shape: ModelShape, *, iters: int, repeats: int,
                  copy_gbps: float) -> list[dict[str, Any]]:
    """Times every variant on one parameter list (variants interleaved to share any drift)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shape.shapes()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    variants = _variants(params)
    for step in variants.values():  # warm-up: state allocation, first-touch page faults
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, step in variants.items():
            times[name].append(time_per_call(step, iters=iters, repeats=1))
    ms = {name: sorted(ts)[len(ts) // 2] * 1e3 for name, ts in times.items()}

    n = shape.numel()
    label = f"{shape.name} {n / 1e6:.1f}M params fp32 ({len(params)} tensors)"
    gbps = ADAMW_BYTES_FP32 * n / (ms["ours"] / 1e3) / 1e9
    clip_gbps = (ADAMW_BYTES_FP32 + CLIP_NORM_BYTES_FP32) * n / (ms["ours_clip"] / 1e3) / 1e9
    bw = {"ours_gbps": round(gbps, 2), "pct_copy_bw": round(100 * gbps / copy_gbps, 1)}
    clip_bw = {"ours_gbps": round(clip_gbps, 2),
               "pct_copy_bw": round(100 * clip_gbps / copy_gbps, 1)}
    return [
        result(f"adamw {label}", "ms/step", ms["ours"], "torch.optim.AdamW(foreach=True)",
               ms["foreach"], **bw),
        result(f"adamw {label}", "ms/step", ms["ours"], "torch.optim.AdamW(fused=True)",
               ms["fused"], **bw),
        result(f"adamw+clip {label}", "ms/step", ms["ours_clip"],
               "clip_grad_norm_(foreach=True) + AdamW(fused=True)", ms["clip_ref"], **clip_bw),
    ]


def run(quick: bool = False, models: list[str] | None = None,
        progress: Callable[[str], None] = lambda msg: None) -> tuple[list[dict[str, Any]], float]:
    """Profiles the chosen models (default: tiny and small with ``quick``, all otherwise).

    Returns the result rows and the measured copy bandwidth in GB/s.
    """
    names = models or list(QUICK_MODELS if quick else MODELS)
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise ValueError(f"unknown model size(s) {unknown}; choose from {sorted(MODELS)}")
    progress("measuring copy bandwidth")
    copy_gbps = copy_bandwidth_gbps()
    rows = []
    for name in names:
        shape = MODELS[name]
        progress(f"profiling {name} ({shape.numel() / 1e6:.1f}M params)")
        big = shape.numel() > 50e6
        iters = 2 if big else (5 if quick else 20)
        repeats = 5 if quick else (7 if big else 11)
        rows.extend(profile_model(shape, iters=iters, repeats=repeats, copy_gbps=copy_gbps))
    return rows, copy_gbps
