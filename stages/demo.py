"""``crucible demo``: the whole pipeline on the bundled sample, about 15 minutes on 2 CPU cores.

    curation models → curate → tokenizer → token shards → pretrain → SFT → reward → DPO → eval
    → one HTML report (the curation report embedded, every stage's loss curve, the eval table)

Each step calls the existing command as a function and prints its progress. A step whose
output already exists is skipped (``make demo`` runs the curation, tokenizer, token and
pretraining steps itself just before), unless ``--fresh``. GSM8K's last ``gsm8k_holdout``
problems are never trained on: SFT reads the rows before them, the exact-match eval a few of
them.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DemoConfig:
    """Where the demo reads and writes, and how big its stages are."""

    curated: str = "out/demo"
    """Curated shards and the curation report; the demo's index.html goes here too."""
    models: str = "out/demo-models"
    """The curation's reference language and quality models (data/sample/demo.yaml reads
    them from out/demo-models)."""
    tokens: str = "out/demo-tokens"
    """Tokenizer, token shards and tokenized examples."""
    pretrain_config: str = str(ROOT / "configs" / "demo_pretrain.yaml")
    """`crucible train` config of the pretraining run (its out_dir holds the checkpoints)."""
    pretrain_out: str = "out/demo-train"
    """The pretraining run's out_dir (``hf/`` is its export)."""
    stages: str = "out/demo-stages"
    """SFT, reward, DPO and eval outputs."""
    stage_configs: str = str(ROOT / "configs" / "stages")
    """Folder of demo_sft.yaml, demo_reward.yaml, demo_dpo.yaml."""
    gsm8k_holdout: int = 64
    """GSM8K problems at the end of the file kept out of SFT."""
    gsm8k_eval: int = 8
    """Held-out problems the exact-match eval generates answers for."""
    max_length: int = 256
    """Longest SFT/preference example in tokens (the demo model's context)."""
    fresh: bool = False
    """Delete every output directory above first and redo every step."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step (filled while running)."""


class Demo:
    """Runs the steps in order, timing each."""

    def __init__(self, config: DemoConfig, say: Callable[[str], None] | None = None) -> None:
        self.c = config
        self.say = say or (lambda msg: print(f"[demo] {msg}", file=sys.stderr, flush=True))
        self.steps: list[tuple[str, Path, Callable[[], None]]] = []

    def step(self, name: str, output: Path, fn: Callable[[], None]) -> None:
        """Runs ``fn`` unless ``output`` exists (and not fresh); records its time."""
        if output.exists() and not self.c.fresh:
            self.say(f"{name}: {output} exists, skipped (--fresh redoes it)")
            return
        self.say(f"{name} ...")
        start = time.perf_counter()
        fn()
        self.c.timings[name] = time.perf_counter() - start
        self.say(f"{name}: done in {self.c.timings[name]:.1f}s")


def _crucible(*argv: str) -> None:
    from crucible.cli import main

    code = main([str(a) for a in argv])
    if code:
        raise RuntimeError(f"`crucible {' '.join(map(str, argv))}` exited with status {code}")


def run_demo(config: DemoConfig, say: Callable[[str], None] | None = None) -> Path:
    """Runs the pipeline; returns the path of the report."""
    import shutil

    from stages import commands

    c = config
    demo = Demo(c, say)
    models, tokens, stages = Path(c.models), Path(c.tokens), Path(c.stages)
    curated, train_out = Path(c.curated), Path(c.pretrain_out)
    cfg = Path(c.stage_configs)
    if c.fresh:  # as `make demo` does: every output of the demo goes
        for d in (models, curated, tokens, train_out, stages):
            shutil.rmtree(d, ignore_errors=True)

    def curation_models() -> None:
        subprocess.run([sys.executable, str(ROOT / "data" / "extract_reference.py"),
                        str(models)], check=True)
        _crucible("lm", "train", "--input", models / "reference.parquet", "--output",
                  models / "lm-en", "--order", "4", "--reference", models / "web.parquet")
        _crucible("quality", "train", "--positive", models / "reference.parquet", "--negative",
                  models / "web.parquet", "--output", models / "quality", "--epochs", "25",
                  "--lr", "0.5", "--dim", "64", "--bucket", "50000")

    demo.step("curation models", models / "quality", curation_models)
    demo.step("curate", curated / "report.html", lambda: _crucible(
        "curate", "--config", ROOT / "data/sample/demo.yaml", "--input",
        ROOT / "data/sample/raw", "--output", curated, "--no-progress"))
    demo.step("tokenizer", tokens / "tokenizer", lambda: _crucible(
        "tokenizer", "train", "--input", curated, "--output", tokens / "tokenizer",
        "--vocab-size", "8192"))
    tok = tokens / "tokenizer"
    demo.step("token shards", tokens / "val", lambda: (
        _crucible("tokenize", "--input", f"web={curated}/shard-000[012]-*.parquet",
                  "--tokenizer", tok, "--output", tokens / "pretrain"),
        _crucible("tokenize", "--input", f"val={curated}/shard-0003-*.parquet",
                  "--tokenizer", tok, "--output", tokens / "val")))

    gsm8k = ROOT / "data/sample/chat/gsm8k.jsonl"
    sft_rows = stages / "data" / "gsm8k-train.jsonl"

    def examples() -> None:
        lines = [ln for ln in gsm8k.read_text().splitlines() if ln.strip()]
        sft_rows.parent.mkdir(parents=True, exist_ok=True)
        sft_rows.write_text("\n".join(lines[:-c.gsm8k_holdout]) + "\n")
        _crucible("tokenize", "--kind", "sft", "--input", sft_rows, "--tokenizer", tok,
                  "--output", stages / "sft-examples", "--max-length", c.max_length)
        _crucible("tokenize", "--kind", "preference", "--input",
                  ROOT / "data/sample/chat/hh-rlhf-harmless-base-test.jsonl.gz",
                  "--tokenizer", tok, "--output", stages / "preference-examples",
                  "--max-length", c.max_length)

    demo.step("sft/preference examples", stages / "preference-examples" / "manifest.json",
              examples)
    demo.step("pretrain", train_out / "hf" / "config.json", lambda: _crucible(
        "train", c.pretrain_config, f"out_dir={train_out}", f"data.tokens={tokens}/pretrain",
        f"data.eval_tokens={tokens}/val", "--export", train_out / "hf"))
    base = train_out / "hf"
    demo.step("sft", stages / "sft" / "hf", lambda: commands.run_sft(
        base, stages / "sft-examples", stages / "sft", cfg / "demo_sft.yaml"))
    demo.step("reward", stages / "reward" / "hf", lambda: commands.run_reward(
        stages / "sft" / "hf", stages / "preference-examples", stages / "reward",
        cfg / "demo_reward.yaml"))
    demo.step("dpo", stages / "dpo" / "hf", lambda: commands.run_dpo(
        stages / "sft" / "hf", stages / "preference-examples", stages / "dpo",
        cfg / "demo_dpo.yaml"))

    def evaluate() -> None:
        for name, model in (("pretrained", base), ("final", stages / "dpo" / "hf")):
            commands.run_eval(model, stages / "eval" / name, tokens=tokens / "val",
                              seq_len=128, max_batches=20, gsm8k=gsm8k,
                              gsm8k_count=c.gsm8k_eval, tokenizer=tok, max_new_tokens=96,
                              progress=lambda msg, n=name: demo.say(f"eval {n}: {msg}"))

    demo.step("eval", stages / "eval" / "final" / "eval.json", evaluate)
    return write_demo_report(c)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_demo_report(c: DemoConfig) -> Path:
    """Gathers the curves and numbers the steps wrote into ``<curated>/index.html``."""
    from stages.demo_report import EvalRow, read_curve, render_report, write_report

    stages, train_out = Path(c.stages), Path(c.pretrain_out)
    curves = {}
    for name, path in (("pretrain (train loss)", train_out / "metrics.jsonl"),
                       ("SFT (response loss)", stages / "sft" / "metrics.jsonl"),
                       ("reward model (Bradley–Terry loss)", stages / "reward" / "metrics.jsonl"),
                       ("DPO (sigmoid loss)", stages / "dpo" / "metrics.jsonl")):
        if path.exists():
            curves[name] = read_curve(path)
    pre, final = _json(stages / "eval/pretrained/eval.json"), _json(stages / "eval/final/eval.json")
    sft, reward, dpo = (_json(stages / s / "summary.json") for s in ("sft", "reward", "dpo"))

    def get(d: dict, *keys):
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    train_loss = curves.get("pretrain (train loss)", [])
    evals = read_curve(train_out / "metrics.jsonl", "eval_loss") if train_loss else []
    rows = [
        EvalRow("pretraining train loss: first → last step",
                train_loss[0][1] if train_loss else None,
                train_loss[-1][1] if train_loss else None,
                f"nats/token; ln(vocab) = {math.log(8192):.2f} is a uniform guess"),
        EvalRow("pretraining held-out loss: first → last eval", evals[0][1] if evals else None,
                evals[-1][1] if evals else None,
                f"at steps {evals[0][0]:g} and {evals[-1][0]:g}" if evals else ""),
        EvalRow("held-out perplexity (val shards): pretrained → after SFT + DPO",
                get(pre, "perplexity", "perplexity"), get(final, "perplexity", "perplexity"),
                "lower is better; the curated shard 3 is never trained on"),
        EvalRow("SFT held-out response loss (GSM8K)", get(sft, "before", "response_loss"),
                get(sft, "after", "response_loss"),
                f"nats/token on {sft.get('heldout', 0)} held-out examples; lower is better"),
        EvalRow("reward model held-out accuracy (HH-RLHF)", get(reward, "before", "accuracy"),
                get(reward, "after", "accuracy"),
                f"{reward.get('heldout', 0)} pairs; 0.5 is chance"),
        EvalRow("DPO log-prob preference accuracy (HH-RLHF)",
                get(dpo, "before", "logp_accuracy"), get(dpo, "after", "logp_accuracy"),
                "how often the policy's mean token log-prob prefers the chosen reply"),
        EvalRow("DPO implicit-reward accuracy (HH-RLHF)", None, get(dpo, "after", "accuracy"),
                "0 before by definition (policy = reference)"),
        EvalRow("GSM8K exact match: pretrained → after SFT + DPO",
                get(pre, "gsm8k", "exact_match"), get(final, "gsm8k", "exact_match"),
                f"{get(final, 'gsm8k', 'problems') or 0} held-out problems, greedy; ~0 is "
                "expected for a 2.6M-parameter model"),
    ]
    curation = Path(c.curated) / "report.html"
    page = render_report(curves, rows, "report.html" if curation.exists() else None,
                         c.timings or None, "crucible demo: raw text to an aligned model")
    return write_report(Path(c.curated) / "index.html", page)


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``crucible demo``."""
    demo = subparsers.add_parser(
        "demo", help="the whole pipeline on the bundled sample, ending in one HTML report",
        description="Curate the bundled sample, train a tokenizer, write token shards, "
                    "pretrain a 2.6M-parameter model, then SFT, reward model, DPO and eval, "
                    "and write one HTML report (curation waterfall, loss curves, eval table) "
                    "to <curated>/index.html. Steps whose output exists are skipped. About 15 "
                    "minutes on 2 CPU cores.")
    demo.add_argument("--curated", default="out/demo", metavar="DIR",
                      help="curation output; the report goes here (default out/demo)")
    demo.add_argument("--tokens", default="out/demo-tokens", metavar="DIR",
                      help="tokenizer and token shards (default out/demo-tokens)")
    demo.add_argument("--pretrain-out", default="out/demo-train", metavar="DIR",
                      help="pretraining run directory (default out/demo-train)")
    demo.add_argument("--stages", default="out/demo-stages", metavar="DIR",
                      help="SFT/reward/DPO/eval outputs (default out/demo-stages)")
    demo.add_argument("--fresh", action="store_true",
                      help="delete the demo's output directories first and redo every step")
    demo.add_argument("--report-only", action="store_true",
                      help="only rebuild the report from the outputs already written")
    demo.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    config = DemoConfig(curated=args.curated, tokens=args.tokens,
                        pretrain_out=args.pretrain_out, stages=args.stages, fresh=args.fresh)
    start = time.perf_counter()
    try:
        path = write_demo_report(config) if args.report_only else run_demo(config)
    except (RuntimeError, ValueError, FileNotFoundError, subprocess.CalledProcessError) as exc:
        print(f"crucible demo: {exc}", file=sys.stderr)
        return 1
    print(f"crucible demo: report {path} ({time.perf_counter() - start:.0f}s)")
    return 0
