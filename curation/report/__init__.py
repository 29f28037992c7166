"""Job reports: ``stats.json`` (numbers) and ``report.html`` (the same, as plots)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from curation.report.html import render_html
from curation.report.stats import job_stats


def write_reports(manifest: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Computes the job statistics and writes ``stats.json`` and ``report.html`` atomically."""
    stats = job_stats(manifest)
    for name, text in (("stats.json", json.dumps(stats, indent=1) + "\n"),
                       ("report.html", render_html(stats))):
        path = out_dir / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return stats
