"""Shared plumbing for benchmarks and profiles: machine description, timing, result files.

Results follow the convention of DESIGN.md: ``{"bench", "machine", "results": [...]}`` where each
result has ``case``, ``metric``, ``ours``, ``reference``, ``reference_value`` and ``ratio`` (how
many times better we are; > 1 means faster). Torch-free, so curation benchmarks use it too.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model string from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(gpu: str | None = None) -> dict[str, Any]:
    """Describes where a benchmark ran: CPU, usable cores, GPU name and torch version."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_name(), "cores": cores, "gpu": gpu, "torch": torch_version,
            "python": platform.python_version()}


def time_per_call(fn: Callable[[], Any], *, iters: int, repeats: int,
                  sync: Callable[[], None] = lambda: None) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn`` over ``iters`` calls."""
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        samples.append((time.perf_counter() - start) / iters)
    return statistics.median(samples)


def result(case: str, metric: str, ours: float, reference: str, reference_value: float,
           higher_is_better: bool = False, **extra: Any) -> dict[str, Any]:
    """One result row; ``ratio`` > 1 always means we are better than the reference."""
    ratio = ours / reference_value if higher_is_better else reference_value / ours
    row = {"case": case, "metric": metric, "ours": round(ours, 4), "reference": reference,
           "reference_value": round(reference_value, 4), "ratio": round(ratio, 3)}
    row.update(extra)
    return row


def write_results(name: str, machine: dict[str, Any], rows: list[dict[str, Any]],
                  out_dir: str | Path = "bench/results") -> Path:
    """Writes ``<out_dir>/<name>.json`` atomically and returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"bench": name, "machine": machine, "results": rows}, indent=2)
                   + "\n")
    tmp.replace(path)
    return path


def print_table(title: str, rows: list[dict[str, Any]],
                extra_columns: tuple[str, ...] = ()) -> None:
    """Prints result rows as a table (rich when available, plain text otherwise)."""
    headers = ["case", "metric", "ours", "reference", "ref value", "ratio", *extra_columns]
    keys = ["case", "metric", "ours", "reference", "reference_value", "ratio", *extra_columns]
    cells = [[_fmt(row.get(k, "")) + ("×" if k == "ratio" and row.get(k) is not None else "")
              for k in keys] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(" | ".join(headers))
        for line in cells:
            print(" | ".join(line))
        return
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="left" if h in ("case", "metric", "reference") else "right")
    for line in cells:
        table.add_row(*line)
    console = Console()
    if not console.is_terminal:  # logs and pipes: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_growth_mb(step: Callable[[], Any], before: Callable[[], Any] | None = None) -> float:
    """Peak resident growth (MB, Linux) of one call of ``step``: it runs once first (code paths
    and lazy state load; ``before`` then runs, e.g. to drop a cache the measured call should
    pay for), the high-water mark is reset to the current RSS, and the second call's peak above
    it is returned. Run it in a fresh process started with ``MALLOC_MMAP_THRESHOLD_=65536`` so
    that freed memory leaves the RSS."""
    step()
    if before is not None:
        before()
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:  # reset VmHWM to the current RSS
        refs.write("5")
    step()
    return _status_mb("VmHWM") - base
