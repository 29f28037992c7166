"""``report.html``: a self-contained page (inline SVG, no scripts) with the job at a glance:
the removal waterfall by step, rejections by reason, the language distribution and the signal
histograms."""

from __future__ import annotations

import html
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.cards{display:flex;gap:1rem;margin:1rem 0} .card{border:1px solid #ddd;border-radius:6px;
padding:.6rem 1rem;min-width:140px} .card b{display:block;font-size:1.5rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1rem}
table{border-collapse:collapse} td,th{padding:.2rem .6rem;border-bottom:1px solid #eee;
text-align:right} td:first-child,th:first-child{text-align:left} .bad{color:#b00}
svg text{font-size:11px;font-family:system-ui,sans-serif}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _hbars(items: list[tuple[str, float]], color: str, width: int = 860,
           fmt=lambda v: f"{v:,.0f}") -> str:
    """Horizontal bar chart, one labelled bar per item."""
    if not items:
        return "<p><i>none</i></p>"
    row, label_w = 20, 380
    top = max(v for _, v in items) or 1
    height = row * len(items) + 4
    parts = [f'<svg width="{width}" height="{height}" role="img">']
    for i, (label, value) in enumerate(items):
        y = i * row + 2
        w = (width - label_w - 90) * value / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_esc(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" '
                     f'fill="{color}"/><text x="{label_w + w + 4:.1f}" y="{y + 14}">'
                     f"{_esc(fmt(value))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _histogram(name: str, signal: dict[str, Any]) -> str:
    counts, edges = signal["counts"], signal["edges"]
    w, h, pad = 320, 140, 24
    top = max(counts) or 1
    bar = (w - 2 * pad) / len(counts)
    parts = [f'<div><b>{_esc(name)}</b> <small>mean {signal["mean"]:.3g}, median '
             f'{signal["p50"]:.3g}</small><br><svg width="{w}" height="{h + 20}">']
    for i, c in enumerate(counts):
        bh = (h - 10) * c / top
        parts.append(f'<rect x="{pad + i * bar:.1f}" y="{h - bh:.1f}" width="{bar - 1:.1f}" '
                     f'height="{bh:.1f}" fill="#4a7bd0"><title>{edges[i]:.3g}–{edges[i + 1]:.3g}:'
                     f" {c}</title></rect>")
    parts.append(f'<text x="{pad}" y="{h + 14}">{edges[0]:.3g}</text>'
                 f'<text x="{w - pad}" y="{h + 14}" text-anchor="end">{edges[-1]:.3g}</text>'
                 "</svg></div>")
    return "".join(parts)


def render_html(stats: dict[str, Any]) -> str:
    """The report page for ``stats`` (as written to stats.json)."""
    rows = stats["rows"]
    kept_pct = 100 * rows["kept"] / rows["in"] if rows["in"] else 0.0
    waterfall = [("raw rows", float(rows["in"]))] + [(s["step"], float(s["rows_out"]))
                                                  for s in stats["steps"]]
    step_table = "".join(
        f"<tr><td>{_esc(s['step'])}</td><td>{s['rows_in']:,}</td><td>{s['rows_out']:,}</td>"
        f"<td>{sum(s['rejected'].values()):,}</td></tr>" for s in stats["steps"])
    quarantined = stats["shards"]["quarantined"]
    q_html = "".join(f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>" for k, v in quarantined.items())
    languages = list(stats["languages"].items())[:25]
    hist = "".join(_histogram(k, v) for k, v in stats["signals"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>crucible curation report</title>
<style>{_STYLE}</style></head><body>
<h1>Curation report</h1><p class="sub">rows in = kept + rejected, per shard and per step</p>
<div class="cards"><div class="card">rows in<b>{rows['in']:,}</b></div>
<div class="card">kept<b>{rows['kept']:,}</b>{kept_pct:.1f}%</div>
<div class="card">rejected<b>{rows['rejected']:,}</b></div>
<div class="card">shards<b>{stats['shards']['done']}/{stats['shards']['total']}</b></div></div>
{f'<h2 class="bad">Quarantined shards</h2><ul>{q_html}</ul>' if quarantined else ''}
<h2>Rows remaining after each step</h2>{_hbars(waterfall, '#3c9a5f')}
<table><tr><th>step</th><th>rows in</th><th>kept</th><th>rejected</th></tr>{step_table}</table>
<h2>Rejections by reason</h2>{_hbars([(k, float(v)) for k, v in stats['reasons'].items()], '#d0604a')}
<h2>Languages (kept rows)</h2>{_hbars([(k, float(v)) for k, v in languages], '#8a5cc2')}
<h2>Signals (kept rows)</h2><div class="grid">{hist or '<p><i>no numeric signals</i></p>'}</div>
</body></html>
"""
