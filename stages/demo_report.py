"""The demo's one-page report: the curation report embedded, a loss curve per stage (inline SVG
drawn here, no plotting library) and the evaluation table.

    html = render_report({"pretrain": [(1, 9.1), (2, 8.7)]}, rows, curation_report="report.html")
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:1rem}
table{border-collapse:collapse} td,th{padding:.25rem .7rem;border-bottom:1px solid #eee;
text-align:right} td:first-child,th:first-child{text-align:left} .note{color:#666}
svg text{font-size:11px;font-family:system-ui,sans-serif}
iframe{width:100%;height:520px;border:1px solid #ddd;border-radius:6px}
"""


@dataclass
class EvalRow:
    """One line of the evaluation table."""

    metric: str
    """What is measured, and on what."""
    before: float | None
    """Value before the stage (None: not applicable)."""
    after: float | None
    """Value after the stage."""
    note: str = ""
    """How to read it (direction, sample size)."""


def read_curve(metrics: str | Path, key: str = "loss") -> list[tuple[float, float]]:
    """``(step, key)`` points of a ``metrics.jsonl`` (lines without ``key`` are skipped)."""
    points = []
    for line in Path(metrics).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if key in record and "step" in record and record[key] is not None:
                points.append((float(record["step"]), float(record[key])))
    return points


def svg_curve(title: str, points: Sequence[tuple[float, float]], width: int = 340,
              height: int = 200, color: str = "#3366cc") -> str:
    """A line chart of ``points`` as an inline ``<svg>``, with min/max labels on both axes."""
    points = [(x, y) for x, y in points if math.isfinite(y)]
    esc = html.escape(title)
    if not points:
        return (f'<svg width="{width}" height="{height}" role="img"><text x="10" y="20">{esc}: '
                f'no data</text></svg>')
    left, right, top, bottom = 48, 10, 24, 28
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    xspan, yspan = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / xspan * w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / yspan) * h

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{esc}">'
            f'<text x="{left}" y="14" font-weight="bold">{esc}</text>'
            f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>'
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>'
            f'<text x="{left - 4}" y="{top + 9}" text-anchor="end">{y1:.3g}</text>'
            f'<text x="{left - 4}" y="{top + h}" text-anchor="end">{y0:.3g}</text>'
            f'<text x="{left}" y="{height - 8}">{x0:g}</text>'
            f'<text x="{left + w}" y="{height - 8}" text-anchor="end">{x1:g}</text>'
            f'<text x="{left + w / 2}" y="{height - 8}" text-anchor="middle">step</text>'
            "</svg>")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def render_report(curves: Mapping[str, Sequence[tuple[float, float]]], rows: Sequence[EvalRow],
                  curation_report: str | None = None, timings: Mapping[str, float] | None = None,
                  title: str = "crucible demo") -> str:
    """The whole page: ``curves`` (stage → loss points) as SVG charts, ``rows`` as the eval
    table, ``curation_report`` (a relative link) embedded, ``timings`` (step → seconds)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
             "<p class='sub'>raw text → curated shards → tokenizer → pretraining → SFT → "
             "preference optimisation → evaluation, on the bundled sample</p>"]
    if curation_report:
        link = html.escape(curation_report)
        parts.append(f"<h2>Curation</h2><p><a href='{link}'>the curation report</a> (removal "
                     f"waterfall, rejections, signals)</p><iframe src='{link}' "
                     "title='curation report'></iframe>")
    parts.append("<h2>Loss curves</h2><div class='grid'>")
    palette = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6")
    for i, (name, points) in enumerate(curves.items()):
        parts.append(f"<div>{svg_curve(name, points, color=palette[i % len(palette)])}</div>")
    parts.append("</div><h2>Evaluation</h2><table><tr><th>metric</th><th>before</th>"
                 "<th>after</th><th>note</th></tr>")
    for row in rows:
        parts.append(f"<tr><td>{html.escape(row.metric)}</td><td>{_fmt(row.before)}</td>"
                     f"<td>{_fmt(row.after)}</td><td class='note'>{html.escape(row.note)}"
                     "</td></tr>")
    parts.append("</table>")
    if timings:
        total = sum(timings.values())
        parts.append("<h2>Time</h2><table><tr><th>step</th><th>seconds</th></tr>")
        parts += [f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>"
                  for k, v in timings.items()]
        parts.append(f"<tr><td><b>total</b></td><td><b>{total:.1f}</b></td></tr></table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(path: str | Path, page: str) -> Path:
    """Writes ``page`` to ``path`` through a temp file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
