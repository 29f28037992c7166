"""decontaminate: documents sharing a 13-gram with an eval set are removed or flagged and reported
with the item's id; reformatting does not hide a copy, 12 shared words are not a match, short
items match whole, and the vectorised matcher agrees with a plain-Python oracle."""

from __future__ import annotations

import json
import pickle
import random
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import HERE, write_shard

from curation.config import load_config
from curation.dedup import reference
from curation.filters.decontaminate import (Decontaminate, DecontaminateConfig,
                                            contamination_report)
from curation.job import run_job
from curation.registry import build_step

# The first 50 GSM8K test questions (MIT, (c) 2021 OpenAI, github.com/openai/grade-school-math).
GSM8K = HERE / "data" / "gsm8k_excerpt.jsonl"
QUESTIONS = [json.loads(line)["question"] for line in GSM8K.read_text().splitlines()]
BEFORE = "Here is a puzzle my daughter brought home from school yesterday evening:"
AFTER = "We solved it together over dinner and then went for a walk in the park."


def step(**options) -> Decontaminate:
    built = build_step({"step": "decontaminate", "eval_sets": [f"gsm8k={GSM8K}"], **options},
                       "pipeline[0]")
    assert isinstance(built, Decontaminate)
    return built


def curate(step: Decontaminate, texts: list) -> tuple[dict, dict]:
    """Runs one batch through the step: {id: kept row}, {id: rejected row}."""
    batch = pa.record_batch({"id": pa.array([f"d{i}" for i in range(len(texts))]),
                             "text": pa.array(texts, pa.string())})
    kept = [row for out in step(iter([batch])) for row in out.to_pylist()]
    rejected = step.sink.table().to_pylist() if step.sink.table() is not None else []
    return {r["id"]: r for r in kept}, {r["id"]: r for r in rejected}


def fold(text: str) -> str:
    """Unicode punctuation, symbols and separators to spaces, as fold_unicode_punctuation."""
    return "".join(" " if unicodedata.category(c)[0] in "PSZ" else c for c in text)


def n_tokens(text: str) -> int:
    return len(reference.tokens(fold(text)))


def test_verbatim_question_in_prose_is_removed_with_its_item_id():
    question = QUESTIONS[7]
    kept, rejected = curate(step(), [f"{BEFORE} {question} {AFTER}", f"{BEFORE} {AFTER}"])
    assert list(rejected) == ["d0"] and list(kept) == ["d1"]
    row = rejected["d0"]
    assert row["reason"] == "decontaminate:eval_overlap"
    assert row["decontam_items"] == ["gsm8k:7"]
    assert row["decontam_hits"] == n_tokens(question) - 12  # every 13-word window of the question
    assert (kept["d1"]["decontam_hits"], kept["d1"]["decontam_items"]) == (0, [])


def test_case_punctuation_and_whitespace_changes_are_still_caught():
    question = QUESTIONS[0]  # "Janet’s ducks ...", with a curly apostrophe
    reformatted = (question.upper().replace("’", "'").replace(". ", "!\n\n  ")
                   .replace(" ", "   ").replace("$", "($) "))
    kept, rejected = curate(step(), [f"**Problem:** {reformatted} {AFTER}"])
    assert list(rejected) == ["d0"] and not kept
    assert rejected["d0"]["decontam_hits"] == n_tokens(question) - 12
    # Without folding, "Janet’s" is one token and "Janet's" two: the question has one window
    # fewer, and its first one ("janet’s ducks ...") is not in the document.
    _, unfolded = curate(step(fold_unicode_punctuation=False), [f"{reformatted} {AFTER}"])
    assert unfolded["d0"]["decontam_hits"] == n_tokens(question) - 12 - 2


def test_twelve_shared_words_are_not_a_thirteen_gram_match():
    words = [token.decode() for token in reference.tokens(QUESTIONS[7])]
    twelve, thirteen = " ".join(words[:12]), " ".join(words[:13])
    kept, rejected = curate(step(), [f"{BEFORE} {twelve} {AFTER}", f"{BEFORE} {thirteen} {AFTER}"])
    assert list(kept) == ["d0"] and list(rejected) == ["d1"]
    assert rejected["d1"]["decontam_hits"] == 1
    _, rejected = curate(step(ngram=12), [f"{BEFORE} {twelve} {AFTER}"])
    assert rejected["d0"]["decontam_items"] == ["gsm8k:7"]


def test_flag_mode_keeps_rows_and_adds_the_signal_columns():
    texts = [f"{QUESTIONS[2]} {QUESTIONS[5]}", AFTER]
    kept, rejected = curate(step(mode="flag"), texts)
    assert not rejected and list(kept) == ["d0", "d1"]
    assert kept["d0"]["decontam_items"] == ["gsm8k:2", "gsm8k:5"]
    assert kept["d0"]["decontam_hits"] == n_tokens(QUESTIONS[2]) + n_tokens(QUESTIONS[5]) - 24
    assert (kept["d1"]["decontam_hits"], kept["d1"]["decontam_items"]) == (0, [])
    flagger = step(mode="flag")
    flagger.setup()
    result = flagger.decide(pa.record_batch({"id": ["a"], "text": [texts[0]]}))
    assert result.columns["decontam_hits"].type == pa.int32()
    assert result.columns["decontam_items"].type == pa.list_(pa.string())


def test_short_items_match_whole_and_very_short_ones_are_ignored(tmp_path):
    short = tmp_path / "short.txt"
    # Row 0: 10 words (matched whole); row 1: blank (no item); row 2: 5 words (too short).
    short.write_text("The quick brown fox jumps over the lazy sleeping dog\n\n"
                     "What is two plus two\n")
    s = build_step({"step": "decontaminate", "eval_sets": [str(short)]}, "pipeline[0]")
    kept, rejected = curate(s, [
        f"{BEFORE} the quick brown fox, jumps over the lazy sleeping dog! {AFTER}",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY SLEEPING DOG",
        f"{BEFORE} the quick brown fox jumps over the lazy sleeping cat. {AFTER}",
        f"{BEFORE} what is two plus two? {AFTER}"])
    assert list(rejected) == ["d0", "d1"] and list(kept) == ["d2", "d3"]
    assert [r["decontam_items"] for r in rejected.values()] == [["short:0"], ["short:0"]]
    assert [r["decontam_hits"] for r in rejected.values()] == [1, 1]
    only_short = tmp_path / "tiny.txt"
    only_short.write_text("What is two plus two\n")
    s = build_step({"step": "decontaminate", "eval_sets": [str(only_short)]}, "pipeline[0]")
    with pytest.raises(ValueError, match=r"tiny\.txt.*no item has 8 or more words"):
        s.setup()


def test_several_eval_files_of_every_format(tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text(f"Some other benchmark item that is long enough to count here.\n"
                     f"{QUESTIONS[3]}\n")
    table = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"label": [1, 2, 3], "prompt": [
        None, "Translate the following sentence into French and explain every choice you made.",
        "Write a haiku about the sea at night, using only words of one syllable each."]}), table)
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"text": "Name three rivers that flow through more than two "
                                          "countries in central Europe today."}]))
    s = build_step({"step": "decontaminate", "eval_sets": [
        f"gsm8k={GSM8K}", str(extra), str(table), str(array)]}, "pipeline[0]")
    kept, rejected = curate(s, [
        f"{BEFORE} {QUESTIONS[3]} {AFTER}",
        "Task: write a haiku about the sea at night, using only words of one syllable each.",
        "Quiz: name three rivers that flow through more than two countries in central Europe "
        "today. Also translate the following sentence into French and explain every choice "
        "you made.",
        AFTER])
    assert list(kept) == ["d3"]
    assert {k: r["decontam_items"] for k, r in rejected.items()} == {
        "d0": ["gsm8k:3", "extra:1"],  # the same question in two sets: both are reported
        "d1": ["prompts:2"],
        "d2": ["prompts:1", "array:0"]}


def test_empty_and_null_text_are_kept_without_hits():
    kept, rejected = curate(step(), ["", None, "   ", "!!!"])
    assert not rejected
    assert [(r["decontam_hits"], r["decontam_items"]) for r in kept.values()] == [(0, [])] * 4


def test_errors_name_the_file_and_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"pipeline\[0\] \(decontaminate\): eval set "
                                         r"'\S*nope\.jsonl' does not exist"):
        build_step({"step": "decontaminate", "eval_sets": [str(tmp_path / "nope.jsonl")]},
                   "pipeline[0]")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'"):
        DecontaminateConfig(eval_sets=[str(tmp_path / "x.csv")])
    with pytest.raises(ValueError, match="mode must be one of remove, flag"):
        DecontaminateConfig(eval_sets=[str(GSM8K)], mode="drop")
    with pytest.raises(ValueError, match="two eval sets are named 'gsm8k_excerpt'"):
        DecontaminateConfig(eval_sets=[str(GSM8K), str(GSM8K)])
    s = step(fields=["prompt", "input"])
    with pytest.raises(ValueError, match=r"gsm8k_excerpt\.jsonl'?: none of the fields prompt, "
                                         r"input is present \(found: answer, question\)"):
        s.setup()
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), table)
    with pytest.raises(ValueError, match=r"t\.parquet'?: none of the fields .*found: body, n"):
        build_step({"step": "decontaminate", "eval_sets": [str(table)]}, "p").setup()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "fine"}\n{"question": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl' line 2: invalid JSON"):
        build_step({"step": "decontaminate", "eval_sets": [str(broken)]}, "p").setup()


def test_step_pickles_before_and_after_setup():
    fresh = pickle.loads(pickle.dumps(step()))
    assert fresh.index is None
    text = [f"{BEFORE} {QUESTIONS[9]}"]
    assert curate(fresh, text)[1]["d0"]["decontam_items"] == ["gsm8k:9"]
    ready = step()
    ready.setup()
    clone = pickle.loads(pickle.dumps(ready))
    assert curate(clone, text)[1]["d0"]["decontam_items"] == ["gsm8k:9"]


def test_matches_a_plain_python_oracle():
    """Documents spliced from question fragments: hits and items as a set-based definition
    computes them from the reference shingles."""
    rng = random.Random(0)
    item_keys = [set(reference.shingle_hashes(fold(q), 13).tolist()) for q in QUESTIONS]
    docs = []
    for _ in range(60):
        parts = []
        for _ in range(rng.randint(1, 4)):
            words = rng.choice(QUESTIONS).split()
            start = rng.randrange(len(words))
            parts.append(" ".join(words[start:start + rng.randint(3, 30)]))
            parts.append(rng.choice([BEFORE, AFTER, ""]))
        docs.append(" ".join(parts))
    kept, rejected = curate(step(mode="flag"), docs)
    assert not rejected
    for i, doc in enumerate(docs):
        windows = reference.shingle_hashes(fold(doc), 13).tolist()
        every_key = set().union(*item_keys)
        hits = sum(h in every_key for h in windows)
        items = [f"gsm8k:{j}" for j, keys in enumerate(item_keys) if keys & set(windows)]
        assert (kept[f"d{i}"]["decontam_hits"], kept[f"d{i}"]["decontam_items"]) == (hits, items)
    assert sum(r["decontam_hits"] > 0 for r in kept.values()) >= 10


def test_job_removes_contaminated_documents_and_reports_them(tmp_path):
    raw = tmp_path / "raw"
    write_shard(raw / "a.parquet", [f"{BEFORE} {AFTER}", f"{BEFORE}\n\n{QUESTIONS[1]}", ""],
                ids=["a0", "a1", "a2"])
    write_shard(raw / "b.parquet", [QUESTIONS[2].lower(), f"{QUESTIONS[1]} {AFTER}", AFTER],
                ids=["b0", "b1", "b2"])
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(raw)], output=str(out), workers=1)
    config.pipeline = [{"step": "normalize"},
                       {"step": "decontaminate", "eval_sets": [f"gsm8k={GSM8K}"]}]
    summary = run_job(config, show_progress=False)
    assert summary.ok, summary.quarantined
    assert (summary.rows_in, summary.rows_kept, summary.rows_rejected) == (6, 2, 4)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["reasons"] == {"decontaminate:eval_overlap": 3, "input:empty_text": 1}
    assert contamination_report(out) == {"gsm8k": {1: ["a1", "b1"], 2: ["b0"]}}
