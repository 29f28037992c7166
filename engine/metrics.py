"""Training metrics: model FLOP utilisation against a per-device peak, and the loggers
(metrics.jsonl, TensorBoard, a rich progress line on the console)."""

from __future__ import annotations

import json
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAK_FLOPS = {
    "H200": 989e12,        # same SXM compute as the H100
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,        # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def measured_cpu_peak() -> float:
    """This CPU's fp32 matmul peak on torch's current thread count (measured once per count,
    see :func:`_cpu_peak`)."""
    import torch

    return _cpu_peak(torch.get_num_threads())


@lru_cache(maxsize=None)
def _cpu_peak(threads: int) -> float:
    """This CPU's fp32 matmul throughput (FLOP/s) on torch's threads: the best of ten 1024^3
    matmuls, and never below the best measured before on this CPU and thread count (kept in
    ``~/.cache/crucible/cpu_peak.json``), so a measurement on a busy machine cannot inflate the
    MFU of later runs. Our CPU MFU is relative to this, not to a datasheet."""
    import torch

    from crucible.benchmarking import cpu_name

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    peak = 2 * n ** 3 / best
    key = f"{cpu_name()} / {threads} threads"
    cache = Path.home() / ".cache" / "crucible" / "cpu_peak.json"
    try:
        known = json.loads(cache.read_text()) if cache.exists() else {}
        peak = max(peak, float(known.get(key, 0.0)))
        known[key] = peak
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(cache)
    except (OSError, ValueError):
        pass  # an unwritable cache only loses the memory of earlier measurements
    return peak


def device_peak(device: torch.device) -> tuple[str, float]:
    """(name, peak FLOP/s) of a device: the table for known GPUs, measured for the CPU."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in PEAK_FLOPS.items():
            if key in name:
                return name, peak
        raise KeyError(f"no peak FLOP/s for {name!r}; add it to engine.metrics.PEAK_FLOPS")
    return f"cpu ({torch.get_num_threads()} threads, measured)", measured_cpu_peak()


def mfu(tokens_per_s: float, flops_per_token: float, peak: float, devices: int = 1) -> float:
    """Model FLOP utilisation: achieved model FLOP/s over the devices' peak."""
    return tokens_per_s * flops_per_token / (peak * devices)


class MetricsLogger:
    """Appends one JSON line per logged step to ``metrics.jsonl``, mirrors scalars to
    TensorBoard when it is installed and enabled, and prints a progress line (rank 0 only)."""

    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool, total_steps: int
                 ) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.writer = None
        self.file = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.writer = None
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, record: dict[str, Any], *, echo: bool = True) -> None:
        """Writes one record (must contain ``step``)."""
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
        if echo:
            print(self.format(record), file=sys.stderr, flush=True)

    def format(self, r: dict[str, Any]) -> str:
        """The console line of a record."""
        kind = r.get("event", "train")
        if kind == "eval":
            return f"step {r['step']:>6}/{self.total}  eval loss {r['eval_loss']:.4f}"
        if kind != "train":
            return f"step {r['step']:>6}/{self.total}  {kind}: {r.get('reason', '')}"
        return (f"step {r['step']:>6}/{self.total}  loss {r['loss']:.4f}  "
                f"grad norm {r['grad_norm']:.3f}  lr {r['lr']:.2e}  "
                f"{r['tokens_per_s']:,.0f} tok/s  MFU {100 * r['mfu']:.1f}%")

    def close(self) -> None:
        """Flushes and closes the files."""
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()
