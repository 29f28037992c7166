"""write_examples: SFT and preference Parquet shards, rejected rows, the manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.tokens.chat import render_chat, render_prompt
from curation.tokens.examples import write_examples
from curation.tokens.tokenizer import BOS, END_OF_TURN

DATA = Path(__file__).parent / "data"
OASST = DATA / "oasst_sample.jsonl"
HH = DATA / "hh_rlhf_sample.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def decode(info, ids):
    return info.tokenizer.decode(ids, skip_special_tokens=False)


def test_sft_from_real_multi_turn_conversations(chat_tokenizer, tmp_path):
    info = chat_tokenizer
    summary = write_examples("sft", [OASST], info, tmp_path / "out", show_progress=False)
    table = pq.read_table(tmp_path / "out" / "oasst_sample.parquet")
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    assert table.schema.field("loss_mask").type == pa.list_(pa.uint8())
    conversations = [json.loads(line) for line in OASST.open()]
    assert summary.written == table.num_rows == len(conversations) == 4
    assert table.column("id").to_pylist() == [c["id"] for c in conversations]
    assert table.column("source_row").to_pylist() == [0, 1, 2, 3]
    bos = info.token_id(BOS)
    for row, conv in zip(table.to_pylist(), conversations):
        ids, mask = row["input_ids"], row["loss_mask"]
        assert (ids, mask) == render_chat(info, conv["messages"])
        assert ids[0] == bos and ids.count(bos) == 1
        assert row["num_tokens"] == len(ids) == len(mask)
        assert row["num_trainable"] == sum(mask)
        trained = decode(info, [i for i, m in zip(ids, mask) if m])
        replies = [m["content"].strip() for m in conv["messages"] if m["role"] == "assistant"]
        assert trained == "".join(r + END_OF_TURN for r in replies)
    assert summary.tokens == sum(table.column("num_tokens").to_pylist())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["kind"] == "sft" and manifest["tokenizer"]["sha256"] == info.sha256
    assert manifest["files"][0]["format"] == "messages"
    assert manifest["files"][0]["trainable_tokens"] == sum(table.column("num_trainable")
                                                          .to_pylist())


def test_too_long_rows_are_rejected_with_reason_and_counted(chat_tokenizer, tmp_path):
    info = chat_tokenizer
    lengths = [len(render_chat(info, json.loads(line)["messages"])[0]) for line in OASST.open()]
    limit = sorted(lengths)[1]           # two rows fit, two are too long
    out = tmp_path / "out"
    summary = write_examples("sft", [OASST], info, out, max_length=limit, show_progress=False)
    assert (summary.rows_in, summary.written, summary.rejected) == (4, 2, 2)
    rejected = pq.read_table(out / "rejected" / "oasst_sample.parquet").to_pylist()
    too_long = [(i, n) for i, n in enumerate(lengths) if n > limit]
    assert [(r["source_row"], r["num_tokens"]) for r in rejected] == too_long
    assert [r["reason"] for r in rejected] == [f"too_long: {n} tokens > max_length {limit}"
                                               for _, n in too_long]
    assert json.loads(rejected[0]["row"])["id"] == rejected[0]["id"]
    kept = pq.read_table(out / "oasst_sample.parquet")
    assert kept.column("source_row").to_pylist() == [i for i, n in enumerate(lengths)
                                                     if n <= limit]
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files[0]["rows_in"] == 4
    assert files[0]["written"] + files[0]["rejected"] == files[0]["rows_in"]
    assert files[0]["rejected_by_reason"] == {"too_long": 2}
    assert files[0]["rejected_output"] == "rejected/oasst_sample.parquet"


def test_example_without_trainable_token_raises_naming_file_and_row(chat_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "yo", "train": False}]}])
    with pytest.raises(ValueError, match=r"chats.jsonl: row 1: no trainable token: every "
                                         r"message that train_on=assistant would train"):
        write_examples("sft", [path], chat_tokenizer, tmp_path / "out", show_progress=False)
    parquet = tmp_path / "msgs.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "only"}]}]),
                   parquet)
    out = tmp_path / "out2"
    with pytest.raises(ValueError, match=r"msgs.parquet: row 0: no trainable token: the "
                                         r"conversation has no assistant message"):
        write_examples("sft", [parquet], chat_tokenizer, out, show_progress=False)
    assert not list(out.glob("*.tmp")) and not (out / "manifest.json").exists()


def test_preference_ids_decode_back_to_the_original_texts(chat_tokenizer, tmp_path):
    info = chat_tokenizer
    out = tmp_path / "out"
    summary = write_examples("preference", [HH], info, out, show_progress=False)
    table = pq.read_table(out / "hh_rlhf_sample.parquet").to_pylist()
    raw = [json.loads(line) for line in HH.open()]
    assert summary.written == len(table) == len(raw) == 6
    bos = info.token_id(BOS)
    for row, original in zip(table, raw):
        chosen_text = original["chosen"].rsplit("\n\nAssistant: ", 1)[1]
        rejected_text = original["rejected"].rsplit("\n\nAssistant: ", 1)[1]
        assert decode(info, row["chosen_ids"]) == chosen_text.strip() + END_OF_TURN
        assert decode(info, row["rejected_ids"]) == rejected_text.strip() + END_OF_TURN
        prompt = decode(info, row["prompt_ids"])
        assert prompt.startswith("<|bos|><|user|>\n") and prompt.endswith("<|assistant|>\n")
        transcript = (prompt.removeprefix("<|bos|>").removesuffix("<|assistant|>\n")
                      .replace("<|user|>\n", "\n\nHuman: ")
                      .replace("<|assistant|>\n", "\n\nAssistant: ").replace("<|end|>\n", ""))
        assert original["chosen"] == transcript + "\n\nAssistant: " + chosen_text
        assert row["prompt_ids"].count(bos) == 1
        assert (row["prompt_tokens"], row["chosen_tokens"], row["rejected_tokens"]) == (
            len(row["prompt_ids"]), len(row["chosen_ids"]), len(row["rejected_ids"]))
        # The SFT rendering of prompt + chosen begins with exactly these prompt tokens.
        messages = [*pair_prompt(original), {"role": "assistant", "content": chosen_text}]
        assert render_prompt(info, messages[:-1]) == row["prompt_ids"]
        full, _ = render_chat(info, messages)
        assert full[:len(row["prompt_ids"]) + len(row["chosen_ids"])] == (row["prompt_ids"]
                                                                         + row["chosen_ids"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"][0]["format"] == "hh" and manifest["config"]["train_on"] is None
    assert manifest["totals"]["tokens"] == sum(
        r["prompt_tokens"] + r["chosen_tokens"] + r["rejected_tokens"] for r in table)


def pair_prompt(original):
    from curation.tokens.formats import parse_rows

    return parse_rows("hh", [original], HH, 0)[0].prompt


def test_rows_in_equal_written_plus_rejected_across_files_and_formats(chat_tokenizer, tmp_path):
    info = chat_tokenizer
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"id": 7, "conversations": [{"from": "human", "value": "2+2?"},
                                    {"from": "gpt", "value": "4"}]},
        {"id": 8, "conversations": [{"from": "human", "value": "say <|end|> please"},
                                    {"from": "gpt", "value": "no"}]},
        {"id": 9, "conversations": [{"from": "human", "value": "hi"},
                                    {"from": "gpt", "value": ""}]}])
    alpaca = tmp_path / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"instruction": "Name a color.", "input": "", "output": "Blue"},
        {"instruction": "Translate.", "input": "Good morning", "output": "Bonjour " * 200}]),
        alpaca)
    out = tmp_path / "out"
    summary = write_examples("sft", [sharegpt, alpaca], info, out, max_length=64,
                             show_progress=False)
    assert (summary.rows_in, summary.written, summary.rejected) == (5, 2, 3)
    files = {f.output: f for f in summary.files}
    assert files["sharegpt.parquet"].format == "sharegpt"
    assert files["alpaca.parquet"].format == "alpaca"
    assert files["sharegpt.parquet"].rejected_by_reason == {"special_token_in_text": 1,
                                                            "empty_content": 1}
    reasons = pq.read_table(out / "rejected" / "sharegpt.parquet").to_pylist()
    assert [(r["source_row"], r["id"]) for r in reasons] == [(1, "8"), (2, "9")]
    assert reasons[0]["reason"] == ("special_token_in_text: message 0 (user) contains the "
                                    "special token '<|end|>' as text; remove or escape it in "
                                    "the data")
    assert reasons[1]["reason"] == "empty_content: message 1 (assistant) is empty"
    kept = pq.read_table(out / "sharegpt.parquet")
    assert kept.column("id").to_pylist() == ["7"]
    assert "id" not in pq.read_table(out / "alpaca.parquet").column_names
    assert pq.read_table(out / "rejected" / "alpaca.parquet").column("reason").to_pylist()[0] \
        .startswith("too_long: ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {"rows_in": 5, "written": 2, "rejected": 3,
                                  "tokens": summary.tokens}
    for f in manifest["files"]:
        assert f["rows_in"] == f["written"] + f["rejected"]
    assert not list(out.rglob("*.tmp"))
    # A rerun without rejections removes the stale rejected file.
    write_examples("sft", [sharegpt, alpaca], info, out, input_format="auto",
                   show_progress=False, train_on="last", max_length=None)
    assert not (out / "rejected" / "alpaca.parquet").exists()


def test_argument_errors(chat_tokenizer, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    row = [{"prompt": "Q", "response": "A"}]
    with pytest.raises(ValueError, match="would both write train.parquet"):
        write_examples("sft", [write_jsonl(a / "train.jsonl", row),
                               write_jsonl(b / "train.jsonl", row)],
                       chat_tokenizer, tmp_path / "out", show_progress=False)
    with pytest.raises(ValueError, match="train_on='first' is not one of assistant, last, all"):
        write_examples("sft", [a / "train.jsonl"], chat_tokenizer, tmp_path / "out",
                       train_on="first", show_progress=False)
    with pytest.raises(ValueError, match="kind='dpo' is not one of sft, preference"):
        write_examples("dpo", [a / "train.jsonl"], chat_tokenizer, tmp_path / "out")
    with pytest.raises(ValueError, match=r"train.jsonl: cannot tell the preference format"):
        write_examples("preference", [a / "train.jsonl"], chat_tokenizer, tmp_path / "out",
                       show_progress=False)


def test_examples_import_without_torch():
    code = ("import sys, curation.tokens.examples; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_preference_rejects_and_too_long_count_the_longer_reply(chat_tokenizer, tmp_path):
    info = chat_tokenizer
    rows = [{"prompt": "Q", "chosen": "good", "rejected": "bad"},
            {"prompt": "Q", "chosen": "see <|endoftext|>", "rejected": "bad"},
            {"prompt": "Q", "chosen": "short", "rejected": "long " * 40}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    prompt = len(render_prompt(info, [{"role": "user", "content": "Q"}]))
    longest = len(info.encode(("long " * 40).strip())) + 1
    summary = write_examples("preference", [path], info, tmp_path / "out",
                             max_length=prompt + longest - 1, show_progress=False)
    assert (summary.rows_in, summary.written, summary.rejected) == (3, 1, 2)
    reasons = pq.read_table(tmp_path / "out" / "rejected" / "pairs.parquet").to_pylist()
    assert [r["source_row"] for r in reasons] == [1, 2]
    assert reasons[0]["reason"].startswith("special_token_in_text: chosen reply message 0 "
                                           "(assistant) contains the special token "
                                           "'<|endoftext|>'")
    assert reasons[1]["reason"] == (f"too_long: {prompt + longest} tokens > max_length "
                                    f"{prompt + longest - 1}")
    assert summary.files[0].format == "prompt_chosen_rejected"
