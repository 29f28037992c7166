"""Aggregates a job's manifest and curated shards into the numbers of ``stats.json``.

Counts come from the manifest (so they always add up); the language distribution and the
signal histograms are computed over the kept rows with lazy Polars scans, one column at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

HISTOGRAM_BINS = 20
_NOT_SIGNALS = {"id", "text"}


def job_stats(manifest: dict[str, Any]) -> dict[str, Any]:
    """The statistics of a (possibly partial) job from its manifest."""
    segments = manifest["segments"]
    quarantined = manifest.get("quarantined", {})
    steps: list[dict[str, Any]] = []
    reasons: dict[str, int] = {}
    seconds = 0.0
    for segment in segments:
        merged: dict[str, dict[str, Any]] = {}
        for shard, result in segment["shards"].items():
            if result["status"] != "done" or shard in quarantined:
                continue
            seconds += result["seconds"]
            for s in result["steps"]:
                m = merged.setdefault(s["step"], {"step": s["step"], "rows_in": 0,
                                                  "rows_out": 0, "rejected": {}})
                m["rows_in"] += s["rows_in"]
                m["rows_out"] += s["rows_out"]
                for reason, count in s["rejected"].items():
                    m["rejected"][reason] = m["rejected"].get(reason, 0) + count
                    reasons[reason] = reasons.get(reason, 0) + count
        steps.extend(merged.values())
    rows_in = steps[0]["rows_in"] if steps else 0
    rows_kept = steps[-1]["rows_out"] if steps else 0
    outputs = [p for shard, r in segments[-1]["shards"].items()
               if r["status"] == "done" and shard not in quarantined for p in r["outputs"]]
    stats: dict[str, Any] = {
        "rows": {"in": rows_in, "kept": rows_kept, "rejected": sum(reasons.values())},
        "shards": {"total": len(manifest["inputs"]),
                   "done": len(manifest["inputs"]) - len(quarantined),
                   "quarantined": quarantined},
        "steps": steps,
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "worker_seconds": round(seconds, 3),
        "languages": {},
        "signals": {},
    }
    if outputs:
        stats["languages"], stats["signals"] = _output_distributions(outputs)
    return stats


def _output_distributions(paths: list[str]) -> tuple[dict[str, int], dict[str, Any]]:
    scan = pl.scan_parquet([Path(p) for p in paths])
    schema = scan.collect_schema()
    languages: dict[str, int] = {}
    if "lang" in schema:
        counts = scan.group_by("lang").len().sort("len", descending=True).collect()
        languages = {str(k): int(v) for k, v in zip(counts["lang"], counts["len"])}
    signals: dict[str, Any] = {}
    for name, dtype in schema.items():
        if name in _NOT_SIGNALS or not dtype.is_numeric():
            continue
        values = scan.select(pl.col(name).cast(pl.Float64)).drop_nulls().collect()[name]
        values = values.filter(values.is_finite()).to_numpy()
        if len(values) == 0:
            continue
        lo, hi = np.quantile(values, [0.005, 0.995])
        if hi <= lo:
            hi = lo + 1.0
        counts, edges = np.histogram(np.clip(values, lo, hi), bins=HISTOGRAM_BINS, range=(lo, hi))
        signals[name] = {"mean": float(values.mean()), "p50": float(np.median(values)),
                         "min": float(values.min()), "max": float(values.max()),
                         "edges": [float(e) for e in edges], "counts": counts.tolist()}
    return languages, signals
