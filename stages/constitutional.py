"""Constitutional AI data (RLAIF): the model answers, critiques its answer against a principle,
revises it, and the pair ``(prompt, revised ≻ original)`` becomes a preference example.

    principles = load_principles("configs/stages/principles.yaml")
    result = constitutional_pairs(prompts, generate_text, principles)
    write_pairs(result, "out/cai")        # then: crucible tokenize --kind preference --input out/cai

``generate_text(prompts: list[str]) -> list[str]`` is any text generator, one reply per prompt
(:func:`model_generator` wraps our model: the chat template, KV-cache sampling up to
``<|end|>``, decoding). Each prompt gets one principle, in turn (prompt ``i`` → principle
``i mod n``, shifted by ``seed``), and three batched calls: the answer, the critique request
(the prompt, the answer and the principle's critique instruction) and the revision request (the
same plus the critique and the principle's revision instruction).

The output is Parquet with the ``prompt``/``chosen``/``rejected`` text columns of the
``prompt_chosen_rejected`` format, plus ``principle`` and ``critique``. Nothing is dropped
silently: a revision that is empty or equal to the answer, or an empty answer, goes to
``rejected/pairs.parquet`` with its reason; ``manifest.json`` holds the counts.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

GenerateText = Callable[[list[str]], list[str]]

CRITIQUE_TEMPLATE = ("Here is a question and a reply to it.\n\nQuestion: {prompt}\n\n"
                     "Reply: {response}\n\n{instruction}")
REVISION_TEMPLATE = ("Here is a question, a reply to it and a critique of the reply.\n\n"
                     "Question: {prompt}\n\nReply: {response}\n\nCritique: {critique}\n\n"
                     "{instruction} Write only the new reply.")


@dataclass(frozen=True)
class Principle:
    """One rule of the constitution, as the two instructions the model is given."""

    name: str
    """Short name, written beside each pair it made."""
    critique: str
    """Instruction asking for a critique of a reply against the rule."""
    revision: str
    """Instruction asking for the reply rewritten to follow the rule."""


def load_principles(path: str | Path) -> list[Principle]:
    """Principles from YAML (``principles:`` a list of ``{name, critique, revision}``, or that
    list alone) or from plain text (one principle per non-empty line, ``#`` comments skipped;
    each line becomes the critique and revision instructions)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"principles file {path} does not exist; give a YAML list like "
                                "configs/stages/principles.yaml or a text file, one per line")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text()) or []
        items = data.get("principles", []) if isinstance(data, dict) else data
        out = []
        for i, item in enumerate(items):
            missing = [k for k in ("critique", "revision")
                       if not isinstance(item, dict) or not str(item.get(k, "")).strip()]
            if missing:
                raise ValueError(f"{path}: principle {i} has no {' or '.join(missing)} text; "
                                 "give name, critique and revision for each")
            out.append(Principle(str(item.get("name", f"principle-{i}")),
                                 str(item["critique"]).strip(), str(item["revision"]).strip()))
    else:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        out = [Principle(f"principle-{i}",
                         f"Point out where the reply breaks this principle: {ln}",
                         f"Rewrite the reply so it follows this principle: {ln}")
               for i, ln in enumerate(x for x in lines if x and not x.startswith("#"))]
    if not out:
        raise ValueError(f"{path}: no principle found; list at least one")
    return out


def critique_request(prompt: str, response: str, principle: Principle) -> str:
    """The user message asking for a critique of ``response`` against ``principle``."""
    return CRITIQUE_TEMPLATE.format(prompt=prompt, response=response,
                                    instruction=principle.critique)


def revision_request(prompt: str, response: str, critique: str, principle: Principle) -> str:
    """The user message asking for ``response`` rewritten after ``critique``."""
    return REVISION_TEMPLATE.format(prompt=prompt, response=response, critique=critique,
                                    instruction=principle.revision)


@dataclass
class ConstitutionalResult:
    """Pairs made and rows rejected, as column dicts."""

    pairs: list[dict] = field(default_factory=list)
    """``prompt``, ``chosen`` (the revision), ``rejected`` (the answer), ``principle``,
    ``critique``."""
    rejected: list[dict] = field(default_factory=list)
    """The same columns plus ``reason``."""
    seconds: float = 0.0
    """Generation time."""


def _generate(generate_text: GenerateText, requests: list[str], what: str) -> list[str]:
    replies = list(generate_text(requests))
    if len(replies) != len(requests):
        raise ValueError(f"generate_text returned {len(replies)} {what} for {len(requests)} "
                         "requests; it must return one string per prompt, in order")
    return [str(r).strip() for r in replies]


def constitutional_pairs(prompts: Sequence[str], generate_text: GenerateText,
                         principles: Sequence[Principle], seed: int = 0
                         ) -> ConstitutionalResult:
    """Answers, critiques and revisions of ``prompts`` (three batched ``generate_text`` calls);
    prompt ``i`` is judged by ``principles[(i + seed) % len(principles)]``."""
    if not principles:
        raise ValueError("no principles given; load them with load_principles(...)")
    prompts = [str(p).strip() for p in prompts]
    if not prompts or not all(prompts):
        raise ValueError("constitutional_pairs needs non-empty prompts")
    start = time.perf_counter()
    chosen_principles = [principles[(i + seed) % len(principles)] for i in range(len(prompts))]
    answers = _generate(generate_text, prompts, "answers")
    critiques = _generate(generate_text, [critique_request(p, a, c) for p, a, c in
                                          zip(prompts, answers, chosen_principles)], "critiques")
    revisions = _generate(generate_text, [revision_request(p, a, k, c) for p, a, k, c in
                                          zip(prompts, answers, critiques, chosen_principles)],
                          "revisions")
    result = ConstitutionalResult()
    for p, a, k, r, c in zip(prompts, answers, critiques, revisions, chosen_principles):
        row = {"prompt": p, "chosen": r, "rejected": a, "principle": c.name, "critique": k}
        reason = ("empty_answer" if not a else "empty_revision" if not r else
                  "unchanged_revision" if r == a else None)
        if reason is None:
            result.pairs.append(row)
        else:
            result.rejected.append({**row, "reason": reason})
    result.seconds = time.perf_counter() - start
    return result


COLUMNS = ("prompt", "chosen", "rejected", "principle", "critique")


def write_pairs(result: ConstitutionalResult, out_dir: str | Path, config: dict | None = None
                ) -> Path:
    """Writes ``pairs.parquet``, ``rejected/pairs.parquet`` (when any) and ``manifest.json``
    into ``out_dir`` (each through a temp file and a rename); returns the pairs' path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    (out / "rejected").mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
        table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns})
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)

    path = out / "pairs.parquet"
    write(result.pairs, COLUMNS, path)
    if result.rejected:
        write(result.rejected, COLUMNS + ("reason",), out / "rejected" / "pairs.parquet")
    reasons: dict[str, int] = {}
    for row in result.rejected:
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    manifest = {"kind": "constitutional", "prompts": len(result.pairs) + len(result.rejected),
                "pairs": len(result.pairs), "rejected": len(result.rejected),
                "rejected_by_reason": reasons, "seconds": round(result.seconds, 2),
                "config": config or {}}
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out / "manifest.json")
    return path


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """User prompts from a text file (one per non-empty line) or rows of Parquet / JSON lines:
    a ``prompt`` string column, or HH-RLHF transcripts (the first ``Human:`` turn of
    ``chosen``); at most ``limit``."""
    from curation.tokens.formats import HH_TURN
    from curation.tokens.records import SUFFIXES, RecordFile

    path = Path(path)
    if not path.name.endswith(SUFFIXES):
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        return prompts[:limit]
    source = RecordFile(path)
    columns = source.columns()
    prompts = []
    for batch in source.batches(1000):
        for row in batch:
            if "prompt" in columns and isinstance(row.get("prompt"), str):
                text = row["prompt"]
            elif "chosen" in columns and isinstance(row.get("chosen"), str):
                turns = HH_TURN.split(row["chosen"])   # ["", "Human", text, "Assistant", ...]
                text = turns[2] if len(turns) > 2 and turns[1] == "Human" else ""
            else:
                raise ValueError(f"{path}: rows need a 'prompt' string column or HH-RLHF "
                                 f"'chosen' transcripts (found: {', '.join(columns)})")
            if text.strip():
                prompts.append(text.strip())
            if limit is not None and len(prompts) == limit:
                return prompts
    return prompts


def model_generator(model, info, max_new_tokens: int = 64, temperature: float = 0.0,
                    batch_size: int = 8, seed: int = 0, truncate: bool = True) -> GenerateText:
    """``generate_text`` of our model: each prompt as one user turn through the chat template
    (:func:`curation.tokens.chat.render_prompts`), sampled with the KV cache up to
    ``<|end|>`` (greedy when ``temperature`` is 0) and decoded without special tokens.

    A prompt longer than ``max_seq_len - max_new_tokens`` tokens loses its middle when
    ``truncate`` (the chat header and the end, where the critique and revision requests put
    their instruction, are kept; the count is printed), else is an error."""
    import torch

    from curation.tokens.chat import ChatTokens, render_prompts
    from engine.model.generate import generate

    chat = ChatTokens.of(info)
    end, header = chat.end, 2 + len(chat.newline)    # BOS, <|user|>, "\n": kept when cut
    limit = model.config.max_seq_len - max_new_tokens
    if limit <= 2 * header:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves {limit} prompt tokens of the "
                         f"model's max_seq_len {model.config.max_seq_len}; generate fewer")
    generator = torch.Generator().manual_seed(seed)

    def generate_text(prompts: list[str]) -> list[str]:
        ids = render_prompts(info, [[{"role": "user", "content": p}] for p in prompts])
        long = [i for i, p in enumerate(ids) if len(p) > limit]
        if long and not truncate:
            i = long[0]
            raise ValueError(f"prompt {i} is {len(ids[i])} tokens; with max_new_tokens="
                             f"{max_new_tokens} the model's max_seq_len "
                             f"{model.config.max_seq_len} leaves {limit}: give shorter "
                             "prompts or fewer new tokens")
        if long:
            print(f"generate: {len(long)} of {len(ids)} prompts longer than {limit} tokens "
                  "lost their middle", file=sys.stderr)
            for i in long:
                ids[i] = ids[i][:header] + ids[i][len(ids[i]) - limit + header:]
        out: list[str] = []
        was_training = model.training
        model.eval()
        for start in range(0, len(ids), batch_size):
            gen = generate(model, ids[start:start + batch_size], max_new_tokens=max_new_tokens,
                           pad_id=0, eos_id=end, temperature=temperature, generator=generator)
            for row, mask in zip(gen.sequences[:, gen.prompt_length:].tolist(),
                                 gen.attention_mask[:, gen.prompt_length:].tolist()):
                tokens = [t for t, m in zip(row, mask) if m and t != end]
                out.append(info.tokenizer.decode(tokens, skip_special_tokens=True))
        model.train(was_training)
        return out

    return generate_text


def config_dict(principles: Sequence[Principle], **extra) -> dict:
    """What :func:`write_pairs` records as the run's config."""
    return {"principles": [asdict(p) for p in principles], **extra}
