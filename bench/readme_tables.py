"""Regenerates the README's benchmark tables from bench/results/*.json (never typed by hand).

The tables go between the `<!-- bench:begin -->` and `<!-- bench:end -->` markers of README.md.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _machine_line(machine: dict) -> str:
    parts = [f"CPU: {machine.get('cpu')} ({machine.get('cores')} cores)"]
    if machine.get("gpu"):
        parts.append(f"GPU: {machine['gpu']}")
    parts.append(f"torch {machine.get('torch')}")
    if machine.get("copy_gbps"):
        parts.append(f"measured copy bandwidth {machine['copy_gbps']} GB/s")
    return ", ".join(parts)


COLUMN_NAMES = {"ours_gbps": "ours GB/s", "pct_copy_bw": "% of copy bandwidth",
                "ours_mb_s": "ours MB/s", "docs_per_s": "docs/s",
                "near_duplicates_removed": "near duplicates removed",
                "peak_rss_driver_mb": "peak RSS driver (MB)",
                "peak_rss_worker_mb": "peak RSS largest worker (MB)",
                "peak_rss_mb": "peak RSS (MB)",
                "ours_seq_per_s": "ours seq/s", "reference_seq_per_s": "reference seq/s",
                "ours_validate_ms": "ours validate (ms)", "actions": "actions",
                "simulated_bubble": "simulated bubble", "latency_ms": "P2P latency (ms)"}
EXTRA_COLUMNS = tuple(COLUMN_NAMES)


def _num(value: float | None) -> str:
    """Three significant digits, no exponent for the ranges benchmarks produce."""
    if value is None:
        return "—"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    digits = max(0, 2 - int(f"{abs(value):e}".split("e")[1]))
    return f"{value:.{digits}f}"


def render(results_dir: Path) -> str:
    """Markdown for every results file: a heading, the machine, and one row per result."""
    blocks = []
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        rows = data["results"]
        extra = [k for k in EXTRA_COLUMNS if any(k in r for r in rows)]
        header = ["case", "metric", "ours", "reference", "reference value", "ratio",
                  *(COLUMN_NAMES.get(k, k) for k in extra)]
        lines = [f"### `{data['bench']}`", "", _machine_line(data["machine"]), "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [r["case"], r["metric"], _num(r["ours"]), r["reference"],
                     _num(r["reference_value"]),
                     f"**{r['ratio']:.2f}×**" if r["ratio"] is not None else "—",
                     *(_num(r[k]) if k in r else "" for k in extra)]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "_no benchmark results yet: run `make bench`_"


def update_readme(readme: Path, tables: str) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: markers {BEGIN} / {END} not found; add them where the "
                         "benchmark tables should go")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{tables}\n{END}{tail}")


if __name__ == "__main__":
    update_readme(ROOT / "README.md", render(ROOT / "bench" / "results"))
    sys.exit(0)
