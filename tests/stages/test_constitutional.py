"""Constitutional data: the critique and revision requests carry the principle and the original
reply, the pairs are revised ≻ original and `crucible tokenize --kind preference` reads them."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from stages.constitutional import (Principle, constitutional_pairs, load_principles,
                                   model_generator, read_prompts, write_pairs)
from tests.stages.conftest import CHAT, ROOT

PRINCIPLES = [Principle("kind", "CRITIQUE-KIND: is it kind?", "REVISE-KIND: make it kind."),
              Principle("true", "CRITIQUE-TRUE: is it true?", "REVISE-TRUE: make it true.")]


class FakeGenerator:
    """Deterministic replies that say which request they answer; records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.calls.append(list(prompts))
        out = []
        for p in prompts:
            if p.startswith("Here is a question, a reply to it and a critique"):
                out.append("unchanged answer" if "q-same" in p else f"revised {len(p)}")
            elif p.startswith("Here is a question and a reply"):
                out.append("critique text")
            else:
                out.append("" if p == "q-empty" else "unchanged answer" if p == "q-same"
                           else f"answer to {p}")
        return out


def test_requests_hold_principle_and_original_and_pairs_are_revised_over_original(tmp_path):
    fake = FakeGenerator()
    result = constitutional_pairs(["q0", "q1", "q2", "q-empty", "q-same"], fake, PRINCIPLES)
    assert len(fake.calls) == 3 and all(len(c) == 5 for c in fake.calls)
    assert fake.calls[0] == ["q0", "q1", "q2", "q-empty", "q-same"]
    critiques, revisions = fake.calls[1], fake.calls[2]
    assert "CRITIQUE-KIND" in critiques[0] and "CRITIQUE-TRUE" in critiques[1]
    assert "CRITIQUE-KIND" in critiques[2]           # principles taken in turn
    assert "Question: q1" in critiques[1] and "Reply: answer to q1" in critiques[1]
    assert "REVISE-TRUE" in revisions[1] and "Reply: answer to q1" in revisions[1]
    assert "Critique: critique text" in revisions[1] and "CRITIQUE" not in revisions[1]
    assert [r["prompt"] for r in result.pairs] == ["q0", "q1", "q2"]
    pair = result.pairs[1]
    assert pair["rejected"] == "answer to q1" and pair["chosen"] == f"revised {len(revisions[1])}"
    assert pair["principle"] == "true" and pair["critique"] == "critique text"
    assert [(r["prompt"], r["reason"]) for r in result.rejected] == [
        ("q-empty", "empty_answer"), ("q-same", "unchanged_revision")]

    path = write_pairs(result, tmp_path / "cai")
    table = pq.read_table(path)
    assert table.column_names == ["prompt", "chosen", "rejected", "principle", "critique"]
    assert table.num_rows == 3
    assert pq.read_table(tmp_path / "cai" / "rejected" / "pairs.parquet").column(
        "reason").to_pylist() == ["empty_answer", "unchanged_revision"]
    manifest = json.loads((tmp_path / "cai" / "manifest.json").read_text())
    assert (manifest["pairs"], manifest["rejected"], manifest["prompts"]) == (3, 2, 5)


def test_pairs_tokenize_as_preference_examples(tmp_path, chat_info):
    from curation.tokens.examples import write_examples
    from stages.examples import read_preferences

    path = write_pairs(constitutional_pairs(["q0", "q1"], FakeGenerator(), PRINCIPLES),
                       tmp_path / "cai")
    summary = write_examples("preference", [path], chat_info, tmp_path / "tok",
                             show_progress=False)
    assert summary.files[0].format == "prompt_chosen_rejected" and summary.written == 2
    pairs = read_preferences(tmp_path / "tok")
    assert chat_info.tokenizer.decode(pairs.rejected_ids[0].tolist(),
                                      skip_special_tokens=True) == "answer to q0"


def test_generator_length_mismatch_and_bad_principles_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="one string per prompt"):
        constitutional_pairs(["q"], lambda ps: [], PRINCIPLES)
    bad = tmp_path / "p.yaml"
    bad.write_text("principles:\n  - name: x\n    critique: c\n")
    with pytest.raises(ValueError, match="principle 0 has no revision"):
        load_principles(bad)
    text = tmp_path / "p.txt"
    text.write_text("# ours\nBe kind.\n\nBe brief.\n")
    assert [p.revision for p in load_principles(text)] == [
        "Rewrite the reply so it follows this principle: Be kind.",
        "Rewrite the reply so it follows this principle: Be brief."]


def test_shipped_principles_and_prompt_readers(tmp_path):
    shipped = load_principles(ROOT / "configs" / "stages" / "principles.yaml")
    assert len(shipped) >= 3 and all(p.critique and p.revision for p in shipped)
    hh = read_prompts(CHAT / "hh-rlhf-harmless-base-test.jsonl.gz", limit=3)
    assert len(hh) == 3 and hh[0] == "what are some pranks with a pen i can do?"
    assert read_prompts(CHAT / "gsm8k.jsonl", limit=1)[0].startswith("Janet’s ducks")


def test_smoke_with_a_tiny_real_model(tmp_path, chat_info):
    from tests.stages.stage_models import tiny_model

    model = tiny_model(vocab_size=chat_info.vocab_size, attention="sdpa")
    generate_text = model_generator(model, chat_info, max_new_tokens=6, batch_size=2)
    replies = generate_text(["Hi there", "What is 2 + 2?", "Name a colour"])
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)
    result = constitutional_pairs(["Hi there", "What is 2 + 2?"], generate_text, shipped :=
                                  load_principles(ROOT / "configs/stages/principles.yaml"))
    assert len(result.pairs) + len(result.rejected) == 2
    assert {r["principle"] for r in result.pairs + result.rejected} <= {p.name for p in shipped}
    write_pairs(result, tmp_path / "cai")
    assert pq.read_table(tmp_path / "cai" / "pairs.parquet").num_rows == len(result.pairs)


def test_long_prompts_lose_their_middle_or_fail_clearly(chat_info, monkeypatch):
    import engine.model.generate as gen_module
    from curation.tokens.chat import render_prompt
    from tests.stages.stage_models import tiny_model

    model = tiny_model(vocab_size=chat_info.vocab_size, attention="sdpa")  # max_seq_len 512
    long = "word " * 600 + "THE INSTRUCTION"
    seen = []
    real = gen_module.generate
    monkeypatch.setattr(gen_module, "generate",
                        lambda m, prompts, **kw: seen.extend(prompts) or real(m, prompts, **kw))
    assert len(model_generator(model, chat_info, max_new_tokens=12)([long, "short"])) == 2
    full = render_prompt(chat_info, [{"role": "user", "content": long}])
    assert len(seen[0]) == 500 and seen[0][:3] == full[:3] and seen[0][-40:] == full[-40:]
    assert seen[1] == render_prompt(chat_info, [{"role": "user", "content": "short"}])
    with pytest.raises(ValueError, match="prompt 0 is .* tokens; with max_new_tokens=12"):
        model_generator(model, chat_info, max_new_tokens=12, truncate=False)([long])
