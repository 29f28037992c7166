"""``crucible profile train CONFIG``: a few training steps under ``torch.profiler``.

Writes a Chrome trace (open it in chrome://tracing or Perfetto) and prints the ops that took
the most time, with crucible's own kernels (``crucible::*``) marked. On CUDA each step, forward,
backward and optimizer phase is an NVTX range, so Nsight Systems shows them too.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from engine.config import TrainConfig


def _nvtx(name: str):
    if torch.cuda.is_available():
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()


def profile_train(config: TrainConfig, *, steps: int, warmup: int, out: Path,
                  top: int = 15) -> str:
    """Profiles ``steps`` steps after ``warmup`` untimed ones; writes ``out`` (Chrome trace
    JSON) and returns the table of the top ops by self time."""
    from engine.trainer import Trainer

    config.checkpoint.resume = False
    trainer = Trainer(config)
    data = iter(trainer.loader)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if torch.cuda.is_available() else [])

    def one_step(i: int) -> None:
        with _nvtx(f"step {i}"), record_function(f"step {i}"):
            batches = [next(data).to(trainer.info.device) for _ in range(config.grad_accum)]
            with _nvtx("forward+backward"), record_function("forward+backward"):
                trainer._backward_step(batches)
            with _nvtx("optimizer"), record_function("optimizer"):
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        one_step(i)
    with profile(activities=activities, record_shapes=True) as prof:
        for i in range(steps):
            one_step(warmup + i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out))
    trainer.loader.close()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    lines = [f"{'op':<48} {'calls':>6} {'self ms':>9} {'share':>6}"]
    for e in events[:top]:
        mark = "  <- crucible kernel" if e.key.startswith("crucible::") else ""
        lines.append(f"{e.key[:48]:<48} {e.count:>6} {e.self_cpu_time_total / 1e3:>9.2f} "
                     f"{100 * e.self_cpu_time_total / total:>5.1f}%{mark}")
    ours = sum(e.self_cpu_time_total for e in events if e.key.startswith("crucible::"))
    lines.append(f"crucible kernels: {100 * ours / total:.1f}% of self time; trace: {out}")
    return "\n".join(lines)
