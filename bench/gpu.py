"""Benchmark for the device machine (a CUDA GPU): the checks only a GPU can make, in one run.

1. Flash attention, bf16, causal, head dim 128 (the issue's rung: T = 4096): our CUDA kernels
   against torch's SDPA restricted to its flash backend, forward and forward+backward, after a
   correctness check against float32 SDPA (relative error; the run stops if it fails).
2. FusedAdamW on GPT-2-124M's parameters against torch.optim.AdamW(fused=True).
3. Training throughput of GPT-2-124M (engine preset `gpt2-124m`, bf16 autocast, T = 1024): the
   model on crucible's ops against the same model on torch's, tokens/s and MFU against the
   device's peak (engine.metrics.PEAK_FLOPS).

Timings: the median over repeats of batches of calls, the device synchronised around each
batch, after a warm-up. Without a GPU it prints
why and exits 0 (so `make bench` can run it anywhere); `--device cpu --quick` is a smoke test
of the script itself with tiny sizes, which writes nothing.

    python bench/gpu.py [--quick] [--device cuda|cpu] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from crucible.benchmarking import (machine_info, print_table, result, time_per_call,
                                   write_results)
from engine.metrics import device_peak, mfu
from engine.model import Transformer, flops_per_token, preset
from engine.ops import flash_attention
from engine.optim import FusedAdamW

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``fn()`` after a warm-up, the device synchronised around each
    timed batch of calls (crucible.benchmarking.time_per_call)."""
    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return 1e3 * time_per_call(fn, iters=3, repeats=repeats, sync=sync)


def sdpa_flash(q, k, v):
    """torch's SDPA on (B, T, H, D) tensors, its flash backend only on CUDA."""
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(*args, is_causal=True).transpose(1, 2)
    return F.scaled_dot_product_attention(*args, is_causal=True).transpose(1, 2)


def attention_rows(device: torch.device, seqlens: list[int], heads: int, repeats: int) -> list:
    rows = []
    for t in seqlens:
        gen = torch.Generator(device=device).manual_seed(t)
        shape = (1, t, heads, 128)
        q, k, v, grad = (torch.randn(shape, device=device, generator=gen, dtype=torch.bfloat16)
                         for _ in range(4))
        # correctness first: both against float32 SDPA
        exact = sdpa_flash(q.float(), k.float(), v.float()) if device.type == "cpu" else \
            F.scaled_dot_product_attention(*(x.float().transpose(1, 2) for x in (q, k, v)),
                                           is_causal=True).transpose(1, 2)
        for name, out in (("ours", flash_attention(q, k, v, causal=True)),
                          ("sdpa", sdpa_flash(q, k, v))):
            rel = ((out.float() - exact).norm() / exact.norm()).item()
            print(f"[gpu] attention T={t} {name}: relative error vs fp32 {rel:.2e}",
                  file=sys.stderr)
            if not rel < 2e-2:
                raise SystemExit(f"attention T={t}: {name} relative error {rel:.3e} >= 2e-2; "
                                 "not timing a wrong kernel")
        qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
        flops_fwd = 4 * heads * 128 * t * t / 2  # causal: half the score matrix
        for label, ours, ref, flops in (
            ("fwd", lambda: flash_attention(q, k, v, causal=True),
             lambda: sdpa_flash(q, k, v), flops_fwd),
            ("fwd+bwd", lambda: flash_attention(qg, kg, vg, causal=True).backward(grad),
             lambda: sdpa_flash(qg, kg, vg).backward(grad), 3.5 * flops_fwd),
        ):
            ms_ours, ms_ref = timed(ours, device, repeats), timed(ref, device, repeats)
            rows.append(result(f"attention {label} causal bf16 T={t} D=128 H={heads}", "ms",
                               ms_ours, "torch SDPA (flash backend)", ms_ref,
                               ours_tflops=round(flops / ms_ours / 1e9, 1),
                               reference_tflops=round(flops / ms_ref / 1e9, 1)))
    return rows


def adamw_rows(device: torch.device, config, repeats: int) -> list:
    model = Transformer(config).to(device)
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    ours = FusedAdamW(params, lr=1e-4, max_grad_norm=1.0)
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    for p, q in zip(ref_params, params):
        p.grad = q.grad.clone()
    ref = torch.optim.AdamW(ref_params, lr=1e-4, fused=device.type == "cuda")

    def ref_step():
        torch.nn.utils.clip_grad_norm_(ref_params, 1.0)
        ref.step()

    ms_ours, ms_ref = timed(ours.step, device, repeats), timed(ref_step, device, repeats)
    n = sum(p.numel() for p in params)
    return [result(f"AdamW step + clip, {n / 1e6:.1f}M params (fp32)", "ms", ms_ours,
                   "AdamW(fused) + clip_grad_norm_", ms_ref)]


def train_rows(device: torch.device, config, label: str, batch: int, seq_len: int,
               steps: int) -> list:
    torch.manual_seed(0)
    ours = Transformer(config, "crucible").to(device)
    ref = Transformer(config, "sdpa").to(device)
    ref.load_state_dict(ours.state_dict())
    opts = {"ours": FusedAdamW(ours.parameters(), lr=1e-4, max_grad_norm=1.0),
            "ref": torch.optim.AdamW(ref.parameters(), lr=1e-4, fused=device.type == "cuda")}
    x = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    y = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step(model, opt, clip):
        def run():
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                loss = model(x, labels=y) / y.numel()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    ms_ours = timed(step(ours, opts["ours"], False), device, steps)
    ms_ref = timed(step(ref, opts["ref"], True), device, steps)
    tok = batch * seq_len
    name, peak = device_peak(device)
    fpt = flops_per_token(config, seq_len)
    return [result(f"{label} train step, {str(dtype)[6:]}, batch {batch} x T={seq_len}",
                   "tokens/s",
                   tok / ms_ours * 1e3, "SDPA + AdamW(fused) + clip_grad_norm_",
                   tok / ms_ref * 1e3, higher_is_better=True,
                   mfu_pct=round(100 * mfu(tok / ms_ours * 1e3, fpt, peak), 1),
                   reference_mfu_pct=round(100 * mfu(tok / ms_ref * 1e3, fpt, peak), 1),
                   peak_source=name)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="default: cuda when torch sees a GPU; cpu = smoke test, no output")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"),
                        help="folder for gpu.json (default bench/results)")
    args = parser.parse_args()
    device_name = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device_name is None:
        print("[gpu] no CUDA device here: nothing to measure (run it on a GPU machine, or "
              "--device cpu for a smoke test)", file=sys.stderr)
        return 0
    device = torch.device(device_name)
    smoke = device.type == "cpu"
    if smoke:
        config, label = preset("tiny"), "tiny"
        seqlens, heads, repeats, batch, seq_len, steps = [128], 2, 2, 2, 64, 2
    else:
        config, label = preset("gpt2-124m"), "GPT-2-124M"
        seqlens = [4096] if args.quick else [1024, 2048, 4096, 8192]
        heads, repeats = 16, (10 if args.quick else 30)
        batch, seq_len, steps = 16, 1024, (5 if args.quick else 20)
    rows = attention_rows(device, seqlens, heads, repeats)
    rows += adamw_rows(device, config, repeats)
    rows += train_rows(device, config, label, batch, seq_len, steps)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    machine = machine_info(gpu)
    print_table(f"GPU checks on {gpu or 'cpu (smoke test)'}", rows,
                ("ours_tflops", "reference_tflops", "mfu_pct"))
    if not smoke:
        print(f"wrote {write_results('gpu', machine, rows, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
