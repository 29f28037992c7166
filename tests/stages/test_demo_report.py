"""The demo report: given metrics render as SVG loss curves, an eval table and an embedded
curation report; the demo gathers them from the files the stages write."""

from __future__ import annotations

import json
import re

from stages.demo import DemoConfig, write_demo_report
from stages.demo_report import EvalRow, read_curve, render_report, svg_curve


def test_svg_curve_scales_points_into_the_plot_area():
    svg = svg_curve("loss", [(1, 4.0), (2, 3.0), (3, 2.0)], width=340, height=200)
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    xy = [tuple(map(float, p.split(","))) for p in points]
    # left margin 48, right 10, top 24, bottom 28: x from 48 to 330, y from 24 (max) to 172 (min)
    assert xy == [(48.0, 24.0), (189.0, 98.0), (330.0, 172.0)]
    assert ">4<" in svg and ">2<" in svg           # the y range is labelled
    assert "no data" in svg_curve("empty", [(1, float("nan"))])


def test_report_holds_one_curve_per_stage_the_table_and_the_curation_embed():
    page = render_report({"pretrain": [(1, 9.0), (2, 7.5)], "sft": [(1, 2.0), (2, 1.5)]},
                         [EvalRow("held-out perplexity", 812.3, 95.25, "lower is better"),
                          EvalRow("GSM8K exact match", 0.0, None)],
                         curation_report="report.html", timings={"sft": 12.0, "dpo": 3.5})
    assert page.count("<svg") == 2 and page.count("<polyline") == 2
    assert "<iframe src='report.html'" in page and "href='report.html'" in page
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td>", page)
    assert ("held-out perplexity", "812.3", "95.25") in rows
    assert ("GSM8K exact match", "0", "–") in rows
    assert "<b>15.5</b>" in page                      # total time


def test_demo_report_gathers_the_stage_outputs(tmp_path):
    def jsonl(path, records):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    stages, train = tmp_path / "stages", tmp_path / "train"
    jsonl(train / "metrics.jsonl", [{"step": 1, "loss": 9.0}, {"step": 2, "loss": 8.0},
                                    {"step": 2, "eval_loss": 8.5}])
    jsonl(stages / "sft" / "metrics.jsonl", [{"step": 1, "loss": 3.0}])
    (stages / "sft" / "summary.json").write_text(json.dumps(
        {"heldout": 32, "before": {"response_loss": 3.25}, "after": {"response_loss": 2.5}}))
    jsonl(stages / "eval" / "final" / "eval.json",
          [{"perplexity": {"perplexity": 123.5}, "gsm8k": {"exact_match": 0.0, "problems": 8}}])
    curated = tmp_path / "curated"
    curated.mkdir()
    (curated / "report.html").write_text("<html></html>")
    path = write_demo_report(DemoConfig(curated=str(curated), stages=str(stages),
                                        pretrain_out=str(train)))
    page = path.read_text()
    assert path == curated / "index.html"
    assert read_curve(train / "metrics.jsonl") == [(1.0, 9.0), (2.0, 8.0)]
    assert page.count("<svg") == 2                    # pretrain and SFT: the stages that ran
    assert "<td>3.25</td><td>2.5</td>" in page and "<td>123.5</td>" in page
    assert "first → last step</td><td>9</td><td>8</td>" in page
    assert "first → last eval</td><td>8.5</td><td>8.5</td>" in page
    assert "8 held-out problems" in page
