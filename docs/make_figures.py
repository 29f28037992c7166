"""Draws the README's training curves from runs' metrics.jsonl files (inline SVG, no plotting
library; the same charts as `crucible demo`'s report).

    python docs/make_figures.py [--demo out] [--shakespeare out/shakespeare-run] [--ppo DIR]

Run after `make demo` (and optionally `crucible train configs/shakespeare_char.yaml` and a
`crucible ppo` run); writes docs/figures/*.svg.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stages.demo_report import read_curve, svg_curve

HERE = Path(__file__).resolve().parent


def standalone(svg: str) -> str:
    """An inline ``<svg>`` as a file a browser (and GitHub) renders."""
    return svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" '
                                'font-family="sans-serif" font-size="11" ', 1) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="out", help="folder holding demo-train/ and "
                                                      "demo-stages/ (default: out)")
    parser.add_argument("--shakespeare", help="out_dir of the Shakespeare run")
    parser.add_argument("--ppo", help="out_dir of a crucible ppo run")
    args = parser.parse_args()
    demo = Path(args.demo)
    charts = {
        "pretrain_loss": ("pre-training loss (demo, 2.6M params)",
                          demo / "demo-train" / "metrics.jsonl", "loss"),
        "sft_loss": ("SFT loss (GSM8K)", demo / "demo-stages" / "sft" / "metrics.jsonl", "loss"),
        "reward_loss": ("reward model loss (HH-RLHF)",
                        demo / "demo-stages" / "reward" / "metrics.jsonl", "loss"),
        "dpo_loss": ("DPO loss (HH-RLHF)", demo / "demo-stages" / "dpo" / "metrics.jsonl",
                     "loss"),
    }
    if args.shakespeare:
        charts["shakespeare_eval"] = ("tiny Shakespeare validation loss",
                                      Path(args.shakespeare) / "metrics.jsonl", "eval_loss")
    if args.ppo:
        charts["ppo_kl"] = ("PPO: KL to the reference per update",
                            Path(args.ppo) / "metrics.jsonl", "kl")
    out = HERE / "figures"
    out.mkdir(exist_ok=True)
    for name, (title, path, key) in charts.items():
        if not path.exists():
            raise SystemExit(f"make_figures: {path} is missing; run the demo first")
        (out / f"{name}.svg").write_text(standalone(svg_curve(title, read_curve(path, key))))
        print(f"wrote {out / (name + '.svg')}")


if __name__ == "__main__":
    main()
